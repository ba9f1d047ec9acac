"""The supervisor: receivers restarted after a crash, and a node on PostgreSQL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import NodeFactory
from nodeharness import Node, echoscu, storescu, wait_for
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from scans import series_files

from pacs_node.serve import restart_backoff_s

pytestmark = pytest.mark.slow


def receiver_pids(node: Node) -> set[int]:
    assert node.process is not None
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == node.process.pid and b"spawn_main" in cmdline:
            pids.add(int(entry.name))
    return pids


def test_a_killed_receiver_is_restarted_and_its_association_marked_interrupted(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    node.start()
    before = wait_for(lambda: len(p := receiver_pids(node)) == 2 and p, 10)
    ae = AE(ae_title="GAMMA_CAM")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.20", ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    [scan] = series_files(tmp_path / "send", 1)
    assert assoc.send_c_store(dcmread(scan)).Status == 0x0000
    [row] = node.audit("associations")
    assert row["state"] == "in_progress"

    os.kill(row["receiver_pid"], signal.SIGKILL)
    after = wait_for(lambda: len(p := receiver_pids(node)) == 2 and p != before and p, 30)
    assert row["receiver_pid"] not in after
    [row] = wait_for(lambda: node.audit("associations", "--state", "interrupted"), 10)
    assert row["instances"] == 1
    assoc.abort()
    for _ in range(4):  # connections land on either receiver; all of them answer
        assert echoscu(node).returncode == 0
    assert "restarting it" in node.log_text()
    node.stop()
    assert node.process is not None
    assert node.process.returncode == 0, "SIGTERM after a restart must stop the node cleanly"


def test_node_on_postgresql_with_two_receivers(
    node_factory: NodeFactory, postgres_url: str, tmp_path: Path
) -> None:
    node = node_factory({"audit": {"database_url": postgres_url}})
    node.start()
    first = series_files(tmp_path / "a", 3, seed=1)
    second = series_files(tmp_path / "b", 3, seed=2)
    assert storescu(node, *first).returncode == 0
    assert storescu(node, *second).returncode == 0
    assert storescu(node, *first).returncode == 0  # identical resend
    assert len(node.audit("instances")) == 6
    assert len(node.audit("events", "--state", "duplicate")) == 3
    jobs = wait_for(lambda: len(rows := node.audit("jobs")) == 2 and rows, 15)
    assert {j["state"] for j in jobs} == {"pending"}
    assert not (node.data_dir / "audit.sqlite3").exists()


def test_a_receiver_that_keeps_dying_is_restarted_less_and_less_often() -> None:
    delays = [restart_backoff_s(n) for n in range(8)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
