"""pynetdicom 3.0.4's association acceptor, waiting on events instead of fixed sleeps.

A gamma camera waits for each C-STORE response before it sends the next object, so every
delay on the way in or out is paid once per instance. pynetdicom polls:

* the DUL thread sleeps 1 ms whenever its socket had no data and nothing was queued to send,
  so the response the handler queued waits up to 1 ms before it is written;
* the association thread sleeps 1 ms before each look for a decoded DIMSE message, so a
  received object waits up to 1 ms before its handler starts;
* the socket is read 4 KiB at a time: 256 Python-level ``recv`` calls per MB;
* a response waits for the DUL thread to wake, take the GIL and run the state machine
  before it is written;
* each P-DATA-TF PDU is copied five times (into the read buffer, into ``bytes``, into each
  PDV item, into the P-DATA primitive's fragments, and without the control byte for the
  file) and passes through the state machine, though in Sta6 it leaves the state as it is.

Here pynetdicom's state machine, DIMSE decoding and every PDU but P-DATA-TF are untouched.
The waits change; in an established association (Sta6) with nobody listening to the PDU
events, a P-DATA-TF PDU's items are handed to DIMSE as views into the one buffer it was
read into, as DT-2 would hand them (anything malformed takes pynetdicom's path, with its
outcome); a plain C-STORE response is written by the association thread itself, as DT-1
would write it, under the lock every other write of the DUL takes; and each C-STORE's
data set is hashed as it arrives (``received_file``) and its
fsync started the moment its last fragment is written. The DUL thread waits in ``select``
on its socket and on an eventfd that is signalled whenever a primitive is queued for
sending; the association thread waits on an Event set whenever a DIMSE message or an ACSE
primitive is queued for it. Both waits are capped at ``IDLE_WAIT_S`` (10 ms), so its timers
(ARTIM, network idle) still run. Reads fill one buffer of the PDU's length.

pynetdicom is pinned (pyproject.toml): the copied methods follow 3.0.4's code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import ssl
import struct
import threading
import time
from collections.abc import Callable
from copy import deepcopy
from datetime import datetime
from io import BytesIO
from typing import Any, cast

from pynetdicom import dimse_messages, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler
from pynetdicom.utils import make_target

from pacs_node.receiver.fixed_encodings import c_store_rsp_command_set, file_meta_information
from pacs_node.receiver.received_file import ReceivedFile

LOGGER = logging.getLogger("pynetdicom.assoc")
DUL_LOGGER = logging.getLogger("pynetdicom.dul")

#: The longest either thread waits before it looks at its timers and flags again. Every
#: message, primitive and socket event wakes its reader at once, so this only bounds how
#: late the ARTIM and network-idle timers (seconds long) can fire; at pynetdicom's 1 ms
#: each idle thread woke 1000 times a second and took the GIL from the busy one each time.
IDLE_WAIT_S = 0.01

#: How often ``stop_dul`` looks whether the woken DUL thread has ended.
_STOP_POLL_S = 0.001

#: PDV item header (length 4, context 1) plus the P-DATA-TF PDU header (6).
_PDATA_OVERHEAD = 11

_P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(0x01, 0x08))
_PDU_HEADER = struct.Struct(">BBL")
_PDV_LENGTH = struct.Struct(">L")
#: Listeners that must see every PDU as pynetdicom decodes it: with any bound, no shortcut.
_PDU_OBSERVERS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION)
#: And those that must see every PDU pynetdicom sends.
_SEND_OBSERVERS = (evt.EVT_DATA_SENT, evt.EVT_PDU_SENT, evt.EVT_FSM_TRANSITION)
#: States in which a P-DATA request is sent as it is (Evt9: DT-1 in Sta6, AR-7 in Sta8).
_P_DATA_STATES = frozenset({"Sta6", "Sta8"})
_PDV_HEADER = struct.Struct(">BBLLB")


def p_data_tf(context_id: int, fragment: bytes) -> bytes:
    """A P-DATA-TF PDU of one PDV item; ``fragment`` starts with its control header."""
    return _PDV_HEADER.pack(_P_DATA_TF, 0, len(fragment) + 5, len(fragment) + 1, context_id) + (
        fragment
    )


def pdv_items(body: bytearray) -> list[tuple[int, memoryview]] | None:
    """The (context ID, fragment) items of a P-DATA-TF PDU's body, each fragment a view
    into ``body`` starting with its message control header (PS3.8 9.3.5.1, E.2).

    None for a body pynetdicom must judge: empty, an item too short to hold a control
    header, or one running past the end.
    """
    items: list[tuple[int, memoryview]] = []
    end = len(body)
    offset = 0
    with memoryview(body) as view:
        while offset < end:
            if end - offset < 6:
                return None
            (length,) = _PDV_LENGTH.unpack_from(body, offset)
            if length < 2 or offset + 4 + length > end:
                return None
            items.append((body[offset + 4], view[offset + 5 : offset + 4 + length]))
            offset += 4 + length
    return items or None


def _file_meta_arguments(**arguments: Any) -> dict[str, Any]:
    return arguments


def _write_file_meta(fp: Any, arguments: dict[str, Any]) -> None:
    fp.write(file_meta_information(**arguments))


def use_fixed_file_meta() -> None:
    """Have pynetdicom write each received file's File Meta Information with
    :func:`file_meta_information` (the same bytes, without building a pydicom Dataset).

    Process-wide, like pynetdicom's ``_config``: the receiver's processes call it. The two
    names are used by ``dimse_messages`` only where it opens a C-STORE's temporary file.
    """
    dimse_messages.create_file_meta = _file_meta_arguments  # type: ignore[attr-defined,assignment]
    dimse_messages.write_file_meta_info = _write_file_meta  # type: ignore[attr-defined,assignment]


class _SignallingQueue(queue.Queue[Any]):
    """A queue that calls ``signal`` after every put, so its reader need not poll."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._signal()


