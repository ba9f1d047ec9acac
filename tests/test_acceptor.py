"""The event-driven acceptor (``pacs_node.receiver.acceptor``) and ``ReceivedFile``.

The receiver runs in this process here, so the test can see what the C-STORE handler was
given; dcmtk ``storescu`` is the sender. Timings are the benchmark's business: these tests
check that the fast path is taken, that its digest and head are right, that pynetdicom's
timers still fire, and that associations leave no descriptors behind.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import Any

import pytest
from nodeharness import Node, free_port, storescu, wait_for
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from pacs_node.audit.db import make_engine, upgrade
from pacs_node.audit.models import Instance
from pacs_node.audit.store import AuditStore
from pacs_node.config import Settings, load_settings
from pacs_node.receiver.acceptor import ReceiverSocket
from pacs_node.receiver.handlers import ReceiverHandlers
from pacs_node.receiver.ingest import Ingest, StoreRequest, StoreResult
from pacs_node.receiver.received_file import HEAD_BYTES, ReceivedFile
from pacs_node.receiver.server import ReceiverServer, make_server
from pacs_node.receiver.spool import Spool
from pacs_node.synth import write_synthetic_scans


class RecordingIngest(Ingest):
    """The real Ingest, keeping each request it was handed."""

    requests: list[StoreRequest]

    def store(self, req: StoreRequest) -> StoreResult:
        self.requests.append(req)
        return super().store(req)


@dataclass
class InProcessReceiver:
    settings: Settings
    server: ReceiverServer
    ingest: RecordingIngest
    audit: AuditStore
    peer: Node  #: what nodeharness's storescu needs: the port and AE title

    def spool_file(self, sop_instance_uid: str) -> Path:
        with self.audit.engine.connect() as conn:
            relative = conn.scalars(
                select(Instance.spool_path).where(Instance.sop_instance_uid == sop_instance_uid)
            ).one()
        return self.settings.storage.spool_dir / relative


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[InProcessReceiver]:
    port = free_port()
    settings = load_settings(
        None,
        node={"ae_title": "PACS_NODE", "host": "127.0.0.1", "port": port},
        storage={"data_dir": str(tmp_path / "data"), "min_free_disk_mb": 1},
        audit={"database_url": f"sqlite:///{tmp_path / 'audit.sqlite3'}"},
        timeouts={"network": 1.0},
    )
    upgrade(settings.database_url)
    storage = settings.storage
    spool = Spool(storage.spool_dir, storage.incoming_dir)
    spool.prepare()
    engine = make_engine(settings.database_url)
    audit = AuditStore(engine)
    ingest = RecordingIngest(
        spool=spool,
        audit=audit,
        accepted_sop_classes=frozenset(settings.dicom.accepted_sop_classes),
        min_free_bytes=2**20,
    )
    ingest.requests = []
    handlers = ReceiverHandlers(audit=audit, ingest=ingest, security=settings.security, tls=False)
    server = make_server(settings, handlers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    peer = Node(config=tmp_path, port=port, data_dir=tmp_path, log=tmp_path / "unused.log")
    try:
        yield InProcessReceiver(settings, server, ingest, audit, peer)
    finally:
        server.shutdown()
        engine.dispose()


def test_each_c_store_arrives_hashed_with_its_head(
    receiver: InProcessReceiver, tmp_path: Path
) -> None:
    scans = write_synthetic_scans(tmp_path / "scans", count=3, seed=11)
    result = storescu(receiver.peer, *scans)
    assert result.returncode == 0, result.stderr

    assert len(receiver.ingest.requests) == 3
    for req in receiver.ingest.requests:
        # The digest the DUL thread took is the one of the bytes now in the spool.
        assert req.received is not None
        stored = receiver.spool_file(req.sop_instance_uid).read_bytes()
        assert req.received.sha256 == hashlib.sha256(stored).hexdigest()
        assert req.received.size == len(stored) > HEAD_BYTES
        assert req.received.head == stored[:HEAD_BYTES]


def test_the_network_timeout_still_ends_a_silent_association(
    receiver: InProcessReceiver,
) -> None:
    # dcmtk's tools cannot hold an association open without traffic: a pynetdicom SCU can.
    ae = AE(ae_title="GAMMA_CAM")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.settings.node.port, ae_title="PACS_NODE")
    assert assoc.is_established
    started = time.monotonic()
    # The node's network timeout is 1 s: its DUL must notice the silence and abort.
    wait_for(lambda: assoc.is_aborted, timeout=10)
    assert time.monotonic() - started >= 0.9
    assert not receiver.server.active_associations or wait_for(
        lambda: not receiver.server.active_associations, timeout=5
    )


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_associations_leave_no_descriptors_behind(
    receiver: InProcessReceiver, tmp_path: Path
) -> None:
    scan = write_synthetic_scans(tmp_path / "scans", count=1, seed=3)[0]
    assert storescu(receiver.peer, scan).returncode == 0  # warm: pools and DB connections
    wait_for(lambda: not receiver.server.active_associations, timeout=10)
    before = _open_descriptors()
    for _ in range(15):
        result = storescu(receiver.peer, scan)  # a duplicate each time: acknowledged
        assert result.returncode == 0, result.stderr
    wait_for(lambda: not receiver.server.active_associations, timeout=10)
    # Each association had a socket, an eventfd and a temporary file: all closed again.
    assert _open_descriptors() <= before


def test_received_file_hashes_what_was_written_before_and_after_wrapping(
    tmp_path: Path,
) -> None:
    payload = os.urandom(HEAD_BYTES + 5000)
    with NamedTemporaryFile(dir=tmp_path, delete=False, mode="wb", suffix=".dcm") as raw:
        raw.write(payload[:132])  # what pynetdicom writes before the file is wrapped
        received = ReceivedFile(raw)
        for start in range(132, len(payload), 70000):
            received.write(payload[start : start + 70000])
        received.file.flush()
        digest = received.digest()
        received.close()
    assert Path(received.name).read_bytes() == payload
    assert digest.sha256 == hashlib.sha256(payload).hexdigest()
    assert digest.size == len(payload)
    assert digest.head == payload[:HEAD_BYTES]


class _AnySocketOwner:
    """ReceiverSocket needs an association only for its event queue."""

    class _Dul:
        event_queue: Any = queue.Queue()

    dul = _Dul()


def test_receiver_socket_reads_a_whole_pdu_or_what_came_before_a_close() -> None:
    ours, theirs = socket.socketpair()
    sock = ReceiverSocket(_AnySocketOwner(), client_socket=ours)  # type: ignore[arg-type]
    payload = os.urandom(300_000)

    def send_slowly() -> None:
        for start in range(0, len(payload), 65536):
            theirs.sendall(payload[start : start + 65536])
            time.sleep(0.002)

    sender = threading.Thread(target=send_slowly)
    sender.start()
    assert sock.recv(len(payload)) == payload
    sender.join()

    theirs.sendall(payload[:1000])
    theirs.close()
    assert sock.recv(5000) == payload[:1000]
    ours.close()
