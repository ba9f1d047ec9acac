"""Storage Commitment Push Model (PS3.4 Annex J): the request we send, the report we get.

After the C-STOREs of a delivery the node asks the PACS to take responsibility for the
instances (N-ACTION, Action Type 1). The PACS answers later with an N-EVENT-REPORT, on the
same association or, as Orthanc and most archives do, on a new association it opens to the
node's receiver: Event Type 1 when every instance is committed, 2 when some failed, each
failure with a reason code (PS3.3 C.14.1.1). Pure functions here; the audit row and the
DIMSE exchange live with the sender and the receiver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset

__all__ = [
    "COMMITMENT_INSTANCE_UID",
    "CommitmentReport",
    "FailedInstance",
    "UnknownEventTypeError",
    "commitment_request",
    "describe_failure_reason",
    "parse_commitment_report",
]

#: The Storage Commitment Push Model SOP Instance (PS3.4 J.3.5, well-known).
COMMITMENT_INSTANCE_UID = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT_ACTION = 1
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2

_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}


def describe_failure_reason(code: int | None) -> str:
    """A Failure Reason (0008,1197) in words, with its code."""
    if code is None:
        return "no failure reason given"
    return f"0x{code:04X} {_FAILURE_REASONS.get(code, 'unknown failure reason')}"


def commitment_request(transaction_uid: str, instances: Sequence[tuple[str, str]]) -> Dataset:
    """The N-ACTION Action Information: Transaction UID and the (class, instance) pairs."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class_uid, sop_instance_uid in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


class UnknownEventTypeError(ValueError):
    """An N-EVENT-REPORT whose Event Type is not a Storage Commitment result."""


@dataclass(frozen=True)
class FailedInstance:
    sop_instance_uid: str
    reason: str


@dataclass(frozen=True)
class CommitmentReport:
    """What one N-EVENT-REPORT said about one transaction."""

    transaction_uid: str
    event_type: int
    committed: tuple[str, ...]
    failed: tuple[FailedInstance, ...]

    @property
    def all_committed(self) -> bool:
        return self.event_type == EVENT_ALL_COMMITTED and not self.failed


def parse_commitment_report(event_type: int | None, info: Dataset | None) -> CommitmentReport:
    """Read an N-EVENT-REPORT's Event Information.

    Raises
    ------
    UnknownEventTypeError
        Another event type than 1 or 2.
    ValueError
        No Transaction UID.
    """
    if event_type not in (EVENT_ALL_COMMITTED, EVENT_FAILURES_EXIST):
        raise UnknownEventTypeError(
            f"event type {event_type} is not a storage commitment result (1 or 2)"
        )
    if info is None or not info.get("TransactionUID"):
        raise ValueError("the event information has no Transaction UID (0008,1195)")
    transaction_uid = str(info.TransactionUID)
    committed = tuple(
        str(item.get("ReferencedSOPInstanceUID", ""))
        for item in info.get("ReferencedSOPSequence", [])
    )
    failed = tuple(
        FailedInstance(
            str(item.get("ReferencedSOPInstanceUID", "")),
            describe_failure_reason(item.get("FailureReason")),
        )
        for item in info.get("FailedSOPSequence", [])
    )
    return CommitmentReport(transaction_uid, int(event_type), committed, failed)