class ReceiverSocket(AssociationSocket):
    """An association socket that reads a PDU into one buffer of its length."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(Any, self.socket)
        buffer = bytearray(nr_bytes)
        nr_read = 0
        with memoryview(buffer) as view:
            while nr_read < nr_bytes:
                count = sock.recv_into(view[nr_read:])
                if not count:
                    break  # the peer closed the connection: the caller sees a short PDU
                nr_read += count
        if nr_read < nr_bytes:
            del buffer[nr_read:]
        return buffer


class ReceiverDUL(DULServiceProvider):
    """The DUL thread, woken by its socket or by a primitive to send."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        # The wait happens in _is_transport_event (see _run_events).
        self._run_loop_delay = 0
        self._wake_lock = threading.Lock()
        self._wake_fd: int | None = None
        # Held by every write to the socket: the association thread's (send_p_data_now)
        # and this thread's.
        self._send_lock = threading.Lock()
        # P-DATA requests queued for the state machine and not yet written: one written
        # directly must not overtake them.
        self._p_data_queued = 0
        self.to_provider_queue = _SignallingQueue(self.wake)

    def wake(self) -> None:
        """Make the reactor's current or next wait return at once."""
        with self._wake_lock:
            # Never write to a closed number: the kernel may have reused it for a file.
            if self._wake_fd is not None:
                os.eventfd_write(self._wake_fd, 1)

    def run_reactor(self) -> None:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        with self._wake_lock:
            self._wake_fd = fd
        try:
            self._run_events()
        finally:
            with self._wake_lock:
                self._wake_fd = None
                os.close(fd)

    def _run_events(self) -> None:
        # pynetdicom 3.0.4's DULServiceProvider.run_reactor without its sleep between
        # loops: _is_transport_event waits on the socket and the wake-up instead. Even a
        # time.sleep(0) there gives up the GIL after every PDU the shortcut handles, and
        # the DUL thread then waits for it behind the other threads.
        self._idle_timer.start()
        sock = cast(AssociationSocket, self.socket)
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                DUL_LOGGER.error("Exception in DUL.run(), aborting association")
                DUL_LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                with self._send_lock:
                    sock.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                continue
            self.state_machine.do_action(event)

    def _is_transport_event(self) -> bool:
        self._wait_for_io()
        return super()._is_transport_event()

    def _wait_for_io(self) -> None:
        """Block until the socket is readable, a primitive is queued, or IDLE_WAIT_S."""
        sock: Any = self.socket.socket if self.socket is not None else None
        fd = self._wake_fd
        if (
            fd is None
            or self._kill_thread
            or not self.to_provider_queue.empty()
            or not self.event_queue.empty()
        ):
            return
        if sock is None:
            # Closed: nothing to wait on until the association thread stops this one, so
            # sleep as pynetdicom would rather than spin.
            time.sleep(IDLE_WAIT_S)
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes wait in the TLS layer, where select cannot see them
        try:
            readable, _, _ = select.select([sock, fd], [], [], IDLE_WAIT_S)
        except (OSError, ValueError):
            # A socket closed under us: pynetdicom's own check reports it; do not spin.
            time.sleep(IDLE_WAIT_S)
            return
        if fd in readable:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(fd)

    def send_pdu(self, primitive: Any) -> None:
        if isinstance(primitive, P_DATA):
            with self._send_lock:
                self._p_data_queued += 1
        super().send_pdu(primitive)

    def _send(self, pdu: Any) -> None:
        with self._send_lock:
            super()._send(pdu)
            # Every P-DATA-TF the state machine sends is a queued P-DATA request (DT-1, AR-7).
            if isinstance(pdu, P_DATA_TF):
                self._p_data_queued -= 1

    def send_p_data_now(self, pdu: bytes) -> bool:
        """Write an encoded P-DATA-TF PDU on the calling thread, as the state machine would
        on a P-DATA request (Evt9) in Sta6 or Sta8; False, having done nothing, where the
        state machine must run it (another state, anything queued before it, listeners,
        TLS: an OpenSSL connection must not be written on one thread while another may be
        reading it)."""
        with self._send_lock:
            sock = self.socket
            if (
                sock is None
                or isinstance(sock.socket, ssl.SSLSocket)
                or self.state_machine.current_state not in _P_DATA_STATES
                or self._p_data_queued
                or not self.to_provider_queue.empty()
                or not self.event_queue.empty()
                or any(self.assoc.get_handlers(event) for event in _SEND_OBSERVERS)
            ):
                return False
            sock.send(pdu)  # a failure puts Evt17 (connection closed) on the event queue
        return True

    def _read_pdu_data(self) -> None:
        # pynetdicom 3.0.4's, reading the header and the body into separate buffers so that
        # a P-DATA-TF's body can go to DIMSE without being copied (_pass_p_data).
        header = self._recv_or_close(6)
        if header is None:
            return
        try:
            pdu_type, _, pdu_length = _PDU_HEADER.unpack(header)
        except struct.error:
            self.event_queue.put("Evt17")
            return
        if pdu_type not in _PDU_TYPES:
            DUL_LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        body = self._recv_or_close(pdu_length)
        if body is None:
            return
        if len(body) != pdu_length:
            DUL_LOGGER.error(
                f"The received PDU is shorter than expected ({6 + len(body)} of "
                f"{6 + pdu_length} bytes received)"
            )
            self.event_queue.put("Evt17")
            return
        if pdu_type == _P_DATA_TF and self._pass_p_data(body):
            return
        try:
            pdu, event = self._decode_pdu(header + body)
            self.event_queue.put(event)
        except Exception as exc:
            DUL_LOGGER.error("Unable to decode the received PDU data")
            DUL_LOGGER.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

    def _recv_or_close(self, nr_bytes: int) -> bytearray | None:
        """Up to ``nr_bytes`` from the socket; None, with Evt17 queued, when it failed."""
        try:
            return cast(ReceiverSocket, self.socket).recv(nr_bytes)
        except (OSError, TimeoutError) as exc:
            DUL_LOGGER.error("Connection closed before the entire PDU was received")
            DUL_LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return None

    def _pass_p_data(self, body: bytearray) -> bool:
        """Do DT-2 (Sta6 + Evt10: P-DATA indication, stay in Sta6) for a P-DATA-TF body,
        handing DIMSE views into ``body``; False, having done nothing, where the state
        machine must run (another state, events queued before this PDU, PDU listeners)
        or the body is malformed."""
        assoc = self.assoc
        if (
            self.state_machine.current_state != "Sta6"
            or not self.event_queue.empty()
            or not self._recv_pdu.empty()
            or any(assoc.get_handlers(event) for event in _PDU_OBSERVERS)
        ):
            return False
        items = pdv_items(body)
        if items is None:
            return False
        primitive = P_DATA()
        # Appended, not assigned: the setter accepts only bytes, and these are views.
        primitive.presentation_data_value_list.extend(cast(list[tuple[int, bytes]], items))
        assoc.dimse.receive_primitive(primitive)
        return True

    def stop_dul(self) -> bool:
        # pynetdicom 3.0.4's, waiting with a wake-up instead of a 0 s busy loop.
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self.wake()
            while self.is_alive():
                time.sleep(_STOP_POLL_S)
            return True
        return False


