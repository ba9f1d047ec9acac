"""The receiver against real peers: dcmtk echoscu/storescu as the gamma camera."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import NodeFactory
from nodeharness import echoscu, storescu
from pydicom import dcmread
from pydicom.uid import generate_uid
from scans import dataset_bytes, series_files, variant

pytestmark = pytest.mark.slow


def test_echo_and_store_land_byte_for_byte_in_spool_and_audit(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    node.start()
    assert echoscu(node).returncode == 0
    files = series_files(tmp_path / "send", 3)
    result = storescu(node, *files)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == 3

    instances = node.audit("instances")
    assert len(instances) == 3
    by_uid = {row["sop_instance_uid"]: row for row in instances}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        row = by_uid[ds.SOPInstanceUID]
        stored = node.data_dir / "spool" / row["spool_path"]
        assert stored.parts[-3:-1] == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
        assert stored.name.startswith(ds.SOPInstanceUID)
        assert dataset_bytes(stored) == dataset_bytes(path)
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row["sha256"]
        assert row["series_instance_uid"] == ds.SeriesInstanceUID
        assert row["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
    assert not any((node.data_dir / "incoming").iterdir()), "temporary files left behind"

    assocs = node.audit("associations")
    echo, store = assocs[0], assocs[1]
    assert (echo["calling_ae"], echo["state"], echo["instances"]) == ("GAMMA_CAM", "released", 0)
    assert store["state"] == "released"
    assert store["instances"] == 3
    assert store["bytes"] == sum(r["size_bytes"] for r in instances)
    assert store["called_ae"] == "PACS_NODE"
    assert store["peer_host"] == "127.0.0.1"
    assert store["tls"] is False
    assert store["ended_at"] >= store["started_at"]


def test_resend_identical_is_acknowledged_once_and_changed_is_a_new_version(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    node.start()
    [original] = series_files(tmp_path / "send", 1)
    assert storescu(node, original).returncode == 0
    again = storescu(node, original)
    assert again.returncode == 0
    assert "Received Store Response (Success)" in again.stderr
    assert len(node.audit("instances")) == 1
    [duplicate] = node.audit("events", "--state", "duplicate")
    assert duplicate["status"] == "0x0000"

    changed = variant(original, tmp_path / "changed.dcm", SeriesDescription="edited on console")
    assert storescu(node, changed).returncode == 0
    rows = node.audit("instances")
    assert [r["version"] for r in rows] == [1, 2]
    assert rows[0]["sha256"] != rows[1]["sha256"]
    assert all((node.data_dir / "spool" / r["spool_path"]).exists() for r in rows)
    [flag] = node.audit("events", "--state", "new_version")
    assert "version 2" in flag["reason"]


def refused(node_output: str, status: str) -> bool:
    return status in node_output


def test_refusals_give_the_right_status_an_audit_row_and_the_node_keeps_serving(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory(
        {"dicom": {"accepted_sop_classes": ["1.2.840.10008.5.1.4.1.1.20"]}},
    )
    node.start()
    [good] = series_files(tmp_path / "send", 1)

    # A SOP class the configuration does not allow: 0x0122.
    sc = variant(good, tmp_path / "sc.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    result = storescu(node, sc)
    assert "Refused: SOPClassNotSupported" in result.stderr, result.stderr
    # A data set without its Series Instance UID: 0xA900.
    no_series = variant(
        good, tmp_path / "no-series.dcm", SeriesInstanceUID=None, SOPInstanceUID=generate_uid()
    )
    result = storescu(node, no_series)
    assert "0xa900" in result.stderr.lower() or "DataSetDoesNotMatchSOPClass" in result.stderr

    events = node.audit("events", "--state", "rejected")
    assert [e["status"] for e in events] == ["0x0122", "0xA900"]
    assert "is not accepted" in events[0]["reason"]
    assert "lacks SeriesInstanceUID" in events[1]["reason"]
    assert node.audit("instances") == []

    assert echoscu(node).returncode == 0
    assert storescu(node, good).returncode == 0
    assert len(node.audit("instances")) == 1

    # Log lines name the association's audit row and never the patient.
    refusals = [line for line in node.log_text().splitlines() if "refused C-STORE" in line]
    assert len(refusals) == 2
    assert all(
        f"assoc={e['association_id']}" in line for e, line in zip(events, refusals, strict=True)
    )
    name = str(dcmread(good).PatientName)
    assert name and name not in node.log_text()


def test_disk_below_the_floor_is_refused_with_out_of_resources(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    node = node_factory({"storage": {"min_free_disk_mb": free_mb + 10_000}})
    node.start()
    [scan] = series_files(tmp_path / "send", 1)
    result = storescu(node, scan)
    assert "Refused: OutOfResources" in result.stderr, result.stderr
    [event] = node.audit("events", "--state", "rejected")
    assert event["status"] == "0xA700"
    assert "below the floor" in event["reason"]
    assert node.audit("instances") == []
    assert not list((node.data_dir / "spool").rglob("*.dcm"))
    assert echoscu(node).returncode == 0


def test_unknown_calling_ae_and_address_are_rejected_and_audited(
    node_factory: NodeFactory,
) -> None:
    node = node_factory({"security": {"allowed_calling_ae_titles": ["GAMMA_CAM"]}})
    node.start()
    result = echoscu(node, calling_ae="INTRUDER")
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr
    assert "Calling AE Title Not Recognized" in result.stderr
    [row] = node.audit("associations", "--state", "rejected")
    assert row["calling_ae"] == "INTRUDER"
    assert "not in the allowed list" in row["reason"]
    assert echoscu(node).returncode == 0

    walled = node_factory({"security": {"allowed_networks": ["10.99.0.0/16"]}}, name="walled")
    walled.start()
    result = echoscu(walled)
    assert "Association Rejected" in result.stderr
    [row] = walled.audit("associations", "--state", "rejected")
    assert "127.0.0.1 is not in an allowed network" in row["reason"]


def test_wrong_called_ae_title_is_rejected(node_factory: NodeFactory) -> None:
    node = node_factory()
    node.start()
    node.ae_title = "SOMEONE_ELSE"
    result = echoscu(node)
    assert "Called AE Title Not Recognized" in result.stderr
    [row] = node.audit("associations")
    assert row["state"] == "rejected"
    assert "called AE title not recognised" in row["reason"]
