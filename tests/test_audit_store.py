"""The audit store on SQLite and PostgreSQL, migrated from empty by Alembic."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from pacs_node.audit.db import current_revision, make_engine, upgrade
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
    utcnow,
)
from pacs_node.audit.queries import list_rows
from pacs_node.audit.store import AuditStore, CompleteSeries, InstanceFacts, PeerInfo
from pacs_node.receiver.spool import Placement

PEER = PeerInfo(
    calling_ae="GAMMA_CAM", called_ae="PACS_NODE", host="127.0.0.1", port=5000, tls=False
)


def facts(sop: str = "1.2.3.4.1", series: str = "1.2.3.4", study: str = "1.2.3") -> InstanceFacts:
    return InstanceFacts(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.20",
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="NM",
        series_description="WB",
        image_type="ORIGINAL\\PRIMARY\\WHOLE BODY",
        accession_number="ACC1",
        study_date="20261122",
    )


def store(
    audit: AuditStore, f: InstanceFacts, assoc: int, sha: str, placed: list[int]
) -> tuple[int, bool]:
    def place(version: int) -> Placement:
        placed.append(version)
        return Placement(f"{f.sop_instance_uid}.{sha}.dcm", ())

    outcome = audit.store_instance(
        f, association_id=assoc, calling_ae="GAMMA_CAM", sha256=sha, size_bytes=10, place=place
    )
    return outcome.version, outcome.duplicate


def test_migrations_run_from_empty_to_head(engine: Engine, database_url: str) -> None:
    assert current_revision(database_url) == "0003"
    with engine.connect() as conn:
        tables = ("association", "study", "series", "instance", "job", "job_state_change")
        for table in (*tables, "delivery_attempt"):
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 0


def test_association_life_is_recorded(engine: Engine) -> None:
    audit = AuditStore(engine)
    assoc = audit.open_association(PEER, receiver_pid=42)
    audit.end_association(assoc, AssociationOutcome.RELEASED, instances=3, nbytes=300)
    # A second end (e.g. the connection closing after release) does not overwrite the first.
    audit.end_association(assoc, AssociationOutcome.ABORTED, instances=0, nbytes=0, reason="x")
    with audit.session() as s:
        row = s.get(Association, assoc)
        assert row is not None
        assert (row.outcome, row.instances_received, row.bytes_received) == ("released", 3, 300)
        assert row.ended_at is not None and row.reason is None


def test_new_duplicate_and_changed_instances(engine: Engine) -> None:
    audit = AuditStore(engine)
    assoc = audit.open_association(PEER, receiver_pid=1)
    placed: list[int] = []
    assert store(audit, facts(), assoc, "aa" * 32, placed) == (1, False)
    assert store(audit, facts(), assoc, "aa" * 32, placed) == (1, True)
    assert store(audit, facts(), assoc, "bb" * 32, placed) == (2, False)
    assert placed == [1, 2], "a duplicate must not place a file"
    with audit.session() as s:
        rows = s.execute(select(Instance.version, Instance.sha256).order_by(Instance.version)).all()
        assert rows == [(1, "aa" * 32), (2, "bb" * 32)]
        kinds = s.scalars(select(StoreEvent.kind).order_by(StoreEvent.id)).all()
        assert kinds == [StoreEventKind.DUPLICATE, StoreEventKind.NEW_VERSION]
        series = s.scalars(select(Series)).one()
        assert series.instance_count == 2


def test_a_failed_transaction_leaves_no_dangling_cache(engine: Engine) -> None:
    """If placing the file fails, the rolled-back study/series ids must not be reused."""
    audit = AuditStore(engine)
    assoc = audit.open_association(PEER, receiver_pid=1)

    def failing_place(version: int) -> Placement:
        raise OSError("disk gone")

    with pytest.raises(OSError):
        audit.store_instance(
            facts(series="9.9", study="9.8"),
            association_id=assoc,
            calling_ae="C",
            sha256="cc" * 32,
            size_bytes=1,
            place=failing_place,
        )
    assert store(audit, facts(series="9.9", study="9.8"), assoc, "cc" * 32, []) == (1, False)


def test_two_stores_of_one_version_conflict(engine: Engine) -> None:
    """Two receivers racing on one SOP Instance UID: the loser gets IntegrityError."""
    first, second = AuditStore(engine), AuditStore(engine)
    assoc = first.open_association(PEER, receiver_pid=1)
    store(first, facts(), assoc, "aa" * 32, [])
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            Instance.__table__.insert().values(
                series_id=1,
                association_id=assoc,
                sop_instance_uid="1.2.3.4.1",
                version=1,
                sop_class_uid="1",
                transfer_syntax_uid="1",
                sha256="dd" * 32,
                size_bytes=1,
                spool_path="x",
                received_at=utcnow(),
            )
        )
    assert store(second, facts(), assoc, "dd" * 32, []) == (2, False)


def test_completion_waits_for_release_and_quiet(engine: Engine) -> None:
    audit = AuditStore(engine)
    assoc = audit.open_association(PEER, receiver_pid=1)
    store(audit, facts(), assoc, "aa" * 32, [])
    later = utcnow() + timedelta(hours=1)
    assert audit.complete_series(later) == [], "association still open"
    audit.end_association(assoc, AssociationOutcome.RELEASED, instances=1, nbytes=1)
    assert audit.complete_series(utcnow() - timedelta(hours=1)) == [], "not quiet yet"
    [complete] = audit.complete_series(later)
    assert complete.series_instance_uid == "1.2.3.4"
    assert complete.image_type == "ORIGINAL\\PRIMARY\\WHOLE BODY"


def test_an_open_second_sender_holds_completion(engine: Engine) -> None:
    audit = AuditStore(engine)
    first = audit.open_association(PEER, receiver_pid=1)
    second = audit.open_association(PEER, receiver_pid=1)
    store(audit, facts(sop="1.2.3.4.1"), first, "aa" * 32, [])
    store(audit, facts(sop="1.2.3.4.2"), second, "bb" * 32, [])
    audit.end_association(second, AssociationOutcome.RELEASED, instances=1, nbytes=1)
    later = utcnow() + timedelta(hours=1)
    assert audit.complete_series(later) == []
    audit.end_association(first, AssociationOutcome.ABORTED, instances=1, nbytes=1)
    assert len(audit.complete_series(later)) == 1


def one_complete_series(audit: AuditStore) -> CompleteSeries:
    assoc = audit.open_association(PEER, receiver_pid=1)
    store(audit, facts(), assoc, "aa" * 32, [])
    audit.end_association(assoc, AssociationOutcome.RELEASED, instances=1, nbytes=1)
    [series] = audit.complete_series(utcnow() + timedelta(hours=1))
    return series


def test_one_job_per_series_with_its_first_state_logged(engine: Engine) -> None:
    audit = AuditStore(engine)
    series = one_complete_series(audit)
    job = audit.create_job(
        series.series_id, JobState.PENDING, rule_name="r", reason="why", actor="t"
    )
    assert job is not None
    again = audit.create_job(
        series.series_id, JobState.PENDING, rule_name="r", reason="w", actor="t"
    )
    assert again is None
    assert audit.complete_series(utcnow() + timedelta(hours=1)) == []
    with audit.session() as s:
        assert s.scalar(select(func.count(Job.id))) == 1
        change = s.scalars(select(JobStateChange)).one()
        assert (change.from_state, change.to_state, change.actor) == (None, "pending", "t")
        rows = list_rows(s, "jobs")
    assert rows[0]["series_instance_uid"] == "1.2.3.4"
    assert rows[0]["state"] == "pending"


def test_job_state_log_is_append_only(engine: Engine) -> None:
    audit = AuditStore(engine)
    series = one_complete_series(audit)
    audit.create_job(series.series_id, JobState.IGNORED, rule_name=None, reason="r", actor="t")
    for statement in ("UPDATE job_state_change SET actor = 'x'", "DELETE FROM job_state_change"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))


def test_interrupted_associations_are_closed_with_counts(engine: Engine) -> None:
    audit = AuditStore(engine)
    crashed = audit.open_association(PEER, receiver_pid=111)
    alive = audit.open_association(PEER, receiver_pid=222)
    store(audit, facts(), crashed, "aa" * 32, [])
    assert audit.interrupt_open_associations([111]) == 1
    with audit.session() as s:
        row = s.get(Association, crashed)
        assert row is not None
        assert (row.outcome, row.instances_received, row.bytes_received) == ("interrupted", 1, 10)
        other = s.get(Association, alive)
        assert other is not None and other.outcome == "in_progress"
    assert audit.interrupt_open_associations() == 1


def test_other_nodes_associations_are_left_alone(engine: Engine) -> None:
    """Two nodes share one audit DB: a restart of one does not close the other's work."""
    here, there = AuditStore(engine, node_host="node-a"), AuditStore(engine, node_host="node-b")
    theirs = there.open_association(PEER, receiver_pid=1)
    ours = here.open_association(PEER, receiver_pid=1)
    assert here.interrupt_open_associations() == 1
    assert here.interrupt_open_associations([1]) == 0
    with here.session() as s:
        assert s.get(Association, ours).outcome == "interrupted"  # type: ignore[union-attr]
        assert s.get(Association, theirs).outcome == "in_progress"  # type: ignore[union-attr]


