"""Plain records passed to and from the audit store (no SQL here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PeerInfo:
    """Who asked for an association."""

    calling_ae: str
    called_ae: str
    host: str
    port: int
    tls: bool


@dataclass(frozen=True)
class InstanceFacts:
    """What the audit keeps of a received object (no patient identifiers)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    series_description: str | None
    image_type: str | None
    accession_number: str | None
    study_date: str | None


class Placement(Protocol):
    """A file put in the spool: where, and a wait until it cannot be lost."""

    @property
    def relative(self) -> str: ...

    def wait_durable(self) -> None: ...


@dataclass(frozen=True)
class StoreOutcome:
    """The version a received object was recorded as, and whether it was a duplicate."""

    version: int
    duplicate: bool


@dataclass(frozen=True)
class CompleteSeries:
    """A series whose senders have finished and that has been quiet long enough."""

    series_id: int
    series_instance_uid: str
    modality: str | None
    image_type: str | None
    calling_ae: str
    series_description: str | None
    sop_class_uid: str
