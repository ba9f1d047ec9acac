"""Job transitions on SQLite and PostgreSQL: one claim wins, leases expire, all is logged."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select
from test_audit_store import one_complete_series

from pacs_node.audit.job_store import JobStore, Provenance
from pacs_node.audit.models import DeliveryAttempt, JobState, JobStateChange, utcnow
from pacs_node.audit.store import AuditStore
from pacs_node.jobs import TransitionError

S = JobState
MODEL = Provenance(
    worker_host="gpu-1",
    device="cuda:0",
    model_name="cascade_small",
    model_version="0.1.0",
    model_sha256="ab" * 32,
)


def new_job(engine: Engine) -> tuple[AuditStore, JobStore, int]:
    audit = AuditStore(engine)
    series = one_complete_series(audit)
    job = audit.create_job(series.series_id, S.PENDING, rule_name="r", reason="new", actor="t")
    assert job is not None
    return audit, JobStore(engine), job


def test_the_table_refuses_transitions_it_does_not_allow(engine: Engine) -> None:
    _, jobs, job = new_job(engine)
    with pytest.raises(TransitionError, match="from 'pending' to 'sent'"):
        jobs.move(job, S.SENT, expect=[S.PENDING], actor="t")
    with pytest.raises(ValueError, match="needs an owner and a positive lease"):
        jobs.move(job, S.ENHANCING, expect=[S.QUEUED], actor="t")


def test_only_one_of_many_concurrent_claims_wins(engine: Engine) -> None:
    _, jobs, job = new_job(engine)
    assert jobs.move(job, S.QUEUED, expect=[S.PENDING], actor="dispatcher")
    wins: list[str] = []
    barrier = threading.Barrier(6)

    def claim(owner: str) -> None:
        barrier.wait()
        if jobs.move(job, S.ENHANCING, expect=[S.QUEUED], actor=owner, owner=owner, lease_s=60):
            wins.append(owner)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(wins) == 1
    row = jobs.get(job)
    assert (row.state, row.lease_owner) == (S.ENHANCING, wins[0])


def test_a_live_lease_blocks_another_claimant_and_an_expired_one_is_reconciled(
    engine: Engine,
) -> None:
    _, jobs, job = new_job(engine)
    jobs.move(job, S.QUEUED, expect=[S.PENDING], actor="d")
    start = utcnow()
    assert jobs.move(
        job, S.ENHANCING, expect=[S.QUEUED], actor="w1", owner="w1", lease_s=30, now=start
    )
    assert jobs.renew_lease(job, "w1", 30)
    assert not jobs.renew_lease(job, "w2", 30)
    assert [d.job_id for d in jobs.due(now=start + timedelta(seconds=10))] == []
    # The worker dies: after the lease the reconciler sees the job and puts it back.
    [due] = jobs.due(now=start + timedelta(minutes=5))
    assert (due.job_id, due.state, due.why) == (job, S.ENHANCING, "lease expired")
    assert jobs.move(job, S.QUEUED, expect=[S.ENHANCING], actor="reconciler", reason=due.why)
    assert jobs.get(job).lease_owner is None


def test_transitions_carry_provenance_into_the_append_only_log(engine: Engine) -> None:
    _, jobs, job = new_job(engine)
    jobs.move(job, S.QUEUED, expect=[S.PENDING], actor="d")
    jobs.move(job, S.ENHANCING, expect=[S.QUEUED], actor="w", owner="w", lease_s=60)
    done = jobs.move(
        job,
        S.ENHANCED,
        expect=[S.ENHANCING],
        actor="w",
        provenance=MODEL,
        changes={"qc_passed": True, "output_dir": "/spool/derived/1"},
    )
    assert done
    # A duplicate message for the same job finds it moved on and does nothing.
    assert not jobs.move(job, S.ENHANCING, expect=[S.QUEUED], actor="w2", owner="w2", lease_s=9)
    row = jobs.get(job)
    assert (row.model_sha256, row.device, row.qc_passed) == ("ab" * 32, "cuda:0", True)
    with engine.connect() as conn:
        log = conn.execute(
            select(JobStateChange.from_state, JobStateChange.to_state, JobStateChange.model_name)
            .where(JobStateChange.job_id == job)
            .order_by(JobStateChange.id)
        ).all()
    assert [tuple(r) for r in log] == [
        (None, "pending", None),
        ("pending", "queued", None),
        ("queued", "enhancing", None),
        ("enhancing", "enhanced", "cascade_small"),
    ]


def test_due_finds_unqueued_stale_queued_and_due_deliveries(engine: Engine) -> None:
    _, jobs, job = new_job(engine)
    now = utcnow()
    assert [(d.state, d.why) for d in jobs.due(now=now)] == [(S.PENDING, "not yet queued")]
    jobs.move(job, S.QUEUED, expect=[S.PENDING], actor="d", now=now)
    assert jobs.due(now=now + timedelta(seconds=10), queued_grace_s=60) == []
    [stale] = jobs.due(now=now + timedelta(seconds=120), queued_grace_s=60)
    assert stale.state is S.QUEUED
    jobs.move(job, S.ENHANCING, expect=[S.QUEUED], actor="w", owner="w", lease_s=60, now=now)
    later = now + timedelta(hours=1)
    jobs.move(job, S.ENHANCED, expect=[S.ENHANCING], actor="w", changes={"next_send_at": later})
    assert jobs.due(now=now) == []
    assert [d.why for d in jobs.due(now=later)] == ["delivery due"]


def test_deliveries_keep_every_status(engine: Engine) -> None:
    _, jobs, job = new_job(engine)
    jobs.record_delivery(
        job,
        destination="pacs",
        started_at=utcnow(),
        delivered=False,
        statuses=["1.2.3 0xA700 Refused: Out of Resources", "1.2.4 0x0000 Success"],
        failed=1,
        reason="pacs: 1.2.3: 0xA700 Refused: Out of Resources",
    )
    with engine.connect() as conn:
        row = conn.execute(select(DeliveryAttempt)).one()
    assert (row.instances_sent, row.instances_failed, row.delivered) == (2, 1, False)
    assert "0xA700" in row.statuses and "0x0000" in row.statuses


def test_after_a_broker_restart_published_deliveries_are_due_but_backoffs_wait(
    engine: Engine,
) -> None:
    _, jobs, job = new_job(engine)
    now = utcnow()
    jobs.move(job, S.QUEUED, expect=[S.PENDING], actor="d", now=now)
    jobs.move(job, S.ENHANCING, expect=[S.QUEUED], actor="w", owner="w", lease_s=60, now=now)
    held = now + timedelta(minutes=5)
    jobs.move(job, S.ENHANCED, expect=[S.ENHANCING], actor="w", changes={"next_send_at": held})
    assert jobs.due(now=now) == []
    assert [d.why for d in jobs.due(now=now, ignore_hold_off=True)] == ["delivery due"]
    # A delivery that failed keeps its back-off even then.
    jobs.move(job, S.SENDING, expect=[S.ENHANCED], actor="s", owner="s", lease_s=60)
    jobs.move(
        job,
        S.ENHANCED,
        expect=[S.SENDING],
        actor="s",
        owner="s",
        changes={"next_send_at": held, "send_attempts": 1},
    )
    assert jobs.due(now=now, ignore_hold_off=True) == []
