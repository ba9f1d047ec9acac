"""Read-side of the audit DB for the CLI: rows as plain dicts with snake_case keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from pacs_node.audit.models import (
    Association,
    DeliveryAttempt,
    Instance,
    Job,
    JobStateChange,
    Series,
    StorageCommitment,
    StoreEvent,
    Study,
    as_utc,
)

_Query = Select[*tuple[Any, ...]]

AUDIT_VIEWS = (
    "associations",
    "instances",
    "jobs",
    "events",
    "transitions",
    "deliveries",
    "commitments",
)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return as_utc(value).isoformat(timespec="milliseconds")


def _newer_in_state(
    query: _Query,
    since: datetime | None,
    at: Any,
    state: str | None = None,
    state_column: Any = None,
) -> _Query:
    """``query`` limited to rows with ``at >= since`` and ``state_column == state``."""
    if since is not None:
        query = query.where(at >= since)
    if state is not None and state_column is not None:
        query = query.where(state_column == state)
    return query


def _associations(since: datetime | None, state: str | None) -> _Query:
    query: _Query = select(Association).order_by(Association.id)
    return _newer_in_state(query, since, Association.started_at, state, Association.outcome)


def _instances(since: datetime | None, state: str | None) -> _Query:
    query: _Query = (
        select(Instance, Series.series_instance_uid, Study.study_instance_uid)
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Series.study_id)
        .order_by(Instance.id)
    )
    return _newer_in_state(query, since, Instance.received_at)


def _jobs(since: datetime | None, state: str | None) -> _Query:
    query: _Query = (
        select(Job, Series.series_instance_uid, Series.modality, Series.instance_count)
        .join(Series, Series.id == Job.series_id)
        .order_by(Job.id)
    )
    return _newer_in_state(query, since, Job.created_at, state, Job.state)


def list_rows(
    session: Session, view: str, *, since: datetime | None = None, state: str | None = None
) -> list[dict[str, Any]]:
    """Rows of ``view`` (one of :data:`AUDIT_VIEWS`) newer than ``since``, in ``state``."""
    if view == "associations":
        return [
            {
                "id": a.id,
                "calling_ae": a.calling_ae,
                "called_ae": a.called_ae,
                "peer_host": a.peer_host,
                "peer_port": a.peer_port,
                "tls": a.tls,
                "started_at": _iso(a.started_at),
                "ended_at": _iso(a.ended_at),
                "state": a.outcome,
                "instances": a.instances_received,
                "bytes": a.bytes_received,
                "reason": a.reason,
                "node_host": a.node_host,
                "receiver_pid": a.receiver_pid,
            }
            for a in session.scalars(_associations(since, state))
        ]
    if view == "instances":
        rows = []
        for inst, series_uid, study_uid in session.execute(_instances(since, state)):
            rows.append(
                {
                    "id": inst.id,
                    "sop_instance_uid": inst.sop_instance_uid,
                    "version": inst.version,
                    "sop_class_uid": inst.sop_class_uid,
                    "series_instance_uid": series_uid,
                    "study_instance_uid": study_uid,
                    "transfer_syntax_uid": inst.transfer_syntax_uid,
                    "size_bytes": inst.size_bytes,
                    "sha256": inst.sha256,
                    "association_id": inst.association_id,
                    "received_at": _iso(inst.received_at),
                    "spool_path": inst.spool_path,
                    "state": "stored",
                }
            )
        if state is not None:
            rows = [r for r in rows if r["state"] == state]
        return rows
    if view == "jobs":
        return [
            {
                "id": job.id,
                "series_instance_uid": series_uid,
                "modality": modality,
                "instances": count,
                "state": job.state,
                "rule_name": job.rule_name,
                "reason": job.reason,
                "created_at": _iso(job.created_at),
                "updated_at": _iso(job.updated_at),
                "model_name": job.model_name,
                "model_version": job.model_version,
                "model_sha256": job.model_sha256,
                "worker_host": job.worker_host,
                "device": job.device,
                "qc_passed": job.qc_passed,
                "send_attempts": job.send_attempts,
            }
            for job, series_uid, modality, count in session.execute(_jobs(since, state))
        ]
    if view == "events":
        query = _newer_in_state(
            select(StoreEvent).order_by(StoreEvent.id), since, StoreEvent.at, state, StoreEvent.kind
        )
        return [
            {
                "id": e.id,
                "at": _iso(e.at),
                "state": e.kind,
                "status": f"0x{e.status:04X}",
                "association_id": e.association_id,
                "sop_class_uid": e.sop_class_uid,
                "sop_instance_uid": e.sop_instance_uid,
                "series_instance_uid": e.series_instance_uid,
                "reason": e.reason,
            }
            for e in session.scalars(query)
        ]
    if view == "transitions":
        changes = _newer_in_state(
            select(JobStateChange).order_by(JobStateChange.id),
            since,
            JobStateChange.at,
            state,
            JobStateChange.to_state,
        )
        return [
            {
                "id": c.id,
                "job_id": c.job_id,
                "at": _iso(c.at),
                "from_state": c.from_state,
                "state": c.to_state,
                "actor": c.actor,
                "reason": c.reason,
                "worker_host": c.worker_host,
                "device": c.device,
                "model_name": c.model_name,
                "model_version": c.model_version,
                "model_sha256": c.model_sha256,
            }
            for c in session.scalars(changes)
        ]
    if view == "deliveries":
        attempts = _newer_in_state(
            select(DeliveryAttempt).order_by(DeliveryAttempt.id), since, DeliveryAttempt.started_at
        )
        rows = [
            {
                "id": d.id,
                "job_id": d.job_id,
                "destination": d.destination,
                "started_at": _iso(d.started_at),
                "ended_at": _iso(d.ended_at),
                "state": "delivered" if d.delivered else "failed",
                "instances_sent": d.instances_sent,
                "instances_failed": d.instances_failed,
                "statuses": d.statuses.splitlines(),
                "reason": d.reason,
            }
            for d in session.scalars(attempts)
        ]
        return [r for r in rows if state is None or r["state"] == state]
    if view == "commitments":
        requests = _newer_in_state(
            select(StorageCommitment).order_by(StorageCommitment.id),
            since,
            StorageCommitment.requested_at,
            state,
            StorageCommitment.state,
        )
        return [
            {
                "id": c.id,
                "job_id": c.job_id,
                "destination": c.destination,
                "transaction_uid": c.transaction_uid,
                "requested_at": _iso(c.requested_at),
                "state": c.state,
                "instances": c.instances,
                "committed": c.committed,
                "failed": c.failed,
                "failures": c.failures.splitlines() if c.failures else [],
                "reported_at": _iso(c.reported_at),
                "reported_by": c.reported_by,
                "reason": c.reason,
            }
            for c in session.scalars(requests)
        ]
    raise ValueError(f"unknown audit view {view!r}; choose from {', '.join(AUDIT_VIEWS)}")
