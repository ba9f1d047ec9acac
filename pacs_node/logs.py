"""Logging set-up for entry points (modules only ever call ``logging.getLogger``)."""

from __future__ import annotations

import logging
import os


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s",
        force=True,
    )
    # pynetdicom logs each association at INFO with peer details; keep it at WARNING.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