def test_query_filters(engine: Engine, tmp_path: Path) -> None:
    audit = AuditStore(engine)
    a = audit.open_association(PEER, receiver_pid=1)
    audit.end_association(a, AssociationOutcome.REJECTED, instances=0, nbytes=0, reason="no")
    b = audit.open_association(PEER, receiver_pid=1)
    store(audit, facts(), b, "aa" * 32, [])
    with audit.session() as s:
        assert [r["id"] for r in list_rows(s, "associations", state="rejected")] == [a]
        assert len(list_rows(s, "associations", since=utcnow() + timedelta(minutes=1))) == 0
        [inst] = list_rows(s, "instances")
    assert inst["sop_instance_uid"] == "1.2.3.4.1"
    assert inst["series_instance_uid"] == "1.2.3.4"
    assert inst["association_id"] == b


def test_sqlite_readers_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    """The C-STORE path reads versions while another receiver holds the write lock."""
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        audit = AuditStore(engine)
        assoc = audit.open_association(PEER, receiver_pid=1)
        with engine.begin() as writer:  # BEGIN IMMEDIATE: holds the write lock
            writer.execute(text("UPDATE association SET reason = 'busy'"))
            started = time.monotonic()
            placed: list[int] = []
            other = AuditStore(make_engine(url, busy_timeout_ms=200))
            with pytest.raises(OperationalError, match="locked"):
                # The read goes through at once; only the insert meets the lock.
                store(other, facts(), assoc, "aa" * 32, placed)
            other.engine.dispose()
            assert placed == [1], "versions were read while the writer held the lock"
            assert time.monotonic() - started < 5
    finally:
        engine.dispose()


def test_migrations_match_the_models(engine: Engine) -> None:
    """Alembic sees nothing to generate: the migration and the typed models agree."""
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
