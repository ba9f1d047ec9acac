"""What happens to one received object: check, seal, place in the spool, audit, answer.

Protocol-free: the C-STORE handler hands over the temporary file and the association's
identity and sends back the status this returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pacs_node.audit.models import StoreEventKind
from pacs_node.audit.store import AuditStore, InstanceFacts
from pacs_node.receiver.header_walk import HEADER_KEYWORDS, walk_header
from pacs_node.receiver.received_file import HEAD_BYTES, ReceivedDigest
from pacs_node.receiver.spool import Placement, Sealing, Spool, is_path_safe_uid
from pacs_node.receiver.status import StoreStatus

logger = logging.getLogger(__name__)

_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_MAX_INSERT_ATTEMPTS = 5


class Receipt(Protocol):
    """A data set received into a file that hashed it as it was written (ReceivedFile)."""

    def digest(self) -> ReceivedDigest:
        """The digest and head, once the hashing of the last fragment is done."""
        ...


@dataclass(frozen=True)
class StoreRequest:
    """One C-STORE as the handler saw it."""

    temp_path: Path
    sop_class_uid: str  #: Affected SOP Class UID of the command
    sop_instance_uid: str  #: Affected SOP Instance UID of the command
    transfer_syntax_uid: str
    association_id: int
    calling_ae: str
    #: The digest and head taken while the file was written; None when it must be read.
    received: Receipt | None = None


@dataclass(frozen=True)
class StoreResult:
    status: StoreStatus
    reason: str
    stored_bytes: int = 0


class HeaderError(ValueError):
    """The data set cannot be used; ``status`` says which refusal applies."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _text(value: object) -> str | None:
    if value is None:
        return None
    return str(value).strip() or None


_HEADER_TAG_NUMBERS: list[BaseTag | int] = [Tag(keyword) for keyword in HEADER_KEYWORDS]
_LAST_HEADER_TAG = max(_HEADER_TAG_NUMBERS)


def _past_header_tags(tag: BaseTag, vr: str | None, length: int) -> bool:
    # Everything the node reads lies in groups 0008 and 0020: stopping there skips the
    # NM sequences of group 0054, which would otherwise be parsed only to be dropped.
    return bool(tag > _LAST_HEADER_TAG)


def _read_header(source: Path | BytesIO) -> dict[str, Any]:
    with source.open("rb") if isinstance(source, Path) else source as f:
        ds = read_partial(f, stop_when=_past_header_tags, specific_tags=_HEADER_TAG_NUMBERS)
    return {keyword: ds.get(keyword) for keyword in HEADER_KEYWORDS}


def read_header(path: Path, received: ReceivedDigest | None = None) -> dict[str, Any]:
    """The attributes routing and the audit need, parsed from the start of ``path``.

    The in-memory head (``received.head``, or the file's first bytes) is walked directly
    (:func:`walk_header`); where that walk cannot stand in for pydicom, pydicom parses the
    head, and a header longer than the head (or one the truncation breaks) the file.
    """
    if received is not None:
        head, whole = received.head, received.size <= len(received.head)
    else:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
            whole = not f.read(1)
    header = walk_header(head, whole=whole)
    if header is not None and all(header[k] for k in _REQUIRED_UIDS):
        return header
    try:
        header = _read_header(BytesIO(head))
    except (InvalidDicomError, ValueError, KeyError, EOFError, TypeError, IndexError):
        if whole:
            raise
        header = {}
    if whole or all(header.get(k) for k in _REQUIRED_UIDS):
        return header
    return _read_header(path)


def read_facts(req: StoreRequest, received: ReceivedDigest | None) -> InstanceFacts:
    """Read the header of the received file (its head in ``received`` when there is one)
    and check the UIDs the node relies on."""
    try:
        header = read_header(req.temp_path, received)
    except Exception as exc:
        # Untrusted bytes: anything pydicom raises (zlib.error for a corrupt deflate stream,
        # struct.error, ValueError, ...) means the data set does not decode.
        raise HeaderError(
            StoreStatus.CANNOT_UNDERSTAND,
            f"data set does not decode: {type(exc).__name__}: {str(exc)[:120]}",
        ) from None
    missing = [k for k in _REQUIRED_UIDS if not _text(header[k])]
    if missing:
        raise HeaderError(
            StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"data set lacks {', '.join(missing)}"
        )
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not is_path_safe_uid(str(header[keyword]).strip()):
            raise HeaderError(
                StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                f"{keyword} {str(header[keyword])[:70]!r} is not a valid UID",
            )
    if str(header["SOPClassUID"]).strip() != req.sop_class_uid:
        raise HeaderError(
            StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            f"SOP Class UID {header['SOPClassUID']} differs from the command's {req.sop_class_uid}",
        )
    if str(header["SOPInstanceUID"]).strip() != req.sop_instance_uid:
        raise HeaderError(
            StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Instance UID in the data set differs from the command's",
        )
    image_type = header["ImageType"]
    if image_type is not None and not isinstance(image_type, str):
        image_type = "\\".join(str(v) for v in image_type)
    return InstanceFacts(
        sop_class_uid=req.sop_class_uid,
        sop_instance_uid=req.sop_instance_uid,
        study_instance_uid=str(header["StudyInstanceUID"]).strip(),
        series_instance_uid=str(header["SeriesInstanceUID"]).strip(),
        transfer_syntax_uid=req.transfer_syntax_uid,
        modality=_text(header["Modality"]),
        series_description=(_text(header["SeriesDescription"]) or "")[:64] or None,
        image_type=_text(image_type),
        accession_number=(_text(header["AccessionNumber"]) or "")[:16] or None,
        study_date=(_text(header["StudyDate"]) or "")[:8] or None,
    )


