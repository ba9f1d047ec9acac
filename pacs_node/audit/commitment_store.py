"""Storage Commitment rows: written before the N-ACTION, completed by the N-EVENT-REPORT.

The row exists before the request leaves, because a PACS may report on a new association
within milliseconds, to a receiver process that knows nothing of the sender. A report
settles the row whatever state it is in; the sender's own note that the N-ACTION was
accepted only moves a row still ``requesting``, so it never overwrites a result.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, Engine, select, update

from pacs_node.audit.db import session_factory
from pacs_node.audit.models import CommitmentState, StorageCommitment, utcnow
from pacs_node.sender.commitment import CommitmentReport

__all__ = ["CommitmentStore"]

C = CommitmentState
_AWAITING = (C.REQUESTING, C.REQUESTED)


class CommitmentStore:
    """Write side of the ``storage_commitment`` table."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)

    def open(self, job_id: int, *, destination: str, transaction_uid: str, instances: int) -> None:
        """Record a request about to be sent."""
        with self._sessions.begin() as s:
            s.add(
                StorageCommitment(
                    job_id=job_id,
                    destination=destination,
                    transaction_uid=transaction_uid,
                    state=C.REQUESTING,
                    requested_at=utcnow(),
                    instances=instances,
                )
            )

    def answered(self, transaction_uid: str, *, accepted: bool, reason: str) -> None:
        """The PACS's answer to the N-ACTION (a report that came first is kept)."""
        state = C.REQUESTED if accepted else C.REFUSED
        with self._sessions.begin() as s:
            s.execute(
                update(StorageCommitment)
                .where(
                    StorageCommitment.transaction_uid == transaction_uid,
                    StorageCommitment.state == C.REQUESTING,
                )
                .values(state=state, reason=reason)
            )

    def record_report(self, report: CommitmentReport, *, reported_by: str) -> int | None:
        """Settle the request the report answers; its job id, or None for an unknown UID."""
        with self._sessions.begin() as s:
            row = s.scalars(
                select(StorageCommitment)
                .where(StorageCommitment.transaction_uid == report.transaction_uid)
                .with_for_update()
            ).one_or_none()
            if row is None:
                return None
            row.state = C.COMMITTED if report.all_committed else C.FAILED
            row.reported_at = utcnow()
            row.reported_by = reported_by[:128]
            row.committed = len(report.committed)
            row.failed = len(report.failed)
            row.failures = "\n".join(f"{f.sop_instance_uid} {f.reason}" for f in report.failed)
            if report.all_committed:
                row.reason = f"{row.committed} of {row.instances} instance(s) committed"
            else:
                row.reason = (
                    f"{row.failed} of {row.instances} instance(s) not committed; "
                    "resend with jobs resend"
                )
            return row.job_id

    def expire(self, older_than: datetime) -> int:
        """Requests still unanswered since before ``older_than`` → ``unanswered``; how many."""
        with self._sessions.begin() as s:
            result: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                update(StorageCommitment)
                .where(
                    StorageCommitment.state.in_(_AWAITING),
                    StorageCommitment.requested_at < older_than,
                )
                .values(state=C.UNANSWERED, reason="no N-EVENT-REPORT arrived in time")
            )
            return result.rowcount
