"""Series completion and routing through the running node."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import NodeFactory
from nodeharness import storescu, wait_for
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from scans import series_files, variant

pytestmark = pytest.mark.slow

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"


def jobs_for(node_jobs: list[dict[str, object]], series_uid: str) -> list[dict[str, object]]:
    return [j for j in node_jobs if j["series_instance_uid"] == series_uid]


def test_series_over_two_associations_becomes_one_job_and_a_resend_no_second(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    node.start()
    files = series_files(tmp_path / "series", 4)
    series_uid = dcmread(files[0]).SeriesInstanceUID
    assert storescu(node, *files[:2]).returncode == 0
    assert storescu(node, *files[2:]).returncode == 0

    [job] = wait_for(lambda: jobs_for(node.audit("jobs"), series_uid), 15)
    assert job["state"] == "pending"
    assert job["rule_name"] == "nm-whole-body"
    assert job["instances"] == 4

    assert storescu(node, *files).returncode == 0
    assert len(node.audit("events", "--state", "duplicate")) == 4
    # A later series completing proves a completion pass ran after the resend went quiet.
    control = series_files(tmp_path / "control", 1, seed=2)
    control_uid = dcmread(control[0]).SeriesInstanceUID
    assert storescu(node, *control).returncode == 0
    wait_for(lambda: jobs_for(node.audit("jobs"), control_uid), 15)
    assert len(jobs_for(node.audit("jobs"), series_uid)) == 1


def test_no_job_while_the_sender_is_still_associated(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    """A sender that stays associated past the quiet period holds the series open.

    dcmtk's storescu cannot idle inside an association, so this uses a pynetdicom SCU.
    """
    node = node_factory({"completion": {"quiet_period_s": 0.5, "poll_interval_s": 0.1}})
    node.start()
    [scan] = series_files(tmp_path / "series", 1)
    ae = AE(ae_title="GAMMA_CAM")
    ae.add_requested_context(NM_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(dcmread(scan)).Status == 0x0000
        # Four quiet periods and many completion passes go by with the association open.
        time.sleep(2.0)
        assert node.audit("jobs") == []
    finally:
        assoc.release()
    [job] = wait_for(lambda: node.audit("jobs"), 10)
    [row] = node.audit("associations")
    assert job["created_at"] > row["ended_at"]


def test_a_series_no_rule_wants_is_recorded_as_ignored_with_the_reason(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    node.start()
    [scan] = series_files(tmp_path / "series", 1)
    static = variant(scan, tmp_path / "static.dcm", ImageType=["ORIGINAL", "PRIMARY", "STATIC"])
    assert storescu(node, static).returncode == 0
    [job] = wait_for(lambda: node.audit("jobs"), 15)
    assert job["state"] == "ignored"
    assert job["rule_name"] is None
    assert "no routing rule matched" in job["reason"]
    assert "lacks ['WHOLE BODY']" in job["reason"]
    assert node.audit("jobs", "--state", "pending") == []


def test_routing_rules_from_the_config_decide(node_factory: NodeFactory, tmp_path: Path) -> None:
    rules = [
        {
            "name": "skip-localizers",
            "action": "ignore",
            "match": {"series_description_regex": "(?i)localizer"},
        },
        {"name": "all-nm", "match": {"modality": ["NM"], "calling_ae": ["GAMMA_CAM"]}},
    ]
    node = node_factory(rules=rules)
    node.start()
    localizer = series_files(tmp_path / "loc", 1, series_description="Localizer")
    wb = series_files(tmp_path / "wb", 1, seed=3)
    assert storescu(node, *localizer).returncode == 0
    assert storescu(node, *wb).returncode == 0
    jobs = wait_for(lambda: len(rows := node.audit("jobs")) == 2 and rows, 15)
    by_rule = {j["rule_name"]: j for j in jobs}
    assert by_rule["skip-localizers"]["state"] == "ignored"
    assert by_rule["all-nm"]["state"] == "pending"
