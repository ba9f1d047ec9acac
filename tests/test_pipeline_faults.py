"""Faults: a worker SIGKILLed mid-job, the broker killed mid-run, a node restarted with
pending jobs. Each time the job ends ``sent`` with exactly one derived series in Orthanc."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from nodeharness import Node, running, storescu, wait_for
from orthanc import running_orthanc
from test_pipeline import check_delivered, job_in, pipeline_node

pytestmark = pytest.mark.slow

NodeFactory = Callable[..., Node]


def processes(*words: str) -> list[int]:
    """Pids whose command line holds every word."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if all(word in command for word in words):
            found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # it may have exited by itself
            os.kill(pid, signal.SIGKILL)


def job_states(node: Node) -> list[str]:
    """Job states read straight from the node's SQLite audit DB (WAL: readers never block)."""
    path = node.data_dir / "audit.sqlite3"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        try:
            return [row[0] for row in db.execute("SELECT state FROM job ORDER BY id")]
        except sqlite3.OperationalError:  # not migrated yet
            return []


def test_a_worker_killed_mid_job_leaves_the_job_to_complete_once(
    node_factory: NodeFactory,
    keeping_model: Path,
    rapid_scan: Path,
    tmp_path: Path,
) -> None:
    with running_orthanc(tmp_path / "pacs") as pacs:
        node = pipeline_node(node_factory, keeping_model, pacs.dicom_port)
        node.config.write_text(node.config.read_text().replace("lease_s = 60.0", "lease_s = 4.0"))
        with running(node):
            assert storescu(node, rapid_scan).returncode == 0
            # The first job of a fresh worker loads the model after its claim: seconds in
            # which the job is "enhancing" and the worker can be killed mid-job.
            wait_for(lambda: job_states(node) == ["enhancing"], 120, interval=0.02)
            workers = processes("pacs_node.cli", "worker", "--queues", "enhance")
            assert workers, "no enhance worker found"
            kill_all(workers)
            job = job_in(node, "sent", "failed", timeout=180)
            assert job["state"] == "sent", job
            check_delivered(pacs, rapid_scan, keeping_model, tmp_path)
            assert "local enhance worker exited" in node.log_text()


def test_the_broker_killed_mid_run_loses_nothing(
    node_factory: NodeFactory, keeping_model: Path, rapid_scan: Path, tmp_path: Path
) -> None:
    with running_orthanc(tmp_path / "pacs") as pacs:
        node = pipeline_node(node_factory, keeping_model, pacs.dicom_port)
        with running(node):
            [broker] = wait_for(lambda: processes("redis-server", str(node.data_dir)), 30)
            os.kill(broker, signal.SIGKILL)
            assert storescu(node, rapid_scan).returncode == 0
            job = job_in(node, "sent", "failed", timeout=180)
            assert job["state"] == "sent", job
            check_delivered(pacs, rapid_scan, keeping_model, tmp_path)
            assert "the embedded broker exited; starting it again" in node.log_text()


def test_pending_jobs_of_a_stopped_node_complete_after_its_restart(
    node_factory: NodeFactory, keeping_model: Path, rapid_scan: Path, tmp_path: Path
) -> None:
    with running_orthanc(tmp_path / "pacs") as pacs:
        node = pipeline_node(node_factory, keeping_model, pacs.dicom_port)
        enabled = node.config.read_text()
        node.config.write_text(enabled.replace("enabled = true", "enabled = false"))
        with running(node):
            assert storescu(node, rapid_scan).returncode == 0
            assert job_in(node, "pending", timeout=60)["state"] == "pending"
        node.config.write_text(enabled)
        with running(node):
            job = job_in(node, "sent", "failed", timeout=180)
            assert job["state"] == "sent", job
            check_delivered(pacs, rapid_scan, keeping_model, tmp_path)
