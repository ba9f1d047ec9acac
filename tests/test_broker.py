"""The embedded broker (a real redis-server) and the watch that notices a restarted one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import redis
from nodeharness import PACS_NODE, free_port, wait_for

from pacs_node.pipeline.broker import BrokerWatch, EmbeddedBroker


def test_the_embedded_broker_starts_from_a_relative_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the README's default: ./data
    broker = EmbeddedBroker(Path("data"))
    try:
        url = broker.start()
        assert url.startswith("redis+socket:///")
        assert redis.Redis(unix_socket_path=str(broker.socket)).ping()
        assert (tmp_path / "data" / "broker" / "redis.log").is_file()
    finally:
        broker.stop()
    assert not broker.running()


def test_the_watch_sees_a_restart_once_and_survives_an_outage(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path)
    watch = BrokerWatch(broker.start())
    try:
        assert watch.restarted() is False  # first contact: learns the run_id
        assert watch.restarted() is False
        broker.stop()
        assert watch.restarted() is False  # down: not a restart (yet)
        broker.start()
        assert watch.restarted() is True
        assert watch.restarted() is False
    finally:
        broker.stop()


@pytest.mark.slow
def test_the_readme_run_command_starts_the_whole_node_in_an_empty_directory(
    tmp_path: Path,
) -> None:
    """``pacs-node serve`` with no config: data under ./data, embedded broker, workers."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*PACS_NODE, "serve", "--port", str(port)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def workers_ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}:\n{log.read_text()}")
            text = log.read_text(errors="replace")
            queues = ("enhance", "dispatch")
            return all(re.search(rf"pacs-node-{q}@\S+ ready\.", text) for q in queues)

        wait_for(workers_ready, 120, interval=0.2)
        assert (tmp_path / "data" / "audit.sqlite3").is_file()
        assert (tmp_path / "data" / "broker" / "redis.sock").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=90)
    assert "cannot start" not in log.read_text(errors="replace")
