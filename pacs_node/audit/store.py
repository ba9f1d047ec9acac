"""The one writer of audit rows. Each method is one short transaction."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    bindparam,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from pacs_node.audit.db import session_factory
from pacs_node.audit.models import (
    Association,
    AssociationOutcome,
    Base,
    Instance,
    Job,
    JobState,
    JobStateChange,
    Series,
    StoreEvent,
    StoreEventKind,
    Study,
    utcnow,
)
from pacs_node.audit.records import (
    CompleteSeries,
    InstanceFacts,
    PeerInfo,
    Placement,
    StoreOutcome,
)

logger = logging.getLogger(__name__)

__all__ = ["AuditStore", "CompleteSeries", "InstanceFacts", "PeerInfo", "Placement"]


# The C-STORE path runs these for every instance: built once, compiled once.
_SELECT_VERSIONS = select(Instance.version, Instance.sha256).where(
    Instance.sop_instance_uid == bindparam("uid")
)
_INSERT_EVENT = insert(StoreEvent)
_INSERT_INSTANCE = insert(Instance)
_TOUCH_SERIES_BY_UID = (
    update(Series)
    .where(Series.series_instance_uid == bindparam("uid"))
    .values(last_received_at=bindparam("now"), last_association_id=bindparam("assoc"))
)
_COUNT_INTO_SERIES = (
    update(Series)
    .where(Series.id == bindparam("series_pk"))
    .values(
        last_received_at=bindparam("now"),
        last_association_id=bindparam("assoc"),
        instance_count=Series.instance_count + 1,
    )
)


class AuditStore:
    """Writes and reads audit rows through short transactions on ``engine``."""

    def __init__(self, engine: Engine, *, node_host: str | None = None) -> None:
        self.engine = engine
        self.node_host = node_host or socket.gethostname()
        # Reads that need no write lock (SQLite: a deferred BEGIN, see db.py).
        self._reader = engine.execution_options(read_only=True)
        self._sessions = session_factory(engine)
        # Series and study ids never change once created, so each process caches them.
        self._study_ids: dict[str, int] = {}
        self._series_ids: dict[str, int] = {}

    def session(self) -> Session:
        return self._sessions()

    # -- associations -------------------------------------------------------------------

    def open_association(self, peer: PeerInfo, *, receiver_pid: int) -> int:
        with self._sessions.begin() as s:
            row = Association(
                calling_ae=peer.calling_ae,
                called_ae=peer.called_ae,
                peer_host=peer.host,
                peer_port=peer.port,
                tls=peer.tls,
                outcome=AssociationOutcome.IN_PROGRESS,
                node_host=self.node_host,
                receiver_pid=receiver_pid,
                started_at=utcnow(),
            )
            s.add(row)
            s.flush()
            return row.id

    def end_association(
        self,
        association_id: int,
        outcome: AssociationOutcome,
        *,
        instances: int,
        nbytes: int,
        reason: str | None = None,
    ) -> None:
        with self._sessions.begin() as s:
            s.execute(
                update(Association)
                .where(Association.id == association_id)
                .where(Association.outcome == AssociationOutcome.IN_PROGRESS)
                .values(
                    outcome=outcome,
                    ended_at=utcnow(),
                    instances_received=instances,
                    bytes_received=nbytes,
                    reason=reason,
                )
            )

    def interrupt_open_associations(self, receiver_pids: Sequence[int] | None = None) -> int:
        """Close associations this node's stopped receivers left open; count their instances.

        ``receiver_pids`` limits this to associations of those processes; None closes all of
        this host's (used when the node starts, before any receiver runs). Other nodes
        sharing the database keep theirs.
        """
        with self._sessions.begin() as s:
            query = select(Association.id).where(
                Association.outcome == AssociationOutcome.IN_PROGRESS,
                Association.node_host == self.node_host,
            )
            if receiver_pids is not None:
                query = query.where(Association.receiver_pid.in_(receiver_pids))
            ids = list(s.scalars(query))
            for assoc_id in ids:
                count, nbytes = s.execute(
                    select(
                        func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0)
                    ).where(Instance.association_id == assoc_id)
                ).one()
                s.execute(
                    update(Association)
                    .where(Association.id == assoc_id)
                    .values(
                        outcome=AssociationOutcome.INTERRUPTED,
                        ended_at=utcnow(),
                        instances_received=count,
                        bytes_received=nbytes,
                        reason="the receiver stopped while the association was open",
                    )
                )
            return len(ids)

    # -- store events ---------------------------------------------------------------------

    def record_store_event(
        self,
        kind: StoreEventKind,
        status: int,
        reason: str,
        *,
        association_id: int | None,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
    ) -> None:
        with self._sessions.begin() as s:
            s.add(
                StoreEvent(
                    association_id=association_id,
                    kind=kind,
                    status=status,
                    reason=reason,
                    sop_class_uid=sop_class_uid,
                    sop_instance_uid=sop_instance_uid,
                    series_instance_uid=series_instance_uid,
                    at=utcnow(),
                )
            )

    # -- instances ------------------------------------------------------------------------

    def stored_versions(self, sop_instance_uid: str) -> list[tuple[int, str]]:
        """(version, sha256) of every stored copy of ``sop_instance_uid``."""
        with self._reader.connect() as conn:
            rows = conn.execute(_SELECT_VERSIONS, {"uid": sop_instance_uid}).all()
        return [(int(version), str(sha256)) for version, sha256 in rows]

    def store_instance(
        self,
        facts: InstanceFacts,
        *,
        association_id: int,
        calling_ae: str,
        sha256: str,
        size_bytes: int,
        place: Callable[[int], Placement],
        known_versions: Sequence[tuple[int, str]] | None = None,
    ) -> StoreOutcome:
        """Record a received object in one transaction, or its identical twin as a duplicate.

        ``place(version)`` puts the file in the spool; the row commits only after the
        placement is durable, so a committed row always has its file on disk. Raises
        ``sqlalchemy.exc.IntegrityError`` when another receiver stored the same SOP Instance
        UID and version first: the caller retries and will see that version.
        ``known_versions``: what :meth:`stored_versions` said a moment ago, read here if
        None; a version stored since is caught by the unique key as above.
        """
        event = {
            "association_id": association_id,
            "sop_class_uid": facts.sop_class_uid,
            "sop_instance_uid": facts.sop_instance_uid,
            "series_instance_uid": facts.series_instance_uid,
            "status": 0x0000,
        }
        versions = (
            self.stored_versions(facts.sop_instance_uid)
            if known_versions is None
            else known_versions
        )
        same = next((v for v, h in versions if h == sha256), None)
        if same is not None:
            now = utcnow()
            with self.engine.begin() as conn:
                conn.execute(
                    _INSERT_EVENT,
                    {
                        **event,
                        "at": now,
                        "kind": StoreEventKind.DUPLICATE,
                        "reason": f"identical to stored version {same}; "
                        "acknowledged, not stored again",
                    },
                )
                conn.execute(
                    _TOUCH_SERIES_BY_UID,
                    {"uid": facts.series_instance_uid, "now": now, "assoc": association_id},
                )
            return StoreOutcome(version=same, duplicate=True)
        version = max((v for v, _h in versions), default=0) + 1
        placement = place(version)
        # The row commits only once the file is durable. Waiting here, outside the write
        # transaction, keeps concurrent stores from queueing behind each other's fsyncs;
        # the unique (SOP Instance UID, version) key catches a store that raced this one.
        placement.wait_durable()
        now = utcnow()
        with self.engine.begin() as conn:
            study_id = self._study_id(conn, facts)
            series_id = self._series_id(conn, facts, study_id, association_id, calling_ae)
            conn.execute(
                _INSERT_INSTANCE,
                {
                    "series_id": series_id,
                    "association_id": association_id,
                    "sop_instance_uid": facts.sop_instance_uid,
                    "version": version,
                    "sop_class_uid": facts.sop_class_uid,
                    "transfer_syntax_uid": facts.transfer_syntax_uid,
                    "sha256": sha256,
                    "size_bytes": size_bytes,
                    "spool_path": placement.relative,
                    "received_at": now,
                },
            )
            if version > 1:
                conn.execute(
                    _INSERT_EVENT,
                    {
                        **event,
                        "at": now,
                        "kind": StoreEventKind.NEW_VERSION,
                        "reason": f"differs from the stored copy; kept as version {version}",
                    },
                )
            conn.execute(
                _COUNT_INTO_SERIES, {"series_pk": series_id, "now": now, "assoc": association_id}
            )
        # Cached only once committed: a rolled-back insert must not leave a dangling id.
        self._study_ids[facts.study_instance_uid] = study_id
        self._series_ids[facts.series_instance_uid] = series_id
        return StoreOutcome(version=version, duplicate=False)

    def _insert_ignoring_conflict(
        self, conn: Connection, table: type[Base], values: dict[str, object]
    ) -> None:
        insert_fn = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(insert_fn(table).values(**values).on_conflict_do_nothing())

    def _study_id(self, conn: Connection, facts: InstanceFacts) -> int:
        uid = facts.study_instance_uid
        if uid in self._study_ids:
            return self._study_ids[uid]
        self._insert_ignoring_conflict(
            conn,
            Study,
            {
                "study_instance_uid": uid,
                "accession_number": facts.accession_number,
                "study_date": facts.study_date,
                "first_received_at": utcnow(),
            },
        )
        study_id: int = conn.scalars(select(Study.id).where(Study.study_instance_uid == uid)).one()
        return study_id

    def _series_id(
        self,
        conn: Connection,
        facts: InstanceFacts,
        study_id: int,
        association_id: int,
        calling_ae: str,
    ) -> int:
        uid = facts.series_instance_uid
        if uid in self._series_ids:
            return self._series_ids[uid]
        now = utcnow()
        self._insert_ignoring_conflict(
            conn,
            Series,
            {
                "study_id": study_id,
                "series_instance_uid": uid,
                "modality": facts.modality,
                "series_description": facts.series_description,
                "image_type": facts.image_type,
                "sop_class_uid": facts.sop_class_uid,
                "calling_ae": calling_ae,
                "first_received_at": now,
                "last_received_at": now,
                "last_association_id": association_id,
                "instance_count": 0,
            },
        )
        series_id: int = conn.scalars(
            select(Series.id).where(Series.series_instance_uid == uid)
        ).one()
        return series_id

    # -- completion and jobs ----------------------------------------------------------------

    def complete_series(self, quiet_since: datetime) -> list[CompleteSeries]:
        """Unrouted series quiet since ``quiet_since`` whose associations have all ended."""
        contributing = aliased(Association)
        open_sender = (
            select(Instance.id)
            .join(contributing, contributing.id == Instance.association_id)
            .where(Instance.series_id == Series.id)
            .where(contributing.outcome == AssociationOutcome.IN_PROGRESS)
        )
        last = aliased(Association)
        query = (
            select(Series)
            .join(last, last.id == Series.last_association_id)
            .where(Series.routed_at.is_(None))
            .where(Series.last_received_at <= quiet_since)
            .where(last.outcome != AssociationOutcome.IN_PROGRESS)
            .where(~exists(open_sender))
            .order_by(Series.id)
        )
        with self._sessions() as s:
            return [
                CompleteSeries(
                    series_id=row.id,
                    series_instance_uid=row.series_instance_uid,
                    modality=row.modality,
                    image_type=row.image_type,
                    calling_ae=row.calling_ae,
                    series_description=row.series_description,
                    sop_class_uid=row.sop_class_uid,
                )
                for row in s.scalars(query)
            ]

    def create_job(
        self,
        series_id: int,
        state: JobState,
        *,
        rule_name: str | None,
        reason: str,
        actor: str,
    ) -> int | None:
        """Mark the series routed and give it its one job; None if it already has one."""
        now = utcnow()
        with self._sessions.begin() as s:
            claimed = s.execute(
                update(Series)
                .where(Series.id == series_id)
                .where(Series.routed_at.is_(None))
                .values(routed_at=now)
            )
            if not cast(CursorResult[Any], claimed).rowcount:
                return None
            if s.scalar(select(Job.id).where(Job.series_id == series_id)) is not None:
                return None
            job = Job(
                series_id=series_id,
                state=state,
                rule_name=rule_name,
                reason=reason,
                created_at=now,
                updated_at=now,
            )
            s.add(job)
            s.flush()
            s.add(
                JobStateChange(
                    job_id=job.id,
                    at=now,
                    from_state=None,
                    to_state=state,
                    actor=actor,
                    reason=reason,
                )
            )
            return job.id
