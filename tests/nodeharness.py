"""Helpers for tests that run the real node and real DICOM peers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACS_NODE = [sys.executable, "-m", "pacs_node.cli"]
#: dcmtk peers stall ~40 ms per message on loopback without it.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(
    path: Path, sections: dict[str, dict[str, Any]], rules: list[dict[str, Any]]
) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    for rule in rules:
        lines.append("[[routing.rules]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in rule.items() if k != "match"]
        lines.append("[routing.rules.match]")
        lines += [f"{k} = {toml_value(v)}" for k, v in rule.get("match", {}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Node:
    """A running ``pacs-node serve`` subprocess."""

    config: Path
    port: int
    data_dir: Path
    log: Path
    ae_title: str = "PACS_NODE"
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 60.0) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [*PACS_NODE, "serve", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **self.extra_env},
        )
        log.close()
        wait_for(self._ready, timeout)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"node exited with {self.process.returncode}:\n{self.log_text()}")
        return self.log_text().count("pacs-node listening on") > self._starts_seen

    _starts_seen: int = 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"node ignored SIGTERM:\n{self.log_text()[-2000:]}") from None
        self._starts_seen = self.log_text().count("pacs-node listening on")

    def kill(self) -> None:
        """SIGKILL the whole node (supervisor and receivers), as a power cut would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._starts_seen = self.log_text().count("pacs-node listening on")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*PACS_NODE, *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pacs-node {' '.join(args)} failed: {result.stderr}")
        return result

    def audit(self, view: str, *extra: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.cli("audit", view, "--json", *extra).stdout)
        return rows


def storescu_command(
    node: Node, *files: Path, calling_ae: str = "GAMMA_CAM", extra: tuple[str, ...] = ()
) -> list[str]:
    return [
        "storescu", "-v", "-aet", calling_ae, "-aec", node.ae_title, *extra,
        "127.0.0.1", str(node.port), *map(str, files),
    ]  # fmt: skip


def storescu(
    node: Node,
    *files: Path,
    calling_ae: str = "GAMMA_CAM",
    extra: tuple[str, ...] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu as the gamma camera; returns its result (stderr has -v output)."""
    return subprocess.run(
        storescu_command(node, *files, calling_ae=calling_ae, extra=extra),
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=timeout,
    )


def echoscu(node: Node, calling_ae: str = "GAMMA_CAM") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-v", "-aet", calling_ae, "-aec", node.ae_title, "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
    )


@contextmanager
def running(node: Node) -> Iterator[Node]:
    node.start()
    try:
        yield node
    finally:
        node.stop()
