"""pacs-node: receive rapid bone scans over DICOM, enhance them, push them back to PACS."""

__version__ = "0.1.0"
