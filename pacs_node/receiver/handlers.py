"""pynetdicom event handlers: association audit, access control, C-ECHO, C-STORE and the
Storage Commitment reports PACSs send back.

Thin by design: each handler turns an event into an audit call or an :class:`Ingest` call
and a status. No exception reaches the peer.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_ASSOCIATE
from sqlalchemy.exc import SQLAlchemyError

from pacs_node.audit.commitment_store import CommitmentStore
from pacs_node.audit.models import AssociationOutcome
from pacs_node.audit.store import AuditStore, PeerInfo
from pacs_node.config import SecuritySettings
from pacs_node.logs import current_association
from pacs_node.receiver.commitment import PROCESSING_FAILURE, handle_commitment_report
from pacs_node.receiver.ingest import Ingest, StoreRequest
from pacs_node.receiver.received_file import ReceivedFile
from pacs_node.receiver.status import StoreStatus

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)
#: A-ASSOCIATE-RJ results: rejected-permanent, rejected-transient (PS3.8 9.3.4).
_REJECTED_RESULTS = (0x01, 0x02)
_DIAGNOSTICS = {
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x01, 0x01): "no reason given",
    (0x01, 0x02): "application context name not supported",
    (0x02, 0x01): "no reason given (ACSE)",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "local limit exceeded: too many associations",
}


def peer_refusal(
    security: SecuritySettings,
    calling_ae: str,
    host: str,
    *,
    commitment_peers: frozenset[str] = frozenset(),
) -> str | None:
    """Why a peer may not associate, or None when it may (pure).

    ``commitment_peers``: AE titles of the PACSs asked for Storage Commitment, which call
    back with the result and so may associate without being in the allowed list.
    """
    allowed_aes = security.allowed_calling_ae_titles
    calling_ae = calling_ae.strip()
    if allowed_aes and calling_ae not in allowed_aes and calling_ae not in commitment_peers:
        return f"calling AE title {calling_ae!r} is not in the allowed list"
    if security.allowed_networks:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return f"peer address {host!r} is not an IP address"
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not any(address in network for network in security.allowed_networks):
            return f"peer address {host} is not in an allowed network"
    return None


@dataclass
class _AssociationState:
    audit_id: int
    calling_ae: str
    instances: int = 0
    nbytes: int = 0
    rejected_contexts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ended: bool = False


class ReceiverHandlers:
    """The node's pynetdicom handlers, bound to one receiver process."""

    def __init__(
        self,
        *,
        audit: AuditStore,
        ingest: Ingest,
        security: SecuritySettings,
        tls: bool,
        commitments: CommitmentStore | None = None,
        commitment_peers: frozenset[str] = frozenset(),
    ) -> None:
        self.audit = audit
        self.ingest = ingest
        self.security = security
        self.tls = tls
        self.commitments = commitments
        self.commitment_peers = commitment_peers
        self._states: weakref.WeakKeyDictionary[Any, _AssociationState] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def bindings(self) -> list[evt.EventHandlerType]:
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_CONN_CLOSE, self.on_closed),
            (evt.EVT_C_ECHO, self.on_c_echo),
            (evt.EVT_C_STORE, self.on_c_store),
            (evt.EVT_N_EVENT_REPORT, self.on_n_event_report),
        ]

    # -- association life -----------------------------------------------------------------

    def on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        rq = cast(A_ASSOCIATE, assoc.requestor.primitive)
        calling_ae = str(rq.calling_ae_title).strip()
        peer = PeerInfo(
            calling_ae=calling_ae[:16],
            called_ae=str(rq.called_ae_title).strip()[:16],
            host=str(assoc.requestor.address),
            port=int(assoc.requestor.port),
            tls=self.tls,
        )
        try:
            audit_id = self.audit.open_association(peer, receiver_pid=self._pid)
        except SQLAlchemyError:
            # Without an audit row the node must not take data: refuse, transiently.
            logger.exception("cannot audit an association request; rejecting it")
            assoc.acse.send_reject(0x02, 0x03, 0x01)
            return
        # Handlers of this association run on this thread: its log lines carry the audit id.
        current_association.set(audit_id)
        state = _AssociationState(audit_id=audit_id, calling_ae=calling_ae)
        with self._lock:
            self._states[assoc] = state
        refusal = peer_refusal(
            self.security, calling_ae, peer.host, commitment_peers=self.commitment_peers
        )
        if refusal is not None:
            logger.warning("rejecting association %d: %s", audit_id, refusal)
            # Noted before the A-ASSOCIATE-RJ goes out: if the peer's close (on_closed, DUL
            # thread) ends the association first, its row still says why.
            state.notes.append(refusal)
            assoc.acse.send_reject(*_REJECT_CALLING_AE)
            self._end(assoc, AssociationOutcome.REJECTED, None)

    def on_accepted(self, event: evt.Event) -> None:
        state = self._state(event.assoc)
        if state is not None:
            state.rejected_contexts = [
                str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts
            ]

    def on_rejected(self, event: evt.Event) -> None:
        state = self._state(event.assoc)
        if state is None or state.ended:
            return
        primitive = cast(A_ASSOCIATE, event.assoc.acceptor.primitive)
        key = (primitive.result_source or 0, primitive.diagnostic or 0)
        reason = f"A-ASSOCIATE-RJ: {_DIAGNOSTICS.get(key, f'source/diagnostic {key}')}"
        self._end(event.assoc, AssociationOutcome.REJECTED, reason)

    def on_released(self, event: evt.Event) -> None:
        self._end(event.assoc, AssociationOutcome.RELEASED, None)

    def on_aborted(self, event: evt.Event) -> None:
        self._end(event.assoc, AssociationOutcome.ABORTED, "A-ABORT")

    def on_closed(self, event: evt.Event) -> None:
        # The peer may close as soon as it reads our last PDU, and this runs on the DUL thread,
        # possibly before the association thread's EVT_RELEASED / EVT_REJECTED: what we sent
        # decides the outcome, not the order of the two events.
        if getattr(event.assoc, "release_answered", False):
            self._end(event.assoc, AssociationOutcome.RELEASED, None)
            return
        answer = event.assoc.acceptor.primitive
        if answer is not None and answer.result in _REJECTED_RESULTS:
            self.on_rejected(event)
            return
        self._end(event.assoc, AssociationOutcome.ABORTED, "connection closed without release")

    def _state(self, assoc: Any) -> _AssociationState | None:
        with self._lock:
            return self._states.get(assoc)

    def _end(self, assoc: Any, outcome: AssociationOutcome, reason: str | None) -> None:
        state = self._state(assoc)
        if state is None or state.ended:
            return
        state.ended = True
        notes = list(state.notes)
        if state.rejected_contexts:
            notes.append("presentation contexts rejected: " + ", ".join(state.rejected_contexts))
        if notes:
            reason = "; ".join([reason, *notes] if reason else notes)
        try:
            self.audit.end_association(
                state.audit_id,
                outcome,
                instances=state.instances,
                nbytes=state.nbytes,
                reason=reason,
            )
        except SQLAlchemyError:
            logger.exception("could not audit the end of association %d", state.audit_id)

    # -- DIMSE services -------------------------------------------------------------------

    def on_c_echo(self, event: evt.Event) -> int:
        return 0x0000

    def on_c_store(self, event: evt.Event) -> int:
        state = self._state(event.assoc)
        request = cast(C_STORE, event.request)
        if state is None or event.dataset_path is None:
            logger.error("C-STORE outside an audited association")
            return int(StoreStatus.PROCESSING_FAILURE)
        received = getattr(request, "_dataset_file", None)
        store_request = StoreRequest(
            temp_path=Path(event.dataset_path),
            received=received if isinstance(received, ReceivedFile) else None,
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            association_id=state.audit_id,
            calling_ae=state.calling_ae,
        )
        result = self.ingest.store(store_request)
        if result.status == StoreStatus.SUCCESS:
            state.instances += 1
            state.nbytes += result.stored_bytes
        return int(result.status)

    def on_n_event_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        state = self._state(event.assoc)
        if self.commitments is None:
            outcome_status = PROCESSING_FAILURE
            note = "storage commitment reports are not handled here"
        else:
            outcome = handle_commitment_report(self.commitments, event)
            outcome_status, note = outcome.status, outcome.note
        if state is not None:
            state.notes.append(note)
        return outcome_status, None
