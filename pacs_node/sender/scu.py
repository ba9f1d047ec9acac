"""C-STORE SCU: send files to one PACS destination and read every response.

One association per call; the derived objects' SOP classes are proposed with Explicit and
Implicit VR Little Endian (DOMAIN.md section 3). Each instance's response status is kept, so
the caller can record it and decide on a retry; nothing here retries or raises for a
refusal: an association that is rejected, aborted or never answers, a context the PACS did
not accept, and a failure status all come back as a :class:`SendReport` with the reason.

With a :class:`CommitmentAsk`, a delivery that stored everything ends with a Storage
Commitment request (N-ACTION) on the same association; the result comes later in an
N-EVENT-REPORT, here or on an association the PACS opens to the receiver.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from pacs_node.sender.commitment import (
    COMMITMENT_INSTANCE_UID,
    REQUEST_COMMITMENT_ACTION,
    commitment_request,
)
from pacs_node.sender.status import StoreOutcome, classify_store_status, describe_store_status

__all__ = [
    "CommitmentAnswer",
    "CommitmentAsk",
    "Destination",
    "InstanceResult",
    "SendReport",
    "store_files",
]

#: An EVT_N_EVENT_REPORT handler: (status, reply data set).
ReportHandler = Callable[[Any], tuple[int, Dataset | None]]

logger = logging.getLogger(__name__)

TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Destination:
    """Where to send: the PACS's AE title and address, and TLS when it wants it."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: ssl.SSLContext | None = None
    storage_commitment: bool = False


@dataclass(frozen=True)
class InstanceResult:
    """One instance's fate at one destination."""

    sop_instance_uid: str
    status: int | None
    outcome: StoreOutcome
    reason: str


@dataclass(frozen=True)
class CommitmentAsk:
    """Ask for Storage Commitment once every instance is stored.

    ``before_request`` runs (with the instance count) just before the N-ACTION, to record
    the request where a report arriving at once will find it; ``on_report`` handles a
    report the PACS sends back on this association.
    """

    transaction_uid: str
    before_request: Callable[[int], None]
    on_report: ReportHandler


@dataclass(frozen=True)
class CommitmentAnswer:
    """The PACS's answer to the N-ACTION (the commitment result itself comes later)."""

    transaction_uid: str
    accepted: bool
    reason: str


@dataclass(frozen=True)
class SendReport:
    """Everything one association did; ``association_error`` when it never carried data."""

    destination: str
    results: tuple[InstanceResult, ...] = ()
    association_error: str | None = None
    commitment: CommitmentAnswer | None = None
    failures: tuple[InstanceResult, ...] = field(init=False)

    def __post_init__(self) -> None:
        failed = tuple(r for r in self.results if r.outcome is StoreOutcome.FAILURE)
        object.__setattr__(self, "failures", failed)

    @property
    def delivered(self) -> bool:
        """True when the association ran and every instance was stored (warnings included)."""
        return self.association_error is None and not self.failures and bool(self.results)

    def reason(self) -> str:
        """One line for the audit: why the delivery did not complete, or ``delivered``."""
        if self.association_error is not None:
            return f"{self.destination}: {self.association_error}"
        if self.failures:
            first = self.failures[0]
            more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            return f"{self.destination}: {first.sop_instance_uid}: {first.reason}{more}"
        return f"{self.destination}: delivered"


@dataclass(frozen=True)
class _Outgoing:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str