class ReceiverDIMSE(DIMSEServiceProvider):
    """Wraps each C-STORE's temporary file in a :class:`ReceivedFile` as soon as it exists,
    and sends plain C-STORE responses without building a pydicom Dataset."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = self._plain_c_store_rsp(primitive)
        if command is None:
            super().send_msg(primitive, context_id)
            return
        # 0x03: the command set's last (and only) fragment (PS3.8 E.2).
        fragment = b"\x03" + command
        dul = cast(ReceiverDUL, self.dul)
        if dul.send_p_data_now(p_data_tf(context_id, fragment)):
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, fragment))
        dul.send_pdu(pdata)

    def _plain_c_store_rsp(self, primitive: Any) -> bytes | None:
        """The encoded command set, or None where pynetdicom's own path is needed."""
        if (
            not isinstance(primitive, C_STORE)
            or primitive.MessageIDBeingRespondedTo is None
            or primitive.Status is None
            or primitive.AffectedSOPClassUID is None
            or primitive.AffectedSOPInstanceUID is None
            or primitive.OffendingElement is not None
            or primitive.ErrorComment is not None
            or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)  # it wants the message object
        ):
            return None
        command = c_store_rsp_command_set(
            message_id_being_responded_to=int(primitive.MessageIDBeingRespondedTo),
            affected_sop_class_uid=str(primitive.AffectedSOPClassUID),
            affected_sop_instance_uid=str(primitive.AffectedSOPInstanceUID),
            status=int(primitive.Status),
        )
        max_pdu = self.maximum_pdu_size
        if max_pdu and len(command) + _PDATA_OVERHEAD > max_pdu:
            return None  # pynetdicom fragments it
        return command

    def receive_primitive(self, primitive: P_DATA) -> None:
        # pynetdicom 3.0.4's, with two additions: the data set's temporary file is wrapped
        # in a ReceivedFile once it exists, and its fsync starts as soon as the message is
        # complete, before the command is decoded and the message queued for the handler.
        if self.message is None:
            self.message = DIMSEMessage()
        message = self.message

        complete = message.decode_msg(primitive, self.assoc)
        file = message._data_set_file
        if complete:
            # A data set that came whole in the command's last P-DATA stays unwrapped: the
            # handler then hashes and fsyncs the file itself.
            if isinstance(file, ReceivedFile):
                file.start_sync()
        else:
            # pynetdicom opens the file on the command's last fragment.
            if file is not None and not isinstance(file, ReceivedFile):
                message._data_set_file = cast(Any, ReceivedFile(file))
            return

        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
        context_id = cast(int, message.context_id)
        try:
            d_primitive = message.message_to_primitive()
        except Exception as exc:
            LOGGER.error("Received an invalid DIMSE message")
            LOGGER.exception(exc)
            self.dul.event_queue.put("Evt19")
            return

        if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
            msg_id = cast(int, d_primitive.MessageIDBeingRespondedTo)
            self.cancel_req[msg_id] = d_primitive
        elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
            # As pynetdicom: served at once, on a thread of its own, not to block the DUL.
            thread = threading.Thread(
                target=make_target(self.assoc._serve_request), args=(d_primitive, context_id)
            )
            thread.start()
        else:
            self.msg_queue.put((context_id, cast(Any, d_primitive)))

        # Reset for the next message (pynetdicom issue #41: a memory leak otherwise).
        message.encoded_command_set = BytesIO()
        message.data_set = BytesIO()
        message._data_set_file = None
        message._data_set_path = None
        self.message = None


