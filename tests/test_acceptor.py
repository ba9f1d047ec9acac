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
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import Any, cast

import pytest
from nodeharness import Node, echoscu, free_port, storescu, wait_for
from pydicom import dcmread
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import NuclearMedicineImageStorage as NMImageStorage
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from pacs_node.audit.db import make_engine, upgrade
from pacs_node.audit.models import Instance
from pacs_node.audit.store import AuditStore
from pacs_node.config import Settings, load_settings
from pacs_node.receiver.acceptor import (
    IDLE_WAIT_S,
    ReceiverAssociation,
    ReceiverDIMSE,
    ReceiverDUL,
    ReceiverSocket,
    p_data_tf,
    pdv_items,
)
from pacs_node.receiver.fixed_encodings import c_store_rsp_command_set, file_meta_information
from pacs_node.receiver.ingest import Ingest, StoreRequest, StoreResult
from pacs_node.receiver.process import make_handlers
from pacs_node.receiver.received_file import HEAD_BYTES, ReceivedFile
from pacs_node.receiver.server import ReceiverServer, make_server
from pacs_node.receiver.spool import Spool
from pacs_node.synth import write_synthetic_scans


class RecordingIngest(Ingest):
    """The real Ingest, keeping each request it was handed."""

    def __init__(self, **arguments: Any) -> None:
        super().__init__(**arguments)
        self.requests: list[StoreRequest] = []

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
def network_timeout() -> float:
    # Generous: a slow fsync on a loaded machine must not abort a healthy association. The
    # silent-peer test parametrises it down.
    return 30.0


@pytest.fixture
def receiver(tmp_path: Path, network_timeout: float) -> Iterator[InProcessReceiver]:
    port = free_port()
    settings = load_settings(
        None,
        node={"ae_title": "PACS_NODE", "host": "127.0.0.1", "port": port},
        storage={"data_dir": str(tmp_path / "data"), "min_free_disk_mb": 1},
        audit={"database_url": f"sqlite:///{tmp_path / 'audit.sqlite3'}"},
        timeouts={"network": network_timeout},
    )
    upgrade(settings.database_url)
    Spool(settings.storage.spool_dir, settings.storage.incoming_dir).prepare()
    engine = make_engine(settings.database_url)
    handlers = make_handlers(settings, engine, ingest_class=RecordingIngest)
    server = make_server(settings, handlers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    peer = Node(config=tmp_path, port=port, data_dir=tmp_path, log=tmp_path / "unused.log")
    try:
        yield InProcessReceiver(
            settings, server, cast(RecordingIngest, handlers.ingest), handlers.audit, peer
        )
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
        digest = req.received.digest()  # the one Ingest took
        stored = receiver.spool_file(req.sop_instance_uid).read_bytes()
        assert digest.sha256 == hashlib.sha256(stored).hexdigest()
        assert digest.size == len(stored) > HEAD_BYTES
        assert digest.head == stored[:HEAD_BYTES]
        # Its fsync was started by the DUL thread once the last fragment was in, and the
        # handler waited for it before answering.
        assert digest.synced is not None
        assert digest.synced.done() and digest.synced.exception() is None


def _pynetdicom_association(receiver: InProcessReceiver, abstract_syntax: str) -> Any:
    ae = AE(ae_title="GAMMA_CAM")
    ae.add_requested_context(abstract_syntax)
    assoc = ae.associate("127.0.0.1", receiver.settings.node.port, ae_title="PACS_NODE")
    assert assoc.is_established
    return assoc


@pytest.mark.parametrize("network_timeout", [1.0])
def test_the_network_timeout_still_ends_a_silent_association(
    receiver: InProcessReceiver,
) -> None:
    # dcmtk's tools cannot hold an association open without traffic: a pynetdicom SCU can.
    assoc = _pynetdicom_association(receiver, Verification)
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
    # Each association had a socket, an eventfd and a temporary file: all closed again. A
    # duplicate is answered without waiting for its temporary file's fsync, whose own
    # descriptor closes when that fsync ends.
    assert wait_for(lambda: _open_descriptors() <= before, timeout=5)


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


def test_received_file_syncs_on_its_own_descriptor(tmp_path: Path) -> None:
    with NamedTemporaryFile(dir=tmp_path, delete=False, mode="wb", suffix=".dcm") as raw:
        raw.write(b"\x00" * 132)
        received = ReceivedFile(raw)
        received.write(b"data set")
        assert received.digest().synced is None  # nothing started it yet
        received.start_sync()
        synced = received.digest().synced
        # A refusal answers, and pynetdicom closes the file, without waiting for the fsync.
        received.close()
    assert synced is not None
    synced.result(timeout=10)
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert received.name not in open_files  # the fsync's own descriptor was closed


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


@pytest.mark.parametrize(
    "sop_instance_uid", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498." + "1" * 38]
)
@pytest.mark.parametrize(
    "transfer_syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.80"]
)
def test_file_meta_information_is_the_bytes_pydicom_writes(
    sop_instance_uid: str, transfer_syntax: str
) -> None:
    arguments = {
        "sop_class_uid": NMImageStorage,
        "sop_instance_uid": sop_instance_uid,
        "transfer_syntax": transfer_syntax,
    }
    expected = BytesIO()
    write_file_meta_info(expected, create_file_meta(**arguments))
    assert file_meta_information(**arguments) == expected.getvalue()


