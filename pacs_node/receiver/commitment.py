"""Take a Storage Commitment N-EVENT-REPORT from a PACS and settle its audit row.

The same handler serves a report on the receiver (a new association from the PACS, the
usual case) and on the sender's own association. Statuses are PS3.7 10.1.1.1.8: a report
we cannot read, or about a transaction we never asked for, gets a refusal the PACS can
log; one we could not record gets 0x0110 so the PACS sends it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from pacs_node.audit.commitment_store import CommitmentStore
from pacs_node.sender.commitment import UnknownEventTypeError, parse_commitment_report

__all__ = ["PROCESSING_FAILURE", "ReportOutcome", "handle_commitment_report"]

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_EVENT_TYPE = 0x0113
INVALID_ARGUMENT_VALUE = 0x0115


@dataclass(frozen=True)
class ReportOutcome:
    """The status answered and, for the association's audit row, what happened."""

    status: int
    note: str


def handle_commitment_report(store: CommitmentStore, event: Any) -> ReportOutcome:
    """Record the report in ``event`` (an ``EVT_N_EVENT_REPORT``)."""
    request = event.request
    event_type = getattr(request, "EventTypeID", None)
    try:
        info = event.event_information
        report = parse_commitment_report(event_type, info)
    except UnknownEventTypeError as exc:
        return _refuse(NO_SUCH_EVENT_TYPE, f"storage commitment report refused: {exc}")
    except ValueError as exc:
        return _refuse(INVALID_ARGUMENT_VALUE, f"storage commitment report refused: {exc}")
    except Exception as exc:  # pydicom raises a variety of errors on a malformed data set
        reason = f"storage commitment report does not decode: {type(exc).__name__}"
        return _refuse(INVALID_ARGUMENT_VALUE, reason)
    assoc = event.assoc
    peer = assoc.requestor if assoc.is_acceptor else assoc.acceptor
    reported_by = f"{str(peer.ae_title).strip()}@{peer.address}"
    try:
        job_id = store.record_report(report, reported_by=reported_by)
    except SQLAlchemyError:
        logger.exception("could not record storage commitment %s", report.transaction_uid)
        return ReportOutcome(PROCESSING_FAILURE, "storage commitment report not recorded")
    if job_id is None:
        return _refuse(
            INVALID_ARGUMENT_VALUE,
            f"storage commitment report for unknown transaction {report.transaction_uid}",
        )
    if report.all_committed:
        note = f"job {job_id}: {len(report.committed)} instance(s) committed"
        logger.info("storage commitment %s: %s", report.transaction_uid, note)
    else:
        note = f"job {job_id}: {len(report.failed)} instance(s) not committed"
        logger.warning("storage commitment %s: %s", report.transaction_uid, note)
    return ReportOutcome(SUCCESS, note)


def _refuse(status: int, note: str) -> ReportOutcome:
    logger.warning("%s (answered 0x%04X)", note, status)
    return ReportOutcome(status, note)
