"""SIGKILL the whole node in the middle of a send: nothing acknowledged is lost."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
from conftest import NodeFactory
from nodeharness import DCMTK_ENV, storescu, storescu_command, wait_for
from pydicom import dcmread
from scans import dataset_bytes, series_files

pytestmark = pytest.mark.slow

_SENT = re.compile(r"Sending file: (\S+)")
_RESPONSE = re.compile(r"Received Store Response \((\w+)")


def acknowledged_files(storescu_log: str) -> list[Path]:
    """Files whose C-STORE got a Success response, in sending order."""
    acknowledged, current = [], None
    for line in storescu_log.splitlines():
        if sent := _SENT.search(line):
            current = Path(sent.group(1))
        elif (response := _RESPONSE.search(line)) and current is not None:
            if response.group(1) == "Success":
                acknowledged.append(current)
            current = None
    return acknowledged


def test_sigkill_mid_send_loses_nothing_acknowledged(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    node.start()
    files = series_files(tmp_path / "send", 100)
    sender = subprocess.Popen(
        storescu_command(node, *files),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=DCMTK_ENV,
    )
    incoming = node.data_dir / "incoming"
    # Kill once a good part is stored, while the sender is still going.
    wait_for(lambda: len(list((node.data_dir / "spool").rglob("*.dcm"))) >= 30, 60, 0.005)
    node.kill()
    log, _ = sender.communicate(timeout=60)
    acknowledged = acknowledged_files(log)
    assert 20 <= len(acknowledged) < 100, "the kill should land mid-send"

    node.start()
    rows = node.audit("instances")
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    for path in acknowledged:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert uid in by_uid, f"acknowledged instance {uid} is not in the audit DB"
    for row in rows:
        stored = node.data_dir / "spool" / row["spool_path"]
        assert stored.exists(), f"recorded file {stored} is missing"
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row["sha256"]
        assert row["size_bytes"] == stored.stat().st_size
    sent_by_uid = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in files}
    for row in rows:
        stored = node.data_dir / "spool" / row["spool_path"]
        assert dataset_bytes(stored) == dataset_bytes(sent_by_uid[row["sop_instance_uid"]])
    assert not any(incoming.iterdir()), "unacknowledged temporary files survive the restart"
    [assoc] = [a for a in node.audit("associations") if a["calling_ae"] == "GAMMA_CAM"]
    assert assoc["state"] == "interrupted"
    assert assoc["instances"] == len(rows)

    # The camera resends everything: each instance ends up stored exactly once.
    result = storescu(node, *files)
    assert result.returncode == 0, result.stderr
    final = node.audit("instances")
    assert len(final) == 100
    assert len({r["sop_instance_uid"] for r in final}) == 100
    assert len(node.audit("events", "--state", "duplicate")) == len(rows)