@pytest.mark.parametrize("status", [0x0000, 0xB007, 0xA700, 0xA900, 0xC000, 0x0122])
@pytest.mark.parametrize("sop_instance_uid", ["1.2.3", "1.2.34"])
def test_c_store_rsp_command_set_is_the_bytes_pynetdicom_sends(
    status: int, sop_instance_uid: str
) -> None:
    rsp = _c_store_rsp(status, sop_instance_uid)
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(1, 16384))
    ((context_id, fragment),) = pdata.presentation_data_value_list
    assert context_id == 1
    assert fragment[:1] == b"\x03"  # the last (only) command fragment
    assert fragment[1:] == c_store_rsp_command_set(
        message_id_being_responded_to=7,
        affected_sop_class_uid=NMImageStorage,
        affected_sop_instance_uid=sop_instance_uid,
        status=status,
    )


def _c_store_rsp(status: int, sop_instance_uid: str = "1.2.3") -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = NMImageStorage
    rsp.AffectedSOPInstanceUID = sop_instance_uid
    rsp.Status = status
    return rsp


def test_responses_the_packer_does_not_cover_go_through_pynetdicom() -> None:
    assoc = ReceiverAssociation(AE(ae_title="PACS_NODE"), MODE_ACCEPTOR)
    assoc.requestor.maximum_length = 16384
    dimse = cast(ReceiverDIMSE, assoc.dimse)
    assert dimse._plain_c_store_rsp(_c_store_rsp(0x0000)) is not None

    with_comment = _c_store_rsp(0xC000)
    with_comment.ErrorComment = "cannot understand"
    assert dimse._plain_c_store_rsp(with_comment) is None
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.Status = 0x0000
    assert dimse._plain_c_store_rsp(echo) is None
    assoc.requestor.maximum_length = 64  # the peer takes smaller PDUs than the response
    assert dimse._plain_c_store_rsp(_c_store_rsp(0x0000)) is None


def test_a_dul_whose_socket_closed_waits_instead_of_spinning() -> None:
    assoc = ReceiverAssociation(AE(ae_title="PACS_NODE"), MODE_ACCEPTOR)
    dul = cast(ReceiverDUL, assoc.dul)
    ours, theirs = socket.socketpair()
    assoc.set_socket(ReceiverSocket(assoc, client_socket=ours))
    dul.event_queue.get_nowait()  # Evt5, put by the socket: nothing left to do
    dul._wake_fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        # Nothing to read and nothing to send: the wait lasts until the timeout...
        started = time.monotonic()
        dul._wait_for_io()
        assert time.monotonic() - started >= IDLE_WAIT_S * 0.9
        # ...a wake-up (written on every put to the send queue) ends it and is drained...
        dul.wake()
        dul._wait_for_io()
        with pytest.raises(BlockingIOError):
            os.eventfd_read(dul._wake_fd)
        # ...and a closed socket is waited on, not spun on.
        cast(ReceiverSocket, dul.socket).close()
        assert dul.event_queue.get_nowait() == "Evt17"  # the state machine's to handle
        started = time.monotonic()
        dul._wait_for_io()
        assert time.monotonic() - started >= IDLE_WAIT_S * 0.9
    finally:
        os.close(dul._wake_fd)
        theirs.close()


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    """One encoded PDV item (PS3.8 9.3.5.1): length, context ID, control header, data."""
    return struct.pack(">LB", len(data) + 2, context_id) + bytes([control]) + data


