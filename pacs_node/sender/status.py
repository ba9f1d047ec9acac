"""What a C-STORE response status means for a sender (PS3.4 B.2.3, PS3.7 C).

Every response is read: success (0x0000), warnings (0xB000 coercion, 0xB006 elements
discarded, 0xB007 data set does not match the SOP class) that still mean the object is
stored, and failures (0xA7xx out of resources, 0xA9xx data set does not match, 0xCxxx
cannot understand, 0x01xx general refusals) that mean it is not. A missing status (the
association went away first) is a failure too.
"""

from __future__ import annotations

from enum import StrEnum

from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS, code_to_category

__all__ = ["StoreOutcome", "classify_store_status", "describe_store_status"]


class StoreOutcome(StrEnum):
    """What became of one instance at one destination."""

    SUCCESS = "success"  # 0x0000: stored
    WARNING = "warning"  # 0xB000, 0xB006, 0xB007: stored, with a remark
    FAILURE = "failure"  # any other status, or none: not stored


def classify_store_status(status: int | None) -> StoreOutcome:
    """The outcome a C-STORE response status stands for; ``None`` (no response) fails."""
    if status is None:
        return StoreOutcome.FAILURE
    category = code_to_category(status)
    if category == "Success":
        return StoreOutcome.SUCCESS
    if category == "Warning":
        return StoreOutcome.WARNING
    return StoreOutcome.FAILURE


def describe_store_status(status: int | None) -> str:
    """``0xA700 Refused: Out of Resources``: the code and PS3.4's words for it."""
    if status is None:
        return "no response"
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status) or GENERAL_STATUS.get(status)
    words = meaning[1] if meaning is not None and meaning[1] else code_to_category(status)
    return f"0x{status:04X} {words}"
