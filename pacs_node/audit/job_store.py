"""The writer of job rows after routing: transitions under a row lock, leases, deliveries.

Every transition is one transaction that locks the job row (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers), checks that the job is still
in a state the caller expects (and, for a claim, that nobody else holds a live lease),
updates it and appends the :class:`JobStateChange`. A job claimed twice (a message delivered
twice, two workers) is therefore worked once: the second claim finds the state moved on and
gets ``False``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, literal, or_, select

from pacs_node.audit.db import session_factory
from pacs_node.audit.models import (
    DeliveryAttempt,
    Instance,
    Job,
    JobState,
    JobStateChange,
    Series,
    Study,
    as_utc,
    utcnow,
)
from pacs_node.jobs.states import check_transition

__all__ = ["DueJob", "JobStore", "Provenance"]

logger = logging.getLogger(__name__)

_LEASED = frozenset({JobState.ENHANCING, JobState.SENDING})


@dataclass(frozen=True)
class Provenance:
    """Where and with what model a transition happened (written on the job and its log)."""

    worker_host: str | None = None
    device: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None

    def columns(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class DueJob:
    """A job the reconciler should hand on, and why."""

    job_id: int
    state: JobState
    why: str


class JobStore:
    """Job transitions and deliveries on ``engine`` (the audit DB)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = session_factory(engine)

    def move(
        self,
        job_id: int,
        to_state: JobState,
        *,
        expect: Collection[JobState],
        actor: str,
        reason: str | None = None,
        owner: str | None = None,
        lease_s: float | None = None,
        provenance: Provenance | None = None,
        changes: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Compare-and-set the job's state; True if this call made the transition.

        Parameters
        ----------
        job_id : int
            The job.
        to_state : JobState
            Its new state; entering ``enhancing`` or ``sending`` needs ``owner`` and
            ``lease_s`` (a claim), any other state drops the lease.
        expect : collection of JobState
            States the job may be in now; each must be allowed to become ``to_state``.
        actor : str
            Who moves it (``"worker:host:pid"``, ``"reconciler"``, ``"admin"``).
        reason : str, optional
            Why; written on the job and in the log.
        owner, lease_s : optional
            The claimant and how long its claim lasts. A claim fails while another owner's
            lease is live.
        provenance : Provenance, optional
            Worker host, device and model, written on the job and in the log.
        changes : mapping, optional
            Other job columns to set in the same transaction.
        now : datetime, optional
            The clock (tests).
        """
        for state in expect:
            check_transition(JobState(state), to_state)
        claiming = to_state in _LEASED
        if claiming and (owner is None or lease_s is None or lease_s <= 0):
            raise ValueError(f"entering {to_state.value!r} needs an owner and a positive lease")
        now = now or utcnow()
        with self._sessions.begin() as s:
            job = s.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
            if job is None:
                raise KeyError(f"no job {job_id}")
            current = JobState(job.state)
            if current not in expect:
                return False
            if claiming and _held_by_other(job, owner, now):
                return False
            # Leaving a leased state as its holder: a holder whose lease was taken over
            # (it stalled past expiry) must not overwrite its successor's work.
            leaving = owner is not None and not claiming and current in _LEASED
            if leaving and job.lease_owner != owner:
                return False
            job.state = to_state
            job.updated_at = now
            if reason is not None:
                job.reason = reason
            if claiming:
                job.lease_owner = owner
                job.lease_expires_at = now + timedelta(seconds=float(lease_s or 0))
            else:
                job.lease_owner = job.lease_expires_at = None
            facts = provenance.columns() if provenance else {}
            for key, value in {**facts, **(changes or {})}.items():
                setattr(job, key, value)
            s.add(
                JobStateChange(
                    job_id=job_id,
                    at=now,
                    from_state=current,
                    to_state=to_state,
                    actor=actor,
                    reason=reason,
                    **facts,
                )
            )
        logger.info("job %d: %s -> %s (%s)", job_id, current, to_state, actor)
        return True

    def renew_lease(self, job_id: int, owner: str, lease_s: float) -> bool:
        """Extend ``owner``'s lease (a long enhancement); False if it no longer holds it."""
        now = utcnow()
        with self._sessions.begin() as s:
            job = s.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
            if job is None or job.lease_owner != owner or JobState(job.state) not in _LEASED:
                return False
            job.lease_expires_at = now + timedelta(seconds=lease_s)
            return True

    def hold_off_send(self, job_id: int, until: datetime) -> None:
        """Set when the reconciler may next publish a delivery (not a state change)."""
        with self._sessions.begin() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is not None:
                job.next_send_at = until

    def source_files(self, job_id: int) -> list[str]:
        """Spool paths (relative) of the newest version of each instance of the job's series."""
        newest = (
            select(Instance.sop_instance_uid, func.max(Instance.version).label("version"))
            .join(Job, Job.series_id == Instance.series_id)
            .where(Job.id == job_id)
            .group_by(Instance.sop_instance_uid)
            .subquery()
        )
        query = (
            select(Instance.spool_path)
            .join(
                newest,
                and_(
                    Instance.sop_instance_uid == newest.c.sop_instance_uid,
                    Instance.version == newest.c.version,
                ),
            )
            .order_by(Instance.sop_instance_uid)
        )
        with self._sessions() as s:
            return list(s.scalars(query))

    def jobs_of_study(self, study_instance_uid: str) -> list[Job]:
        """Detached copies of every job of one study, oldest first."""
        query = (
            select(Job)
            .join(Series, Series.id == Job.series_id)
            .join(Study, Study.id == Series.study_id)
            .where(Study.study_instance_uid == study_instance_uid)
            .order_by(Job.id)
        )
        with self._sessions() as s:
            found = list(s.scalars(query))
            s.expunge_all()
            return found

    def get(self, job_id: int) -> Job:
        """A detached copy of the job row."""
        with self._sessions() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise KeyError(f"no job {job_id}")
            s.expunge(job)
            return job

    def due(
        self,
        *,
        now: datetime | None = None,
        queued_grace_s: float = 300.0,
        ignore_hold_off: bool = False,
    ) -> list[DueJob]:
        """Jobs stuck short of a terminal state, for the reconciler to hand on.

        ``pending`` jobs (never published, e.g. the node stopped after the commit);
        ``queued`` ones older than ``queued_grace_s`` (a lost broker message);
        ``enhancing`` and ``sending`` ones whose lease expired (a dead worker); and
        ``enhanced`` ones whose next delivery is due. ``ignore_hold_off`` also returns
        every ``enhanced`` job whose delivery was published but not yet tried (after the
        broker lost its messages); failed deliveries keep their back-off.
        """
        now = now or utcnow()
        queued_before = now - timedelta(seconds=queued_grace_s)
        state = Job.state
        query = (
            select(Job.id, Job.state)
            .where(
                or_(
                    state == JobState.PENDING,
                    and_(state == JobState.QUEUED, Job.updated_at <= queued_before),
                    and_(state.in_(list(_LEASED)), Job.lease_expires_at <= now),
                    and_(
                        state == JobState.ENHANCED,
                        or_(
                            Job.next_send_at.is_(None),
                            Job.next_send_at <= now,
                            and_(Job.send_attempts == 0, literal(ignore_hold_off)),
                        ),
                    ),
                )
            )
            .order_by(Job.id)
        )
        why = {
            JobState.PENDING: "not yet queued",
            JobState.QUEUED: f"queued for over {queued_grace_s:.0f} s",
            JobState.ENHANCING: "lease expired",
            JobState.SENDING: "lease expired",
            JobState.ENHANCED: "delivery due",
        }
        with self._sessions() as s:
            return [
                DueJob(row.id, JobState(row.state), why[JobState(row.state)])
                for row in s.execute(query)
            ]

    def record_delivery(
        self,
        job_id: int,
        *,
        destination: str,
        started_at: datetime,
        delivered: bool,
        statuses: list[str],
        failed: int,
        reason: str,
    ) -> None:
        """Append one delivery attempt with every instance's response."""
        with self._sessions.begin() as s:
            s.add(
                DeliveryAttempt(
                    job_id=job_id,
                    destination=destination,
                    started_at=started_at,
                    ended_at=utcnow(),
                    delivered=delivered,
                    instances_sent=len(statuses),
                    instances_failed=failed,
                    statuses="\n".join(statuses),
                    reason=reason,
                )
            )


def _held_by_other(job: Job, owner: str | None, now: datetime) -> bool:
    if job.lease_owner is None or job.lease_owner == owner or job.lease_expires_at is None:
        return False
    return as_utc(job.lease_expires_at) > now
