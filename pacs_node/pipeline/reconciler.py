"""Hand on jobs that nobody is working on: the guarantee that no job is stranded.

Run at start-up and every ``reconcile_interval_s``. For each job :meth:`JobStore.due`
reports: ``pending`` → ``queued`` and published; ``queued`` too long → published again (the
broker may have lost it); ``enhancing`` with an expired lease (a dead worker) → ``queued``;
``sending`` with an expired lease → ``enhanced``; ``enhanced`` and due → a delivery is
published and the next one held off for the grace period. Every state change is a
compare-and-set, and publishing happens after its commit.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from pacs_node.audit.job_store import JobStore
from pacs_node.audit.models import JobState, utcnow
from pacs_node.pipeline.celery_app import Publisher

__all__ = ["queue_new_job", "reconcile_once"]

logger = logging.getLogger(__name__)

S = JobState
ACTOR = "reconciler"


def queue_new_job(jobs: JobStore, publisher: Publisher, job_id: int) -> bool:
    """``pending`` → ``queued``, then publish: the path of a job completion just created."""
    if jobs.move(job_id, S.QUEUED, expect=[S.PENDING], actor="dispatcher", reason="queued"):
        publisher.enhance(job_id)
        return True
    return False


def reconcile_once(
    jobs: JobStore,
    publisher: Publisher,
    *,
    queued_grace_s: float,
    can_send: bool,
    now: datetime | None = None,
    broker_restarted: bool = False,
) -> int:
    """One pass; returns how many jobs it handed on.

    ``broker_restarted``: the broker lost every message, so every ``queued`` job and every
    published delivery is published again now rather than after the grace period.
    """
    now = now or utcnow()
    handed = 0
    grace = 0.0 if broker_restarted else queued_grace_s
    due_jobs = jobs.due(now=now, queued_grace_s=grace, ignore_hold_off=broker_restarted)
    for due in due_jobs:
        job, why = due.job_id, due.why
        if due.state is S.PENDING:
            moved = queue_new_job(jobs, publisher, job)
        elif due.state is S.QUEUED:
            moved = jobs.move(job, S.QUEUED, expect=[S.QUEUED], actor=ACTOR, reason=why, now=now)
            if moved:
                publisher.enhance(job)
        elif due.state is S.ENHANCING:
            reason = "the worker's lease expired; queued again"
            moved = jobs.move(job, S.QUEUED, expect=[S.ENHANCING], actor=ACTOR, reason=reason)
            if moved:
                publisher.enhance(job)
        elif due.state is S.SENDING:
            reason = "the sender's lease expired; to be sent again"
            moved = jobs.move(job, S.ENHANCED, expect=[S.SENDING], actor=ACTOR, reason=reason)
        else:  # ENHANCED and due
            moved = can_send
            if can_send:
                jobs.hold_off_send(job, now + timedelta(seconds=queued_grace_s))
                publisher.send(job)
        if moved:
            logger.info("job %d handed on (%s)", job, why)
            handed += 1
    return handed
