"""The Celery application: two queues, JSON only, late acks, one task at a time per GPU.

``enhance`` (GPU or CPU workers: concurrency 1 per device, prefetch 1) and ``dispatch``
(network I/O: the PACS push). Tasks are published by name with the job id as their only
argument; the audit DB says what the job needs. ``acks_late`` with
``reject_on_worker_lost`` puts a message back when its worker dies mid-task, and the
visibility timeout (above the slowest job) decides when Redis re-delivers a message whose
worker vanished without a word.
"""

from __future__ import annotations

from celery import Celery

__all__ = [
    "DISPATCH_QUEUE",
    "ENHANCE_QUEUE",
    "ENHANCE_TASK",
    "SEND_TASK",
    "Publisher",
    "make_celery",
]

ENHANCE_TASK = "pacs_node.enhance"
SEND_TASK = "pacs_node.send"
ENHANCE_QUEUE = "enhance"
DISPATCH_QUEUE = "dispatch"


def make_celery(broker_url: str, *, visibility_timeout_s: float) -> Celery:
    """A configured app for ``broker_url`` (Redis); no result backend (the audit DB is one)."""
    transport = {"visibility_timeout": visibility_timeout_s}
    app = Celery("pacs_node", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Redis re-delivers unacknowledged messages after this; it is read from the
        # broker's and the result backend's transport options.
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        task_routes={
            ENHANCE_TASK: {"queue": ENHANCE_QUEUE},
            SEND_TASK: {"queue": DISPATCH_QUEUE},
        },
        task_default_queue=DISPATCH_QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


class Publisher:
    """Publishes job ids by task name (after the caller's commit)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def enhance(self, job_id: int) -> None:
        self.app.send_task(ENHANCE_TASK, args=[job_id], queue=ENHANCE_QUEUE)

    def send(self, job_id: int) -> None:
        self.app.send_task(SEND_TASK, args=[job_id], queue=DISPATCH_QUEUE)
