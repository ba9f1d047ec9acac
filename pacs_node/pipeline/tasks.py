"""The Celery tasks: thin, idempotent wrappers that claim a job row and call a service."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from pacs_node.config import Settings
from pacs_node.pipeline.celery_app import ENHANCE_TASK, SEND_TASK, Publisher
from pacs_node.pipeline.context import WorkerContext

__all__ = ["register_tasks"]

_context: dict[str, WorkerContext] = {}


def register_tasks(app: Celery, settings: Settings) -> None:
    """Register ``enhance`` and ``send`` on ``app``; each worker process builds its context."""

    def context() -> WorkerContext:
        if "ctx" not in _context:
            _context["ctx"] = WorkerContext(settings, Publisher(app))
        return _context["ctx"]

    @worker_process_init.connect(weak=False)
    def _fresh_context(**_: Any) -> None:
        # A forked child must not reuse the parent's engine or model.
        _context.clear()

    @app.task(name=ENHANCE_TASK, acks_late=True, reject_on_worker_lost=True)
    def enhance(job_id: int) -> None:
        from pacs_node.pipeline.enhance_service import run_enhancement

        run_enhancement(context(), int(job_id))

    @app.task(name=SEND_TASK, acks_late=True, reject_on_worker_lost=True)
    def send(job_id: int) -> None:
        from pacs_node.pipeline.send_service import deliver

        deliver(context(), int(job_id))
