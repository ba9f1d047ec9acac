"""Model components of the SAM-prior restoration cascade."""
