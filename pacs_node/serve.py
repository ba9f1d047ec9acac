"""``pacs-node serve``: the supervisor.

It migrates the audit DB, recovers from an earlier crash, starts the receiver processes
(all serving one listening socket it opens), restarts any that die, runs series completion,
and runs the enhancement pipeline's node side (:mod:`pacs_node.pipeline.runner`: broker,
local workers, queueing and reconciling jobs).
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType

from pacs_node.audit.commitment_store import CommitmentStore
from pacs_node.audit.db import make_engine, upgrade
from pacs_node.audit.job_store import JobStore
from pacs_node.audit.store import AuditStore
from pacs_node.config import Settings
from pacs_node.pipeline.broker import BrokerError
from pacs_node.pipeline.runner import PipelineRunner
from pacs_node.receiver.process import run_receiver
from pacs_node.receiver.server import make_ssl_context
from pacs_node.receiver.spool import Spool
from pacs_node.routing.completion import complete_and_route

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 60.0
_MAX_BACKOFF_S = 60.0
_STABLE_S = 60.0


class StartupError(Exception):
    """The node cannot start; the message says why."""


def restart_backoff_s(restarts_in_a_row: int) -> float:
    """How long a receiver that keeps dying waits before its next restart: 1, 2, 4 ... 60 s."""
    return min(_MAX_BACKOFF_S, 2.0**restarts_in_a_row)


def receiver_count(settings: Settings) -> int:
    return settings.node.receiver_processes or os.cpu_count() or 1


def open_listening_socket(host: str, port: int) -> socket.socket:
    """Bind and listen once, here, so every receiver process accepts on the same socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listening = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use") from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # Non-blocking: a receiver that loses the race for a connection must not sit in accept().
    listening.setblocking(False)
    return listening


class Supervisor:
    """Owns the receiver processes and the completion loop."""

    def __init__(
        self, settings: Settings, *, log_level: str = "INFO", config_path: Path | None = None
    ) -> None:
        self.settings = settings
        self.log_level = log_level
        self.config_path = config_path
        self.pipeline: PipelineRunner | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = False
        self._shutdown = threading.Event()
        self._receivers: list[tuple[SpawnProcess, Connection]] = []
        self._listening: socket.socket | None = None
        # Per receiver slot: restarts in a row, and when the next one may happen.
        self._restarts: dict[int, tuple[int, float]] = {}
        self.audit: AuditStore | None = None

    def prepare(self) -> None:
        storage = self.settings.storage
        spool = Spool(storage.spool_dir, storage.incoming_dir)
        try:
            spool.prepare()
        except OSError as exc:
            raise StartupError(f"data directory {storage.data_dir}: {exc}") from None
        try:
            make_ssl_context(self.settings)
        except (ssl.SSLError, OSError) as exc:
            raise StartupError(f"TLS certificate or key: {exc}") from None
        self._listening = open_listening_socket(self.settings.node.host, self.settings.node.port)
        try:
            upgrade(self.settings.database_url)
        except Exception as exc:  # Alembic/driver errors vary; report them, do not trace.
            raise StartupError(f"audit database: {type(exc).__name__}: {exc}") from None
        self.audit = AuditStore(make_engine(self.settings.database_url))
        self.pipeline = PipelineRunner(
            self.settings,
            JobStore(self.audit.engine),
            commitments=CommitmentStore(self.audit.engine),
            config_path=self.config_path,
        )
        interrupted = self.audit.interrupt_open_associations()
        removed = spool.clear_incoming()
        if interrupted or removed:
            logger.warning(
                "recovered from an unclean stop: %d open associations marked interrupted, "
                "%d unacknowledged temporary files removed",
                interrupted,
                removed,
            )

    def _start_receiver(self) -> tuple[SpawnProcess, Connection]:
        ready, child_end = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=run_receiver,
            args=(self.settings, self._listening, child_end, self.log_level, os.getpid()),
            name="pacs-node-receiver",
        )
        process.start()
        child_end.close()
        return process, ready

    def start(self) -> None:
        self._receivers = [self._start_receiver() for _ in range(receiver_count(self.settings))]
        for process, ready in self._receivers:
            try:
                started = ready.poll(_READY_TIMEOUT_S) and ready.recv() == process.pid
            except EOFError:  # the receiver died before it was ready
                started = False
            if not started:
                self.stop()
                raise StartupError("a receiver process failed to start; see the log above")
        assert self.pipeline is not None
        try:
            self.pipeline.start()
        except BrokerError as exc:
            self.stop()
            raise StartupError(f"enhancement queue: {exc}") from None
        node = self.settings.node
        print(
            f"pacs-node listening on {node.host}:{node.port} as {node.ae_title!r} with "
            f"{len(self._receivers)} receiver processes; audit DB "
            f"{self.settings.database_url.split('@')[-1]}",
            flush=True,
        )

    def _replace_dead_receivers(self) -> None:
        assert self.audit is not None
        now = time.monotonic()
        for i, (process, _ready) in enumerate(self._receivers):
            count, not_before = self._restarts.get(i, (0, 0.0))
            if process.is_alive():
                if count and now > not_before + _STABLE_S:
                    del self._restarts[i]  # it has run long enough: forget its crashes
                continue
            if self._stopping or now < not_before:
                continue
            logger.error("receiver %s exited with %s; restarting it", process.pid, process.exitcode)
            if process.pid is not None:
                self.audit.interrupt_open_associations([process.pid])
            self._receivers[i] = self._start_receiver()
            self._restarts[i] = (count + 1, now + restart_backoff_s(count))

    def run(self) -> None:
        """Run until SIGTERM or SIGINT."""
        assert self.audit is not None
        completion = self.settings.completion
        rules = self.settings.routing.rules

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("signal %d: stopping", signum)
            self._shutdown.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        while not self._shutdown.wait(completion.poll_interval_s):
            self._replace_dead_receivers()
            try:
                routed = complete_and_route(
                    self.audit,
                    rules,
                    quiet_period_s=completion.quiet_period_s,
                    now=datetime.now(UTC),
                )
            except Exception:
                # A database outage must not stop the node; completion retries next pass.
                logger.exception("series completion pass failed")
                routed = []
            self._pipeline_pass([r.job_id for r in routed if r.decision.enhance])
        self.stop()

    def _pipeline_pass(self, new_jobs: list[int]) -> None:
        assert self.pipeline is not None
        try:
            for job_id in new_jobs:
                self.pipeline.job_created(job_id)
            self.pipeline.tick()
        except Exception:
            # A broker or database outage must not stop the node: jobs stay in the audit DB
            # and the reconciler hands them on once both answer again.
            logger.exception("pipeline pass failed")

    def stop(self) -> None:
        self._stopping = True
        if self.pipeline is not None:
            self.pipeline.stop()
        for process, _ready in self._receivers:
            if process.is_alive():
                process.terminate()  # SIGTERM: stop accepting, finish open associations
        for process, _ready in self._receivers:
            process.join(timeout=self.settings.timeouts.dimse + 5)
            if process.is_alive():
                process.kill()
                process.join()
        if self._listening is not None:
            self._listening.close()
        if self.audit is not None:
            self.audit.engine.dispose()


def serve(settings: Settings, *, log_level: str = "INFO", config_path: Path | None = None) -> None:
    supervisor = Supervisor(settings, log_level=log_level, config_path=config_path)
    supervisor.prepare()
    supervisor.start()
    supervisor.run()