def _read_headers(files: Sequence[Path]) -> list[_Outgoing]:
    outgoing = []
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            outgoing.append(_Outgoing(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        except (OSError, InvalidDicomError, AttributeError) as exc:
            raise ValueError(f"{path}: not a DICOM object the sender can read ({exc})") from exc
    return outgoing


def store_files(
    destination: Destination,
    files: Sequence[Path],
    *,
    calling_ae: str,
    acse_timeout: float = 30.0,
    dimse_timeout: float = 60.0,
    network_timeout: float = 60.0,
    commitment: CommitmentAsk | None = None,
) -> SendReport:
    """C-STORE ``files`` to ``destination`` over one association.

    Parameters
    ----------
    destination : Destination
        The PACS.
    files : sequence of Path
        DICOM files with File Meta (Explicit or Implicit VR Little Endian).
    calling_ae : str
        This node's AE title.
    acse_timeout, dimse_timeout, network_timeout : float
        Seconds (pynetdicom's timeouts).
    commitment : CommitmentAsk, optional
        Request Storage Commitment after a complete delivery.

    Returns
    -------
    SendReport
        One result per file, in order, or the association's failure.

    Raises
    ------
    ValueError
        A file is not a readable DICOM object (a local fault, not the PACS's).
    """
    outgoing = _read_headers(files)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = (
        acse_timeout,
        dimse_timeout,
        network_timeout,
    )
    for sop_class in dict.fromkeys(item.sop_class_uid for item in outgoing):
        ae.add_requested_context(sop_class, list(TRANSFER_SYNTAXES))
    handlers: list[Any] = []
    if commitment is not None:
        ae.add_requested_context(StorageCommitmentPushModel, list(TRANSFER_SYNTAXES))
        handlers.append((evt.EVT_N_EVENT_REPORT, commitment.on_report))
    rejection: list[str] = []

    def on_rejected(event: Any) -> None:
        primitive = event.assoc.acceptor.primitive if event.assoc.acceptor else None
        detail = (
            f"result {primitive.result_str}, source {primitive.source_str}, "
            f"reason {primitive.reason_str}"
            if primitive is not None
            else "no details"
        )
        rejection.append(detail)

    tls_args = (destination.tls, destination.host) if destination.tls is not None else None
    try:
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_REJECTED, on_rejected), *handlers],
        )
    except (OSError, ssl.SSLError) as exc:
        return SendReport(destination.name, association_error=f"cannot connect: {exc}")
    if not assoc.is_established:
        if assoc.is_rejected:
            error = "association rejected" + (f" ({rejection[0]})" if rejection else "")
        elif assoc.is_aborted:
            error = "association aborted by the peer"
        else:
            error = f"no association with {destination.host}:{destination.port}"
        return SendReport(destination.name, association_error=error)
    results = []
    answer = None
    try:
        for item in outgoing:
            results.append(_store_one(assoc, item))
            if not assoc.is_established:
                break
        stored_all = len(results) == len(outgoing) and all(
            r.outcome is not StoreOutcome.FAILURE for r in results
        )
        if commitment is not None and stored_all and assoc.is_established:
            answer = _request_commitment(assoc, commitment, outgoing)
    finally:
        if assoc.is_established:
            assoc.release()
    # Instances the association did not live to send fail with that reason.
    for item in outgoing[len(results) :]:
        results.append(
            InstanceResult(
                item.sop_instance_uid, None, StoreOutcome.FAILURE, "association ended first"
            )
        )
    return SendReport(destination.name, results=tuple(results), commitment=answer)


def _request_commitment(
    assoc: Any, ask: CommitmentAsk, outgoing: Sequence[_Outgoing]
) -> CommitmentAnswer:
    uid = ask.transaction_uid
    request = commitment_request(uid, [(o.sop_class_uid, o.sop_instance_uid) for o in outgoing])
    ask.before_request(len(outgoing))
    try:
        status, _reply = assoc.send_n_action(
            request, REQUEST_COMMITMENT_ACTION, StorageCommitmentPushModel, COMMITMENT_INSTANCE_UID
        )
    except ValueError:  # pynetdicom: the PACS did not accept the SOP class
        reason = "the PACS did not accept the Storage Commitment Push Model SOP class"
        return CommitmentAnswer(uid, False, reason)
    code = int(status.Status) if "Status" in status else None
    if code is None:
        reason = (
            "no N-ACTION response: the PACS closed the association or did not answer "
            "within the DIMSE timeout (is this node among its known modalities?)"
        )
        return CommitmentAnswer(uid, False, reason)
    if code != 0x0000:
        comment = f": {status.ErrorComment}" if "ErrorComment" in status else ""
        return CommitmentAnswer(uid, False, f"N-ACTION refused with 0x{code:04X}{comment}")
    return CommitmentAnswer(uid, True, "requested; awaiting the N-EVENT-REPORT")


def _store_one(assoc: Any, item: _Outgoing) -> InstanceResult:
    try:
        response = assoc.send_c_store(item.path)
    except ValueError as exc:  # pynetdicom: no accepted presentation context for the class
        return InstanceResult(
            item.sop_instance_uid, None, StoreOutcome.FAILURE, f"not accepted: {exc}"
        )
    status = int(response.Status) if "Status" in response else None
    outcome = classify_store_status(status)
    reason = describe_store_status(status)
    if status is not None and "ErrorComment" in response:
        reason = f"{reason}: {response.ErrorComment}"
    if outcome is not StoreOutcome.SUCCESS:
        logger.warning("C-STORE of %s: %s", item.sop_instance_uid, reason)
    return InstanceResult(item.sop_instance_uid, status, outcome, reason)
