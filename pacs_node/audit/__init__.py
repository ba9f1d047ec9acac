"""Audit database: SQLAlchemy models, the one writer of audit rows, and queries."""
