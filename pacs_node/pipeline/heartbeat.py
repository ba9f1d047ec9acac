"""Keep a job's lease alive while a worker holds it, from a background thread.

A short lease finds a dead worker quickly; a heartbeat that renews it every third of its
length keeps a live worker's claim through a slow step (loading the model, a long study).
When a renewal fails the claim was taken over (the worker stalled past its lease): the
work must not be published, and :attr:`Heartbeat.lost` says so.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from pacs_node.audit.job_store import JobStore

__all__ = ["Heartbeat"]

logger = logging.getLogger(__name__)


class Heartbeat:
    """``with Heartbeat(jobs, job_id, owner, lease_s) as beat: ...``; then check ``beat.lost``."""

    def __init__(self, jobs: JobStore, job_id: int, owner: str, lease_s: float) -> None:
        self.jobs, self.job_id, self.owner, self.lease_s = jobs, job_id, owner, lease_s
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    @property
    def lost(self) -> bool:
        """True once a renewal found the lease gone."""
        return self._lost.is_set()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                held = self.jobs.renew_lease(self.job_id, self.owner, self.lease_s)
            except Exception:  # a database hiccup: try again at the next beat
                logger.exception("job %d: lease renewal failed", self.job_id)
                continue
            if not held:
                logger.warning("job %d: lease lost to another holder", self.job_id)
                self._lost.set()
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
