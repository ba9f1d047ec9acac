"""Storage Commitment (PS3.4 Annex J): the request, the report, and their audit rows.

The request goes to a real Orthanc. The reports that Orthanc will not produce on demand (a
failed instance, a transaction nobody asked for, a malformed report) come from a pynetdicom
peer acting as a PACS: no Debian package offers a Storage Commitment SCP that can be made to
fail. The end-to-end path with Orthanc's own report is in test_pipeline.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nodeharness import Node, echoscu, running, storescu, wait_for
from orthanc import AE_TITLE, HOST, running_orthanc
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from sqlalchemy import Engine, select
from test_job_store import new_job

from pacs_node.audit.commitment_store import CommitmentStore
from pacs_node.audit.db import make_engine, session_factory
from pacs_node.audit.models import CommitmentState, StorageCommitment, utcnow
from pacs_node.config import load_settings
from pacs_node.sender import Destination, store_files
from pacs_node.sender.commitment import (
    COMMITMENT_INSTANCE_UID,
    CommitmentReport,
    FailedInstance,
    commitment_request,
    describe_failure_reason,
    parse_commitment_report,
)
from pacs_node.sender.scu import CommitmentAsk

C = CommitmentState
NM = "1.2.840.10008.5.1.4.1.1.20"
NodeFactory = Callable[..., Node]


def report_info(uid: str, committed: list[str], failed: list[tuple[str, int]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = uid
    if committed:
        ds.ReferencedSOPSequence = [_ref(u) for u in committed]
    if failed:
        items = []
        for sop_uid, code in failed:
            item = _ref(sop_uid)
            item.FailureReason = code
            items.append(item)
        ds.FailedSOPSequence = items
    return ds


def _ref(sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = NM
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


# -- the messages ---------------------------------------------------------------------------


def test_the_request_names_the_transaction_and_every_instance() -> None:
    ds = commitment_request("1.2.3", [(NM, "1.2.3.4"), (NM, "1.2.3.5")])
    assert ds.TransactionUID == "1.2.3"
    assert [item.ReferencedSOPInstanceUID for item in ds.ReferencedSOPSequence] == [
        "1.2.3.4",
        "1.2.3.5",
    ]
    assert {item.ReferencedSOPClassUID for item in ds.ReferencedSOPSequence} == {NM}


def test_reports_are_read_with_their_failure_reasons() -> None:
    good = parse_commitment_report(1, report_info("1.9", ["1.9.1", "1.9.2"], []))
    assert good.all_committed and good.committed == ("1.9.1", "1.9.2") and not good.failed
    mixed = parse_commitment_report(2, report_info("1.9", ["1.9.1"], [("1.9.2", 0x0112)]))
    assert not mixed.all_committed
    assert mixed.failed == (FailedInstance("1.9.2", "0x0112 no such object instance"),)
    assert describe_failure_reason(0x0213) == "0x0213 resource limitation"
    assert describe_failure_reason(0x9999) == "0x9999 unknown failure reason"
    with pytest.raises(ValueError, match="event type 3"):
        parse_commitment_report(3, report_info("1.9", ["1.9.1"], []))
    with pytest.raises(ValueError, match="no Transaction UID"):
        parse_commitment_report(1, Dataset())


# -- the audit rows -------------------------------------------------------------------------


def _row(engine: Engine, uid: str) -> StorageCommitment:
    with session_factory(engine)() as s:
        return s.scalars(
            select(StorageCommitment).where(StorageCommitment.transaction_uid == uid)
        ).one()


def test_a_report_settles_its_request_even_when_it_beats_the_n_action_answer(
    engine: Engine,
) -> None:
    _, _, job = new_job(engine)
    store = CommitmentStore(engine)
    fast, slow = str(generate_uid()), str(generate_uid())
    for uid in (fast, slow):
        store.open(job, destination="pacs", transaction_uid=uid, instances=2)
    assert _row(engine, fast).state == C.REQUESTING
    # The PACS reported before the sender noted its N-ACTION answer: the result stays.
    report = CommitmentReport(fast, 1, ("a", "b"), ())
    assert store.record_report(report, reported_by="PACS@10.0.0.9") == job
    store.answered(fast, accepted=True, reason="requested")
    row = _row(engine, fast)
    assert (row.state, row.committed, row.failed, row.reported_by) == (
        C.COMMITTED,
        2,
        0,
        "PACS@10.0.0.9",
    )
    store.answered(slow, accepted=True, reason="requested")
    failed = CommitmentReport(slow, 2, ("a",), (FailedInstance("b", "0x0110 processing failure"),))
    store.record_report(failed, reported_by="PACS@10.0.0.9")
    row = _row(engine, slow)
    assert (row.state, row.failed, row.failures) == (C.FAILED, 1, "b 0x0110 processing failure")
    assert "1 of 2 instance(s) not committed" in (row.reason or "")
    assert store.record_report(CommitmentReport("9.9.9", 1, (), ()), reported_by="x") is None


def test_requests_without_a_report_in_time_become_unanswered(engine: Engine) -> None:
    _, _, job = new_job(engine)
    store = CommitmentStore(engine)
    waiting, done = str(generate_uid()), str(generate_uid())
    for uid in (waiting, done):
        store.open(job, destination="pacs", transaction_uid=uid, instances=1)
        store.answered(uid, accepted=True, reason="requested")
    store.record_report(CommitmentReport(done, 1, ("a",), ()), reported_by="P@h")
    assert store.expire(utcnow() - timedelta(hours=1)) == 0  # both are recent
    assert store.expire(utcnow() + timedelta(seconds=1)) == 1
    assert _row(engine, waiting).state == C.UNANSWERED
    assert _row(engine, done).state == C.COMMITTED


# -- the request, against Orthanc -----------------------------------------------------------


@pytest.mark.slow
def test_a_pacs_that_does_not_know_the_node_refuses_the_request_after_storing(
    tmp_path: Path, derived_files: list[Path]
) -> None:
    recorded: list[int] = []
    ask = CommitmentAsk(
        str(generate_uid()), before_request=recorded.append, on_report=lambda e: (0, None)
    )
    with running_orthanc(tmp_path / "pacs") as pacs:  # no DicomModalities entry for us
        report = store_files(
            Destination("pacs", AE_TITLE, HOST, pacs.dicom_port, storage_commitment=True),
            derived_files,
            calling_ae="PACS_NODE",
            commitment=ask,
        )
        log = pacs.log()
    assert report.delivered
    assert recorded == [len(derived_files)]
    assert report.commitment is not None and not report.commitment.accepted
    assert "no N-ACTION response" in report.commitment.reason
    assert "not listed" in log and "DicomModalities" in log


@pytest.mark.slow
def test_no_request_follows_a_delivery_that_failed(
    tmp_path: Path, derived_files: list[Path]
) -> None:
    recorded: list[int] = []
    ask = CommitmentAsk(str(generate_uid()), recorded.append, lambda e: (0, None))
    refuse = "function ReceivedInstanceFilter(dicom, origin, info)\n  error('full')\nend\n"
    with running_orthanc(tmp_path / "pacs", lua=refuse) as pacs:
        report = store_files(
            Destination("pacs", AE_TITLE, HOST, pacs.dicom_port, storage_commitment=True),
            derived_files,
            calling_ae="PACS_NODE",
            commitment=ask,
        )
    assert not report.delivered and report.commitment is None and recorded == []


# -- reports arriving at the receiver -------------------------------------------------------


def _send_report(node: Node, calling_ae: str, event_type: int, info: Dataset) -> Any:
    """A PACS (pynetdicom) reporting on a new association, as the SOP class's SCP."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title, ext_neg=[role])
    if not assoc.is_established:
        return None
    try:
        status, _ = assoc.send_n_event_report(
            info, event_type, StorageCommitmentPushModel, COMMITMENT_INSTANCE_UID
        )
    finally:
        assoc.release()
    return int(status.Status)


