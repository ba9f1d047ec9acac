"""End to end with real peers: storescu → pacs-node → Celery worker on CPU → Orthanc.

The node runs as ``pacs-node serve`` with its own enhance and dispatch workers; Orthanc is
started by the test on loopback ports and checked through its REST API; ``dciodvfy``
validates what Orthanc stored. The models are tiny cascades built in code: one that keeps
the counts (passes the count-fidelity QC) and one with random weights (fails it).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from nodeharness import Node, free_port, running, storescu, wait_for
from orthanc import AE_TITLE, HOST, Orthanc, running_orthanc
from pydicom import dcmread

from enhancer.runtime import Enhancer

pytestmark = pytest.mark.slow

NodeFactory = Callable[..., Node]
REDIS_URL = "redis://127.0.0.1:6379/7"  # a database of the local server the tests own
REFUSE_ALL = "function ReceivedInstanceFilter(dicom, origin, info)\n  error('full')\nend\n"


def pipeline_node(
    node_factory: NodeFactory,
    model: Path,
    pacs_port: int,
    *,
    broker_url: str = "embedded",
    database_url: str = "",
    delivery: dict[str, Any] | None = None,
    commitment: bool = False,
    security: dict[str, Any] | None = None,
) -> Node:
    destination = {
        "name": "orthanc",
        "ae_title": AE_TITLE,
        "host": HOST,
        "port": pacs_port,
        "storage_commitment": commitment,
    }
    return node_factory(
        {
            "security": security or {},
            "pipeline": {
                "enabled": True,
                "broker_url": broker_url,
                "checkpoint": model,
                "profile": "fast",
                "device": "cpu",
                "reconcile_interval_s": 0.5,
                "lease_s": 60.0,
                "queued_grace_s": 60.0,
            },
            "audit": {"database_url": database_url},
            "delivery": {
                "destinations": [destination],
                "initial_backoff_s": 1.0,
                "max_backoff_s": 2.0,
                **(delivery or {}),
            },
        }
    )


def job_in(node: Node, *states: str, timeout: float = 180) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        jobs = node.audit("jobs")
        return jobs[0] if jobs and jobs[0]["state"] in states else None

    try:
        found: dict[str, Any] = wait_for(done, timeout, interval=0.5)
    except AssertionError:
        raise AssertionError(f"jobs: {node.audit('jobs')}\n{node.log_text()[-4000:]}") from None
    return found


def derived_series(pacs: Orthanc, study_uid: str, source_series: str) -> list[dict[str, Any]]:
    return [
        s
        for s in pacs.series_of_study(study_uid)
        if s["MainDicomTags"]["SeriesInstanceUID"] != source_series
    ]


def check_delivered(pacs: Orthanc, scan: Path, model: Path, tmp_path: Path) -> None:
    """One derived series in the source's study, labelled, with the enhancer's pixels."""
    source = dcmread(scan)
    [series] = derived_series(pacs, source.StudyInstanceUID, source.SeriesInstanceUID)
    [instance] = series["Instances"]
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(pacs.get(f"/instances/{instance}/file"))
    ds = dcmread(stored)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "tiny-test" in ds.SeriesDescription
    expected = Enhancer.from_checkpoint(model, device="cpu", profile="fast").enhance(
        source.pixel_array
    )
    np.testing.assert_array_equal(ds.pixel_array, expected)
    checked = subprocess.run(["dciodvfy", str(stored)], capture_output=True, text=True)
    assert "Error" not in checked.stderr, checked.stderr


@pytest.mark.parametrize(
    "backend",
    ["embedded", pytest.param("redis+postgresql", marks=pytest.mark.postgres)],
)
def test_a_rapid_scan_comes_back_to_pacs_enhanced_and_labelled(
    backend: str,
    node_factory: NodeFactory,
    keeping_model: Path,
    rapid_scan: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    broker, database = "embedded", ""
    if backend != "embedded":
        redis.Redis.from_url(REDIS_URL).flushdb()
        broker, database = REDIS_URL, str(request.getfixturevalue("postgres_url"))
    with running_orthanc(tmp_path / "pacs") as pacs:
        node = pipeline_node(
            node_factory, keeping_model, pacs.dicom_port, broker_url=broker, database_url=database
        )
        with running(node):
            assert storescu(node, rapid_scan).returncode == 0
            job = job_in(node, "sent", "failed")
            assert job["state"] == "sent", job
            assert job["model_name"] == "tiny-test" and job["qc_passed"] is True
            assert job["device"] == "cpu" and len(job["model_sha256"]) == 64
            check_delivered(pacs, rapid_scan, keeping_model, tmp_path)
            path = [(t["from_state"], t["state"]) for t in node.audit("transitions")]
            assert path == [
                (None, "pending"),
                ("pending", "queued"),
                ("queued", "enhancing"),
                ("enhancing", "enhanced"),
                ("enhanced", "sending"),
                ("sending", "sent"),
            ]
            enhanced = node.audit("transitions", "--state", "enhanced")[0]
            assert enhanced["model_sha256"] == job["model_sha256"] and enhanced["worker_host"]
            [delivery] = node.audit("deliveries")
            assert delivery["state"] == "delivered" and delivery["instances_failed"] == 0
            assert all(" 0x0000 Success" in line for line in delivery["statuses"])
            # The same scan again: acknowledged, no second job, nothing new in PACS.
            assert storescu(node, rapid_scan).returncode == 0
            assert len(node.audit("jobs")) == 1
            source = dcmread(rapid_scan, stop_before_pixels=True)
            assert len(pacs.series_of_study(source.StudyInstanceUID)) == 1  # derived only
        events = node.audit("events")
    assert any(e["state"] == "duplicate" for e in events), events


def test_a_result_that_fails_qc_is_held_until_an_admin_forces_it(
    node_factory: NodeFactory, random_model: Path, rapid_scan: Path, tmp_path: Path
) -> None:
    with running_orthanc(tmp_path / "pacs") as pacs:
        node = pipeline_node(node_factory, random_model, pacs.dicom_port)
        with running(node):
            assert storescu(node, rapid_scan).returncode == 0
            job = job_in(node, "failed", "sent")
            assert job["state"] == "failed"
            assert "count-fidelity QC failed" in job["reason"], job
            assert pacs.instance_uids() == set()
            done = node.cli("jobs", "force-send", str(job["id"]))
            assert "forced" in done.stdout
            job = job_in(node, "sent")
            assert len(pacs.instance_uids()) == 1


def test_pacs_down_at_first_then_up_gets_the_series_once(
    node_factory: NodeFactory, keeping_model: Path, rapid_scan: Path, tmp_path: Path
) -> None:
    port = free_port()
    node = pipeline_node(node_factory, keeping_model, port)
    with running(node):
        assert storescu(node, rapid_scan).returncode == 0
        # Wait for a failed attempt, then bring PACS up on the port the node tries.
        wait_for(lambda: "retry at" in (node.audit("jobs")[0:1] or [{}])[0].get("reason", ""), 180)
        with running_orthanc(tmp_path / "pacs", dicom_port=port) as pacs:
            job = job_in(node, "sent")
            assert job["state"] == "sent"
            check_delivered(pacs, rapid_scan, keeping_model, tmp_path)


def test_a_pacs_that_refuses_fails_the_job_with_its_status_after_the_retries(
    node_factory: NodeFactory, keeping_model: Path, rapid_scan: Path, tmp_path: Path
) -> None:
    with running_orthanc(tmp_path / "pacs", lua=REFUSE_ALL) as pacs:
        node = pipeline_node(
            node_factory, keeping_model, pacs.dicom_port, delivery={"retry_for_hours": 0.002}
        )
        with running(node):
            assert storescu(node, rapid_scan).returncode == 0
            job = job_in(node, "failed", "sent")
        deliveries = node.audit("deliveries")
    assert job["state"] == "failed"
    assert "gave up after" in job["reason"] and "0xA700" in job["reason"], job
    assert len(deliveries) >= 2 and all(d["state"] == "failed" for d in deliveries)
    assert all("0xA700 Refused: Out of Resources" in d["statuses"][0] for d in deliveries)


def test_storage_commitment_is_asked_for_and_orthancs_report_is_recorded(
    node_factory: NodeFactory, keeping_model: Path, rapid_scan: Path, tmp_path: Path
) -> None:
    pacs_port = free_port()
    node = pipeline_node(
        node_factory,
        keeping_model,
        pacs_port,
        commitment=True,
        # Orthanc is not on the camera list: it may still call back with its report.
        security={"allowed_calling_ae_titles": ["GAMMA_CAM"]},
    )
    known = {"node": (node.ae_title, "127.0.0.1", node.port)}
    with running_orthanc(tmp_path / "pacs", dicom_port=pacs_port, modalities=known) as pacs:
        with running(node):
            assert storescu(node, rapid_scan).returncode == 0
            job = job_in(node, "sent", "failed")
            assert job["state"] == "sent", job
            [row] = wait_for(lambda: [c for c in node.audit("commitments") if c["reported_at"]], 60)
            associations = node.audit("associations")
        stored = pacs.instance_uids()
    assert row["state"] == "committed", row
    assert row["job_id"] == job["id"] and row["destination"] == "orthanc"
    assert (row["instances"], row["committed"], row["failed"]) == (1, 1, 0)
    assert row["reported_by"].startswith(f"{AE_TITLE}@127.0.0.1")
    [report_association] = [a for a in associations if a["calling_ae"] == AE_TITLE]
    assert report_association["state"] == "released"
    assert "1 instance(s) committed" in report_association["reason"]
    assert len(stored) == 1
