"""The association server of one receiver process.

Three changes to pynetdicom 3.0's threaded server:

* it serves a listening socket the supervisor opened and shares with every receiver
  process (each has its own GIL). All of them wait on it and whichever is free first
  accepts, so connections go to idle processes; SO_REUSEPORT would instead hash each
  connection to a fixed process, busy or not;
* the TLS handshake runs on the connection's own thread with a timeout. pynetdicom does it
  on the accepting thread with none, so one silent client stops every new TLS association;
* each connection's association waits on events rather than sleeping (``acceptor``).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import AE, _config
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from pacs_node.config import Settings
from pacs_node.receiver.acceptor import ReceiverRequestHandler, use_fixed_file_meta
from pacs_node.receiver.handlers import ReceiverHandlers

logger = logging.getLogger(__name__)

#: Called with (peer host, peer port, reason) when a TLS handshake fails or times out.
TlsFailureCallback = Callable[[str, int, str], None]


class ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on a shared listening socket, TLS handshakes per thread."""

    tls_handshake_timeout: float = 15.0
    listening_socket: socket.socket | None = None
    on_tls_failure: TlsFailureCallback | None = None

    def server_bind(self) -> None:
        if self.listening_socket is None:
            super().server_bind()
            return
        # Serve the supervisor's socket instead of binding a new one.
        cast(socket.socket, self.socket).close()
        self.socket = self.listening_socket
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.listening_socket is None:
            super().server_activate()

    def shutdown(self) -> None:
        # pynetdicom's shutdown also removes the server from ae._servers, where only
        # ae.start_server() puts it; make_server() servers are not there.
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def server_close(self) -> None:
        # Close our descriptor only: shutdown() on a shared listening socket would stop
        # every other receiver from accepting.
        cast(socket.socket, self.socket).close()

    def get_request(self) -> tuple[socket.socket, Any]:
        # The shared socket is non-blocking: when another receiver took the connection
        # first, accept() raises BlockingIOError and socketserver goes back to waiting.
        client_socket, address = cast(socket.socket, self.socket).accept()
        client_socket.setblocking(True)
        # C-STORE responses are small writes; do not let Nagle hold them back.
        client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            # No I/O here: the handshake happens in process_request_thread.
            client_socket = self.ssl_context.wrap_socket(
                client_socket, server_side=True, do_handshake_on_connect=False
            )
        return client_socket, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.tls_handshake_timeout)
                request.do_handshake()
                request.settimeout(None)
            except (ssl.SSLError, OSError) as exc:
                reason = f"TLS handshake failed: {type(exc).__name__}: {exc}"[:300]
                logger.warning("%s (peer %s)", reason, client_address[0])
                if self.on_tls_failure is not None:
                    self.on_tls_failure(str(client_address[0]), int(client_address[1]), reason)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def make_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Server-side TLS context (PS3.15 B.1: TLS 1.2 or later), or None without TLS."""
    tls = settings.tls
    if not tls.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    if tls.ca_certificate is not None:
        context.load_verify_locations(cafile=str(tls.ca_certificate))
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
    return context


def make_ae(settings: Settings) -> AE:
    """The Storage + Verification SCP with the configured limits and timeouts."""
    # pynetdicom's per-PDU debug handlers cost time on every fragment; logging of ours stays.
    _config.LOG_HANDLER_LEVEL = "none"
    # Stream each data set to a file as it arrives instead of holding it in memory.
    _config.STORE_RECV_CHUNKED_DATASET = True
    use_fixed_file_meta()
    ae = AE(ae_title=settings.node.ae_title)
    ae.maximum_associations = settings.node.max_associations
    ae.network_timeout = settings.timeouts.network
    ae.acse_timeout = settings.timeouts.acse
    ae.dimse_timeout = settings.timeouts.dimse
    ae.maximum_pdu_size = 0  # accept whatever PDU size the sender proposes
    ae.require_called_aet = True
    syntaxes = list(settings.dicom.accepted_transfer_syntaxes)
    # Every storage SOP class is negotiable so a disallowed one gets a C-STORE refusal
    # (0x0122) with an audit row, not a silent presentation-context rejection.
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(cast(str, context.abstract_syntax), syntaxes)
    for uid in settings.dicom.accepted_sop_classes:
        if uid not in {str(cx.abstract_syntax) for cx in ae.supported_contexts}:
            ae.add_supported_context(uid, syntaxes)
    ae.add_supported_context(Verification, syntaxes)
    # A PACS reporting a Storage Commitment result opens an association as the SOP class's
    # SCP (PS3.4 J.3.3): accept that role and not the SCU one (we commit nothing).
    ae.add_supported_context(StorageCommitmentPushModel, syntaxes, scu_role=False, scp_role=True)
    return ae


def make_server(
    settings: Settings,
    handlers: ReceiverHandlers,
    *,
    listening_socket: socket.socket | None = None,
    on_tls_failure: TlsFailureCallback | None = None,
) -> ReceiverServer:
    """Build (not start) the server: on ``listening_socket``, or bound to the configured
    host and port when there is none."""
    ae = make_ae(settings)
    server_class = type(
        "ConfiguredReceiverServer",
        (ReceiverServer,),
        {
            "tls_handshake_timeout": settings.timeouts.connection_idle,
            "listening_socket": listening_socket,
            "on_tls_failure": staticmethod(on_tls_failure) if on_tls_failure else None,
        },
    )
    server = ae.make_server(
        (settings.node.host, settings.node.port),
        ae_title=settings.node.ae_title,
        ssl_context=make_ssl_context(settings),
        evt_handlers=handlers.bindings(),
        server_class=server_class,
        request_handler=ReceiverRequestHandler,
    )
    return cast(ReceiverServer, server)