class ReceiverAssociation(Association):
    """An acceptor association whose thread wakes when a message is queued for it."""

    def __init__(self, ae: ApplicationEntity, mode: str) -> None:
        super().__init__(ae, mode)
        self._work_queued = threading.Event()
        #: True once our A-RELEASE-RP is on its way (handlers read it on connection close).
        self.release_answered = False
        self.dul = ReceiverDUL(self)
        self.dimse = ReceiverDIMSE(self)
        # Association.__init__ gave its timers' timeouts to the DUL it made; give them to this.
        self.acse_timeout = ae.acse_timeout
        self.network_timeout = ae.network_timeout
        self.dul.to_user_queue = _SignallingQueue(self._work_queued.set)
        self.dimse.msg_queue = _SignallingQueue(self._work_queued.set)

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4's acceptor loop; its time.sleep(0.001) is the wait below.
        self._is_paused = False
        while not self._kill:
            self._work_queued.wait(IDLE_WAIT_S)
            self._work_queued.clear()

            # Paused while the user sends DIMSE or ACSE messages on this thread's behalf.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                # Set before the A-RELEASE-RP goes out: the peer may close the socket at once,
                # and the DUL thread's EVT_CONN_CLOSE can then run before EVT_RELEASED below.
                self.release_answered = True
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                LOGGER.info(log_msg)
                # Ensure that EVT_ACSE_RECV fires for subscribers
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class ReceiverRequestHandler(RequestHandler):
    """Builds each accepted connection's association from the classes above."""

    def _create_association(self) -> Association:
        # pynetdicom 3.0.4's RequestHandler._create_association with our three classes.
        assoc = ReceiverAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server

        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"

        sock = ReceiverSocket(assoc, client_socket=cast(Any, self.request))
        assoc.set_socket(sock)

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)

        assoc.requestor.address_info = self.remote

        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(Any, handler)
                    assoc.bind(event, handler[0], handler[1])

        return assoc