@pytest.mark.slow
def test_the_receiver_records_reports_and_refuses_those_it_cannot_place(
    node_factory: NodeFactory, rapid_scan: Path
) -> None:
    node = node_factory(
        {
            "security": {"allowed_calling_ae_titles": ["GAMMA_CAM"]},
            "delivery": {
                "destinations": [
                    {
                        "name": "pacs",
                        "ae_title": "ARCHIVE",
                        "host": "127.0.0.1",
                        "port": 104,
                        "storage_commitment": True,
                    }
                ]
            },
        }
    )
    with running(node):
        assert storescu(node, rapid_scan).returncode == 0
        [job] = wait_for(lambda: node.audit("jobs"), 60)
        engine = make_engine(load_settings(node.config).database_url)
        store = CommitmentStore(engine)
        uid = str(generate_uid())
        store.open(job["id"], destination="pacs", transaction_uid=uid, instances=2)
        store.answered(uid, accepted=True, reason="requested")
        info = report_info(uid, ["1.2.3.1"], [("1.2.3.2", 0x0112)])
        # A stranger may not associate; the PACS asked for commitment may, unlisted.
        assert _send_report(node, "STRANGER", 2, info) is None
        assert _send_report(node, "ARCHIVE", 2, info) == 0x0000
        unknown = report_info(str(generate_uid()), ["1.2.3.1"], [])
        assert _send_report(node, "ARCHIVE", 1, unknown) == 0x0115
        assert _send_report(node, "ARCHIVE", 7, info) == 0x0113
        [row] = node.audit("commitments")
        assert echoscu(node).returncode == 0  # still serving
        associations = node.audit("associations")
        engine.dispose()
    assert row["state"] == "failed" and row["job_id"] == job["id"]
    assert (row["committed"], row["failed"]) == (1, 1)
    assert row["failures"] == ["1.2.3.2 0x0112 no such object instance"]
    assert row["reported_by"].startswith("ARCHIVE@127.0.0.1")
    by_ae = {a["calling_ae"]: a for a in associations if a["calling_ae"] != "GAMMA_CAM"}
    assert by_ae["STRANGER"]["state"] == "rejected"
    reasons = [a["reason"] or "" for a in associations if a["calling_ae"] == "ARCHIVE"]
    assert any(f"job {job['id']}: 1 instance(s) not committed" in r for r in reasons), reasons
    assert any("unknown transaction" in r for r in reasons), reasons
    assert any("event type 7" in r for r in reasons), reasons
