"""Logging set-up for entry points (modules only ever call ``logging.getLogger``).

Records carry the audit id of the association being served (``assoc=12``) so a log line
can be matched to its audit row; no patient data is ever logged.
"""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar

#: Audit id of the association served on this thread; set by the receiver's handlers.
current_association: ContextVar[int | None] = ContextVar("current_association", default=None)


class _AssociationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        assoc = current_association.get()
        record.association = f" assoc={assoc}" if assoc is not None else ""
        return True


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_AssociationFilter())
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s [{os.getpid()}]%(association)s %(name)s: %(message)s"
        )
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # pynetdicom logs each association at INFO with peer details; keep it at WARNING.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