class Ingest:
    """Turns a received temporary file into a durable, audited instance."""

    def __init__(
        self,
        *,
        spool: Spool,
        audit: AuditStore,
        accepted_sop_classes: frozenset[str],
        min_free_bytes: int,
    ) -> None:
        self.spool = spool
        self.audit = audit
        self.accepted_sop_classes = accepted_sop_classes
        self.min_free_bytes = min_free_bytes

    def store(self, req: StoreRequest) -> StoreResult:
        """Store ``req`` and return the status to send. Every refusal is audited."""
        if req.sop_class_uid not in self.accepted_sop_classes:
            return self._refuse(
                req,
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                f"SOP class {req.sop_class_uid} is not accepted by this node's configuration",
            )
        free = self.spool.free_bytes()
        if free < self.min_free_bytes:
            return self._refuse(
                req,
                StoreStatus.OUT_OF_RESOURCES,
                f"free disk {free // 2**20} MiB is below the floor of "
                f"{self.min_free_bytes // 2**20} MiB",
            )
        try:
            # Read while the last fragments are still being hashed: the two overlap.
            versions = self.audit.stored_versions(req.sop_instance_uid)
        except SQLAlchemyError as exc:
            return self._cannot_store(req, exc)
        received = req.received.digest() if req.received is not None else None
        sealing = self.spool.start_seal(req.temp_path, received)
        try:
            facts = read_facts(req, received)
        except HeaderError as exc:
            return self._refuse(req, exc.status, str(exc))
        try:
            return self._store_durably(req, facts, sealing, versions)
        except (OSError, SQLAlchemyError) as exc:
            return self._cannot_store(req, exc, series_uid=facts.series_instance_uid)

    def _cannot_store(
        self, req: StoreRequest, exc: Exception, *, series_uid: str | None = None
    ) -> StoreResult:
        logger.error("could not store an instance", exc_info=exc)
        return self._refuse(
            req,
            StoreStatus.PROCESSING_FAILURE,
            f"could not store the object: {type(exc).__name__}: {str(exc)[:200]}",
            series_uid=series_uid,
        )

    def _store_durably(
        self,
        req: StoreRequest,
        facts: InstanceFacts,
        sealing: Sealing,
        versions: list[tuple[int, str]],
    ) -> StoreResult:
        sealed = sealing.digest.result()
        relative = self.spool.relative_path(
            facts.study_instance_uid,
            facts.series_instance_uid,
            facts.sop_instance_uid,
            sealed.sha256,
        )

        # New bytes are linked into the spool at once, so the directory fsync runs beside
        # the file's while the audit DB is asked for earlier versions.
        placed = self.spool.place_new(sealed, relative, sealing.synced)

        def place(_version: int) -> Placement:
            nonlocal placed
            if placed is None:
                # A file with this digest is there but the DB has no row for it: a crash
                # came between its placement and its commit. Replace it with these bytes.
                placed = self.spool.replace(sealed, relative, sealing.synced)
            return placed

        known: list[tuple[int, str]] | None = versions
        for _attempt in range(_MAX_INSERT_ATTEMPTS):
            try:
                outcome = self.audit.store_instance(
                    facts,
                    association_id=req.association_id,
                    calling_ae=req.calling_ae,
                    sha256=sealed.sha256,
                    size_bytes=sealed.size,
                    place=place,
                    known_versions=known,
                )
            except IntegrityError:
                # Another receiver stored this SOP Instance UID meanwhile: look again.
                known = None
                continue
            if outcome.duplicate:
                return StoreResult(StoreStatus.SUCCESS, f"duplicate of version {outcome.version}")
            reason = "stored" if outcome.version == 1 else f"stored as version {outcome.version}"
            return StoreResult(StoreStatus.SUCCESS, reason, sealed.size)
        raise OSError(f"gave up after {_MAX_INSERT_ATTEMPTS} concurrent versions of one instance")

    def _refuse(
        self,
        req: StoreRequest,
        status: StoreStatus,
        reason: str,
        *,
        series_uid: str | None = None,
    ) -> StoreResult:
        logger.warning("refused C-STORE with 0x%04X: %s", status, reason)
        try:
            self.audit.record_store_event(
                StoreEventKind.REJECTED,
                status,
                reason,
                association_id=req.association_id,
                sop_class_uid=req.sop_class_uid[:64],
                sop_instance_uid=req.sop_instance_uid[:64],
                series_instance_uid=series_uid,
            )
        except SQLAlchemyError:
            logger.exception("could not audit a refused C-STORE")
        return StoreResult(status, reason)
