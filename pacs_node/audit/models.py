"""SQLAlchemy 2.0 typed models of the audit database.

Closed vocabularies are stored as short strings (not native enums) so a later issue can add
job states without a type migration on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A timestamp read back from the audit DB, time-zone aware (SQLite returns naive UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class AssociationOutcome(StrEnum):
    """How an association ended."""

    IN_PROGRESS = "in_progress"  #: still open
    RELEASED = "released"  #: A-RELEASE, the normal end
    ABORTED = "aborted"  #: A-ABORT or the connection dropped
    REJECTED = "rejected"  #: A-ASSOCIATE-RJ sent by the node
    INTERRUPTED = "interrupted"  #: the node stopped or crashed while it was open


class StoreEventKind(StrEnum):
    """C-STORE outcomes other than a first, plain store (which is an instance row)."""

    DUPLICATE = "duplicate"  #: same SOP Instance UID, identical bytes: acknowledged, not stored
    NEW_VERSION = "new_version"  #: same SOP Instance UID, different bytes: kept as a new version
    REJECTED = "rejected"  #: refused with a failure status; the reason says why


class JobState(StrEnum):
    """Life of a job (PS3.4-independent; the enhancement pipeline adds the later states)."""

    PENDING = "pending"  #: series complete and routed to enhancement, not yet queued
    IGNORED = "ignored"  #: series complete, no rule asks for enhancement
    QUEUED = "queued"  #: published to the enhancement queue
    ENHANCING = "enhancing"  #: a worker holds it
    ENHANCED = "enhanced"  #: derived series written
    SENDING = "sending"  #: C-STORE to PACS under way
    SENT = "sent"  #: PACS acknowledged every instance
    FAILED = "failed"  #: gave up; an admin can re-run


class CommitmentState(StrEnum):
    """Where a Storage Commitment request stands (PS3.4 Annex J)."""

    REQUESTING = "requesting"  #: row written, N-ACTION under way
    REQUESTED = "requested"  #: the PACS accepted the N-ACTION; the report is awaited
    REFUSED = "refused"  #: the PACS refused the N-ACTION (status or no context)
    COMMITTED = "committed"  #: N-EVENT-REPORT: every instance committed
    FAILED = "failed"  #: N-EVENT-REPORT: some instances not committed
    UNANSWERED = "unanswered"  #: no report within the configured time


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


_Timestamp = DateTime(timezone=True)


class Association(Base):
    """One row per association attempt, accepted or not."""

    __tablename__ = "association"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer_host: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(_Timestamp)
    outcome: Mapped[str] = mapped_column(String(16), default=AssociationOutcome.IN_PROGRESS)
    reason: Mapped[str | None] = mapped_column(Text)
    instances_received: Mapped[int] = mapped_column(Integer, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Host name of the node that served it: nodes may share one audit database.
    node_host: Mapped[str] = mapped_column(String(255))
    receiver_pid: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_association_outcome", "outcome"),)


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    first_received_at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_description: Mapped[str | None] = mapped_column(String(64))
    image_type: Mapped[str | None] = mapped_column(String(256))  # backslash-joined values
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow)
    last_association_id: Mapped[int] = mapped_column(ForeignKey("association.id"))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    #: When completion routed it (a job row exists from then on); NULL while it may grow.
    routed_at: Mapped[datetime | None] = mapped_column(_Timestamp)

    study: Mapped[Study] = relationship()

    __table_args__ = (Index("ix_series_unrouted", "routed_at", "last_received_at"),)


class Instance(Base):
    """A stored object; each differing resend of a SOP Instance UID is a new version."""

    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    association_id: Mapped[int] = mapped_column(ForeignKey("association.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: Relative to the spool directory.
    spool_path: Mapped[str] = mapped_column(String(512))
    received_at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow, index=True)

    series: Mapped[Series] = relationship()

    __table_args__ = (UniqueConstraint("sop_instance_uid", "version"),)


class StoreEvent(Base):
    """A C-STORE that did not simply store a new instance: duplicate, new version, refusal."""

    __tablename__ = "store_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("association.id"), index=True)
    at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[int] = mapped_column(Integer)
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)


class Job(Base):
    """Work for one complete series; at most one per series."""

    __tablename__ = "job"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    rule_name: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow)
    #: Who holds the job while it is ``enhancing`` or ``sending`` ("host:pid"), and until
    #: when: a holder that dies lets the lease expire and the reconciler hands the job on.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(_Timestamp, index=True)
    #: Deliveries tried since the job last entered ``enhanced``, and when to try again.
    send_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    first_send_failure_at: Mapped[datetime | None] = mapped_column(_Timestamp)
    next_send_at: Mapped[datetime | None] = mapped_column(_Timestamp)
    #: The model that enhanced it, where, and the derived files it wrote.
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    worker_host: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(32))
    output_dir: Mapped[str | None] = mapped_column(Text)
    #: The count-fidelity QC verdict; a failed one is sent only when an admin forces it.
    qc_passed: Mapped[bool | None] = mapped_column(Boolean)
    qc_reason: Mapped[str | None] = mapped_column(Text)
    force_send: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    series: Mapped[Series] = relationship()


class JobStateChange(Base):
    """Append-only log of job transitions (triggers refuse UPDATE and DELETE)."""

    __tablename__ = "job_state_change"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    #: Where the transition happened and with which model (enhancement transitions).
    worker_host: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(32))
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    model_sha256: Mapped[str | None] = mapped_column(String(64))


class DeliveryAttempt(Base):
    """One association to one PACS destination for one job, with what PACS answered."""

    __tablename__ = "delivery_attempt"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow)
    ended_at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow)
    delivered: Mapped[bool] = mapped_column(Boolean)
    instances_sent: Mapped[int] = mapped_column(Integer)
    instances_failed: Mapped[int] = mapped_column(Integer)
    #: Each instance's response, "UID 0xSTAT meaning" per line, so any status can be found.
    statuses: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)


class StorageCommitment(Base):
    """One Storage Commitment request to one PACS for one delivery, and its result."""

    __tablename__ = "storage_commitment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    transaction_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    requested_at: Mapped[datetime] = mapped_column(_Timestamp, default=utcnow)
    instances: Mapped[int] = mapped_column(Integer)
    reported_at: Mapped[datetime | None] = mapped_column(_Timestamp)
    #: Who sent the N-EVENT-REPORT ("AE@host") and what it said.
    reported_by: Mapped[str | None] = mapped_column(String(128))
    committed: Mapped[int | None] = mapped_column(Integer)
    failed: Mapped[int | None] = mapped_column(Integer)
    #: "UID 0xCODE meaning" per failed instance.
    failures: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
