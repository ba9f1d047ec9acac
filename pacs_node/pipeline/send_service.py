"""The delivery step of a job: claim it, C-STORE its derived series to every PACS, decide.

Every association and every response status is recorded (:class:`DeliveryAttempt`). All
destinations stored everything: ``sent``; where a destination wants Storage Commitment the
request is recorded too, and its result when the PACS reports it (the job stays ``sent``:
C-STORE succeeded; a commitment failure is for an admin to resend). Otherwise the retry
policy picks the next attempt and the job goes back to ``enhanced`` with ``next_send_at``
(the reconciler publishes it then), until the policy gives up and the job fails with the
last reason. Derived UIDs are fixed by the source and the model, so a repeated delivery
replaces and never duplicates.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.uid import generate_uid

from pacs_node.audit.models import JobState, as_utc, utcnow
from pacs_node.pipeline.context import WorkerContext
from pacs_node.pipeline.enhance_service import derived_files
from pacs_node.pipeline.heartbeat import Heartbeat
from pacs_node.receiver.commitment import handle_commitment_report
from pacs_node.sender import Destination, store_files
from pacs_node.sender.scu import CommitmentAsk

__all__ = ["deliver"]

logger = logging.getLogger(__name__)

S = JobState


def deliver(ctx: WorkerContext, job_id: int) -> bool:
    """Send job ``job_id`` if it is waiting in ``enhanced``; True if this call handled it."""
    owner, jobs = ctx.owner, ctx.jobs
    actor = f"sender {owner}"
    destinations = ctx.destinations()
    if not destinations:
        logger.info("job %d: no PACS destination is configured; it stays enhanced", job_id)
        return False
    if not jobs.move(
        job_id,
        S.SENDING,
        expect=[S.ENHANCED],
        actor=actor,
        owner=owner,
        lease_s=ctx.settings.pipeline.lease_s,
        reason=f"sending to {', '.join(d.name for d in destinations)}",
    ):
        logger.info("job %d: not waiting to be sent (sent, sending or moved on)", job_id)
        return False
    job = jobs.get(job_id)
    if job.qc_passed is False and not job.force_send:
        reason = f"not sent: count-fidelity QC failed ({job.qc_reason}); force with jobs force-send"
        jobs.move(job_id, S.FAILED, expect=[S.SENDING], actor=actor, owner=owner, reason=reason)
        return True
    files = derived_files(job.output_dir)
    if not files:
        reason = f"no derived files in {job.output_dir!r}; re-run with jobs retry"
        jobs.move(job_id, S.FAILED, expect=[S.SENDING], actor=actor, owner=owner, reason=reason)
        return True
    with Heartbeat(jobs, job_id, owner, ctx.settings.pipeline.lease_s):
        problems = _send_everywhere(ctx, job_id, destinations, files)
    attempts = job.send_attempts + 1
    if not problems:
        return jobs.move(
            job_id,
            S.SENT,
            expect=[S.SENDING],
            actor=actor,
            owner=owner,
            reason=f"stored at {', '.join(d.name for d in destinations)} (attempt {attempts})",
            changes={"send_attempts": attempts, "next_send_at": None},
        )
    return _retry_or_fail(ctx, job_id, attempts, job.first_send_failure_at, "; ".join(problems))


def _send_everywhere(
    ctx: WorkerContext, job_id: int, destinations: list[Destination], files: list[Path]
) -> list[str]:
    """C-STORE to each destination, recording every attempt; the reasons of those that failed."""
    timeouts = ctx.settings.timeouts
    problems = []
    for destination in destinations:
        started = utcnow()
        report = store_files(
            destination,
            files,
            calling_ae=ctx.settings.node.ae_title,
            acse_timeout=timeouts.acse,
            dimse_timeout=timeouts.dimse,
            network_timeout=timeouts.network,
            commitment=_commitment_ask(ctx, job_id, destination),
        )
        if report.commitment is not None:
            answer = report.commitment
            ctx.commitments.answered(
                answer.transaction_uid, accepted=answer.accepted, reason=answer.reason
            )
            if not answer.accepted:
                logger.warning("job %d: %s: %s", job_id, destination.name, answer.reason)
        ctx.jobs.record_delivery(
            job_id,
            destination=destination.name,
            started_at=started,
            delivered=report.delivered,
            statuses=[f"{r.sop_instance_uid} {r.reason}" for r in report.results],
            failed=len(report.failures),
            reason=report.reason(),
        )
        if not report.delivered:
            problems.append(report.reason())
    return problems


def _commitment_ask(
    ctx: WorkerContext, job_id: int, destination: Destination
) -> CommitmentAsk | None:
    if not destination.storage_commitment:
        return None
    # A fresh UID per request: a PACS may refuse a Transaction UID it has seen (0x0131).
    transaction_uid = str(generate_uid())

    def record(instances: int) -> None:
        ctx.commitments.open(
            job_id,
            destination=destination.name,
            transaction_uid=transaction_uid,
            instances=instances,
        )

    def on_report(event: Any) -> tuple[int, Dataset | None]:
        return handle_commitment_report(ctx.commitments, event).status, None

    return CommitmentAsk(transaction_uid, before_request=record, on_report=on_report)


def _retry_or_fail(
    ctx: WorkerContext,
    job_id: int,
    attempts: int,
    first_failure: datetime | None,
    reason: str,
) -> bool:
    now = utcnow()
    first = as_utc(first_failure) if first_failure is not None else now
    at = ctx.retry_policy().next_attempt_at(
        first_failure_at=first.timestamp(), now=now.timestamp(), failures=attempts, rng=ctx.rng
    )
    actor = f"sender {ctx.owner}"
    changes = {"send_attempts": attempts, "first_send_failure_at": first}
    if at is None:
        hours = ctx.settings.delivery.retry_for_hours
        return ctx.jobs.move(
            job_id,
            S.FAILED,
            expect=[S.SENDING],
            actor=actor,
            owner=ctx.owner,
            reason=f"gave up after {attempts} attempt(s) over {hours:g} h: {reason}",
            changes=changes | {"next_send_at": None},
        )
    when = datetime.fromtimestamp(at, UTC)
    logger.warning("job %d: delivery attempt %d failed; next at %s", job_id, attempts, when)
    return ctx.jobs.move(
        job_id,
        S.ENHANCED,
        expect=[S.SENDING],
        actor=actor,
        owner=ctx.owner,
        reason=f"attempt {attempts} failed, retry at {when:%H:%M:%S}Z: {reason}",
        changes=changes | {"next_send_at": when},
    )