def test_pdv_items_are_views_of_each_fragment_with_its_control_header() -> None:
    body = bytearray(
        _pdv(1, 0x03, b"command") + _pdv(3, 0x00, b"\x01" * 1000) + _pdv(3, 0x02, b"end")
    )
    items = pdv_items(body)
    assert items is not None
    assert [(context_id, bytes(view)) for context_id, view in items] == [
        (1, b"\x03command"),
        (3, b"\x00" + b"\x01" * 1000),
        (3, b"\x02end"),
    ]
    assert all(view.obj is body for _, view in items)  # views into the buffer, not copies


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no item at all
        _pdv(1, 0x03, b"command")[:5],  # cut inside the item header
        struct.pack(">LB", 1, 1),  # an item with no room for its control header
        struct.pack(">LB", 50, 1) + b"\x03short",  # an item running past the PDU's end
        _pdv(1, 0x03, b"command") + b"\x00\x00",  # trailing bytes too few for an item
    ],
)
def test_pdv_items_leave_malformed_bodies_to_pynetdicom(body: bytes) -> None:
    assert pdv_items(bytearray(body)) is None


def _record_calls(
    monkeypatch: pytest.MonkeyPatch, method: str, what: Callable[[Any], Any]
) -> list[Any]:
    """``what(argument)`` for every call of ``ReceiverDUL.<method>`` from now on."""
    seen: list[Any] = []
    original = getattr(ReceiverDUL, method)

    def recording(self: ReceiverDUL, argument: Any) -> Any:
        seen.append(what(argument))
        return original(self, argument)

    monkeypatch.setattr(ReceiverDUL, method, recording)
    return seen


