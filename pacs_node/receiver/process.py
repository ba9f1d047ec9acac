"""One receiver process: its own audit engine, spool access and association server."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import tempfile
import threading
from multiprocessing.connection import Connection

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from pacs_node.audit.commitment_store import CommitmentStore
from pacs_node.audit.db import make_engine
from pacs_node.audit.models import AssociationOutcome
from pacs_node.audit.store import AuditStore, PeerInfo
from pacs_node.config import Settings
from pacs_node.logs import configure_logging
from pacs_node.receiver.handlers import ReceiverHandlers
from pacs_node.receiver.ingest import Ingest
from pacs_node.receiver.server import make_server
from pacs_node.receiver.spool import Spool

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the supervisor dies, so no orphan holds the port."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        logger.warning("prctl unavailable: a receiver may outlive a killed supervisor")


def make_handlers(
    settings: Settings, engine: Engine, *, ingest_class: type[Ingest] = Ingest
) -> ReceiverHandlers:
    """The C-STORE path of one receiver process (spool, audit, ingest, handlers) as
    configured; ``ingest_class`` lets a test watch what the handlers hand over."""
    storage = settings.storage
    audit = AuditStore(engine)
    ingest = ingest_class(
        spool=Spool(storage.spool_dir, storage.incoming_dir),
        audit=audit,
        accepted_sop_classes=frozenset(settings.dicom.accepted_sop_classes),
        min_free_bytes=storage.min_free_disk_mb * 2**20,
    )
    return ReceiverHandlers(
        audit=audit,
        ingest=ingest,
        security=settings.security,
        tls=settings.tls.enabled,
        commitments=CommitmentStore(engine),
        commitment_peers=frozenset(
            d.ae_title for d in settings.delivery.destinations if d.storage_commitment
        ),
    )


def run_receiver(
    settings: Settings,
    listening_socket: socket.socket,
    ready: Connection,
    log_level: str,
    parent_pid: int,
) -> None:
    """Serve associations on the shared ``listening_socket`` until SIGTERM.

    Readiness is reported on ``ready``.

    Stopping is by signal, not a shared multiprocessing.Event: a receiver killed while
    holding such an event's lock would deadlock every other process that touches it.
    """
    _die_with_parent()
    configure_logging(log_level)
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor handles Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if os.getppid() != parent_pid:
        return
    # pynetdicom writes each incoming data set with NamedTemporaryFile in the default temp
    # directory; on the spool's filesystem the file can be linked into place, not copied.
    tempfile.tempdir = str(settings.storage.incoming_dir)
    engine = make_engine(settings.database_url)
    handlers = make_handlers(settings, engine)
    audit = handlers.audit

    def audit_tls_failure(host: str, port: int, reason: str) -> None:
        peer = PeerInfo(calling_ae="", called_ae="", host=host, port=port, tls=True)
        try:
            assoc_id = audit.open_association(peer, receiver_pid=os.getpid())
            audit.end_association(
                assoc_id, AssociationOutcome.REJECTED, instances=0, nbytes=0, reason=reason
            )
        except SQLAlchemyError:
            logger.exception("could not audit a failed TLS handshake")

    server = make_server(
        settings,
        handlers,
        listening_socket=listening_socket,
        on_tls_failure=audit_tls_failure,
    )
    thread = threading.Thread(target=server.serve_forever, name="receiver-accept", daemon=True)
    thread.start()
    logger.info("receiver %d listening", os.getpid())
    ready.send(os.getpid())
    ready.close()
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            logger.error("supervisor is gone; receiver %d stops", os.getpid())
            break
    server.shutdown()
    for assoc in server.active_associations:
        assoc.join(timeout=settings.timeouts.dimse)
    engine.dispose()
