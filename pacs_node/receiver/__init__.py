"""DICOM receiver: Storage and Verification SCP writing to a durable spool."""