def _record_decoded_pdu_types(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The type of every PDU pynetdicom itself decodes on a receiver DUL from now on."""
    return _record_calls(monkeypatch, "_decode_pdu", lambda bytestream: bytestream[0])


def _record_sent_pdu_types(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The class of every PDU a receiver DUL's state machine sends from now on."""
    return _record_calls(monkeypatch, "_send", lambda pdu: type(pdu).__name__)


def _store_two_scans(
    receiver: InProcessReceiver, tmp_path: Path, *, seed: int
) -> tuple[list[Path], subprocess.CompletedProcess[str]]:
    """Two synthetic scans sent with storescu in one association, which must succeed."""
    scans = write_synthetic_scans(tmp_path / "scans", count=2, seed=seed)
    result = storescu(receiver.peer, *scans)
    assert result.returncode == 0, result.stderr
    return scans, result


def _listen(receiver: InProcessReceiver, event: evt.NotificationEvent) -> list[str]:
    """The class of every PDU the server's associations report under ``event`` from now on."""
    heard: list[str] = []
    receiver.server.bind(event, lambda event: heard.append(type(event.pdu).__name__))
    return heard


def _assert_stored_as_sent(receiver: InProcessReceiver, scans: list[Path]) -> None:
    for scan in scans:
        sent = dcmread(scan)
        stored = dcmread(receiver.spool_file(str(sent.SOPInstanceUID)))
        assert stored == sent  # every element, pixel data included


def test_p_data_goes_to_dimse_without_pynetdicom_decoding_it(
    receiver: InProcessReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = _record_decoded_pdu_types(monkeypatch)
    scans, _ = _store_two_scans(receiver, tmp_path, seed=5)
    # The association's own PDUs took pynetdicom's path; no P-DATA-TF (0x04) did.
    assert 0x01 in decoded and 0x05 in decoded  # A-ASSOCIATE-RQ, A-RELEASE-RQ
    assert 0x04 not in decoded
    _assert_stored_as_sent(receiver, scans)


def test_a_pdu_listener_gets_every_p_data_decoded_by_pynetdicom(
    receiver: InProcessReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = _record_decoded_pdu_types(monkeypatch)
    heard = _listen(receiver, evt.EVT_PDU_RECV)
    scans, _ = _store_two_scans(receiver, tmp_path, seed=6)
    # Each scan's command and its 1 MB data set: several P-DATA-TF PDUs per scan.
    assert decoded.count(0x04) == heard.count("P_DATA_TF") >= 2 * 2
    _assert_stored_as_sent(receiver, scans)


def test_a_malformed_p_data_gets_pynetdicoms_abort_and_the_node_serves_on(
    receiver: InProcessReceiver,
) -> None:
    # dcmtk's tools cannot send a malformed PDU: a pynetdicom SCU's socket can.
    assoc = _pynetdicom_association(receiver, NMImageStorage)
    context_id = assoc.accepted_contexts[0].context_id
    item = struct.pack(">LB", 500, context_id) + b"\x03" + b"\x00" * 20  # runs past the end
    assert assoc.dul.socket is not None
    assoc.dul.socket.send(struct.pack(">BBL", 0x04, 0, len(item)) + item)
    # pynetdicom's answer to an undecodable PDU (Sta6 + Evt19: AA-8) is an A-ABORT.
    assert wait_for(lambda: assoc.is_aborted, timeout=10)
    result = echoscu(receiver.peer)
    assert result.returncode == 0, result.stderr


def test_p_data_tf_is_the_pdu_pynetdicom_encodes() -> None:
    fragment = b"\x03" + c_store_rsp_command_set(
        message_id_being_responded_to=7,
        affected_sop_class_uid=str(NMImageStorage),
        affected_sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
        status=0x0000,
    )
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((5, fragment))
    assert p_data_tf(5, fragment) == P_DATA_TF(primitive).encode()


def test_c_store_responses_are_written_by_the_association_thread(
    receiver: InProcessReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _record_sent_pdu_types(monkeypatch)
    scans, result = _store_two_scans(receiver, tmp_path, seed=8)
    # storescu read both responses as successes: the PDUs written directly are well formed.
    assert result.stderr.count("Received Store Response (Success)") == 2
    assert "A_ASSOCIATE_AC" in sent and "A_RELEASE_RP" in sent
    assert "P_DATA_TF" not in sent
    _assert_stored_as_sent(receiver, scans)


def test_a_send_listener_gets_every_response_from_the_state_machine(
    receiver: InProcessReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _record_sent_pdu_types(monkeypatch)
    heard = _listen(receiver, evt.EVT_PDU_SENT)
    _store_two_scans(receiver, tmp_path, seed=9)
    assert sent.count("P_DATA_TF") == heard.count("P_DATA_TF") == 2


def _established_dul(monkeypatch: pytest.MonkeyPatch, sock: socket.socket) -> ReceiverDUL:
    """A receiver DUL on ``sock`` in Sta6, with no listeners bound (as the server runs it)."""
    monkeypatch.setattr(pynetdicom_config, "LOG_HANDLER_LEVEL", "none")
    assoc = ReceiverAssociation(AE(ae_title="PACS_NODE"), MODE_ACCEPTOR)
    assoc.set_socket(ReceiverSocket(assoc, client_socket=sock))
    dul = cast(ReceiverDUL, assoc.dul)
    dul.event_queue.get_nowait()  # Evt5, put by the socket
    dul.state_machine.current_state = "Sta6"
    return dul


def test_a_direct_write_never_overtakes_a_queued_p_data(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = socket.socketpair()
    dul = _established_dul(monkeypatch, ours)
    pdu = p_data_tf(1, b"\x03command")
    try:
        queued = P_DATA()
        queued.presentation_data_value_list.append((1, b"\x03earlier"))
        dul.send_pdu(queued)
        assert not dul.send_p_data_now(pdu)  # it waits in the queue for the state machine
        dul.to_provider_queue.get_nowait()  # taken by DT-1, which has not written it yet
        assert not dul.send_p_data_now(pdu)
        dul._send(P_DATA_TF(queued))  # written
        assert theirs.recv(100) == P_DATA_TF(queued).encode()
        assert dul.send_p_data_now(pdu)
        assert theirs.recv(100) == pdu
        dul.state_machine.current_state = "Sta13"  # the association is going away
        assert not dul.send_p_data_now(pdu)
    finally:
        ours.close()
        theirs.close()


def test_a_tls_association_leaves_its_responses_to_the_dul_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = socket.socketpair()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).wrap_socket(
        ours, server_side=True, do_handshake_on_connect=False
    )
    dul = _established_dul(monkeypatch, tls)
    try:
        assert not dul.send_p_data_now(p_data_tf(1, b"\x03command"))
    finally:
        tls.close()
        theirs.close()
