"""The pipeline's part of ``pacs-node serve``: broker, local worker, dispatcher, reconciler.

On one machine (the default) the node starts the embedded broker and two worker processes
(``pacs-node worker --queues enhance`` and ``--queues dispatch``) and restarts one that dies;
in a cluster (``broker_url`` set, ``local_workers = false``) workers run elsewhere. Either
way the node queues each new job as soon as completion creates it and reconciles every
``reconcile_interval_s``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from pacs_node.audit.commitment_store import CommitmentStore
from pacs_node.audit.job_store import JobStore
from pacs_node.audit.models import utcnow
from pacs_node.config import Settings
from pacs_node.pipeline.broker import BrokerWatch, EmbeddedBroker
from pacs_node.pipeline.celery_app import (
    DISPATCH_QUEUE,
    ENHANCE_QUEUE,
    Publisher,
    make_celery,
)
from pacs_node.pipeline.reconciler import queue_new_job, reconcile_once

__all__ = ["PipelineRunner"]

logger = logging.getLogger(__name__)

_WORKER_RESTART_S = 5.0


class PipelineRunner:
    """Owns the embedded broker and the local worker; queues and reconciles jobs."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        *,
        commitments: CommitmentStore,
        config_path: Path | None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.commitments = commitments
        self.config_path = config_path
        self.broker: EmbeddedBroker | None = None
        self.broker_url = settings.pipeline.broker_url
        self.publisher: Publisher | None = None
        #: Local workers by queue, and when each was seen dead.
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self._died_at: dict[str, float] = {}
        self._next_reconcile = 0.0
        self._broker_restarted = False
        self._watch: BrokerWatch | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.pipeline.enabled

    def start(self) -> None:
        if not self.enabled:
            logger.info("enhancement pipeline disabled: jobs stay pending")
            return
        if self.broker_url == "embedded":
            self.broker = EmbeddedBroker(self.settings.storage.data_dir)
            self.broker_url = self.broker.start()
        app = make_celery(
            self.broker_url, visibility_timeout_s=self.settings.pipeline.visibility_timeout_s
        )
        self.publisher = Publisher(app)
        self._watch = BrokerWatch(self.broker_url)
        self._watch.restarted()  # learn its run_id
        if self.settings.pipeline.local_workers:
            for queue in (ENHANCE_QUEUE, DISPATCH_QUEUE):
                self._start_worker(queue)

    def _start_worker(self, queue: str) -> None:
        command = [sys.executable, "-m", "pacs_node.cli", "worker", "--queues", queue]
        if queue == ENHANCE_QUEUE:
            command += ["--concurrency", str(self.settings.pipeline.local_enhance_concurrency)]
        if self.config_path is not None:
            command += ["--config", str(self.config_path)]
        env = os.environ | {
            "PACS_NODE_PIPELINE__BROKER_URL": self.broker_url,
            "PACS_NODE_STORAGE__DATA_DIR": str(self.settings.storage.data_dir),
            "PACS_NODE_AUDIT__DATABASE_URL": self.settings.database_url,
        }
        worker = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        self.workers[queue] = worker
        logger.info("local %s worker started (pid %d)", queue, worker.pid)

    def job_created(self, job_id: int) -> None:
        """Queue a job completion just created (the reconciler covers a failure here)."""
        if self.publisher is None:
            return
        queue_new_job(self.jobs, self.publisher, job_id)

    def tick(self) -> None:
        """Restart dead local workers; reconcile when it is time."""
        if self.publisher is None:
            return
        now = time.monotonic()
        if self.broker is not None and not self.broker.running():
            # Messages in it are gone; the jobs are not: the reconciler re-publishes them.
            logger.error("the embedded broker exited; starting it again")
            self.broker.start()
            self._broker_restarted = True
            self._next_reconcile = now
        for queue, worker in list(self.workers.items()):
            if worker.poll() is None:
                continue
            died = self._died_at.setdefault(queue, now)
            if died == now:
                logger.error("local %s worker exited with %s", queue, worker.returncode)
            elif now - died >= _WORKER_RESTART_S:
                del self._died_at[queue]
                self._start_worker(queue)
        if now >= self._next_reconcile:
            if self._watch is not None and self._watch.restarted():
                self._broker_restarted = True
            self._next_reconcile = now + self.settings.pipeline.reconcile_interval_s
            reconcile_once(
                self.jobs,
                self.publisher,
                queued_grace_s=self.settings.pipeline.queued_grace_s,
                can_send=bool(self.settings.delivery.destinations),
                broker_restarted=self._broker_restarted,
            )
            self._broker_restarted = False
            timeout = timedelta(hours=self.settings.delivery.commitment_timeout_hours)
            expired = self.commitments.expire(utcnow() - timeout)
            if expired:
                logger.warning("%d storage commitment request(s) went unanswered", expired)

    def stop(self) -> None:
        for worker in self.workers.values():
            if worker.poll() is None:
                worker.terminate()  # Celery's warm shutdown: finish the task in hand
        for worker in self.workers.values():
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if self.broker is not None:
            self.broker.stop()
