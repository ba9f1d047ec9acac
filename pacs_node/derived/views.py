"""What each source frame shows: view label, view code and Patient Orientation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

__all__ = ["ANTERIOR", "POSTERIOR", "FrameView", "frame_views"]

ANTERIOR = "399321004"  # SCT, CID 26 Nuclear Medicine Projection
POSTERIOR = "399001007"
_FRAME_LABEL_MAX = 16  # Frame Label Vector is SH


@dataclass(frozen=True, slots=True)
class FrameView:
    """What one source frame shows: a label, a view code and its Patient Orientation."""

    label: str  #: Frame Label Vector value (SH), e.g. ``"ANTERIOR"``
    code: Code | None  #: View Code Sequence item (CID 26), None when unknown
    orientation: tuple[str, str] | None  #: Patient Orientation (row, column), None if unknown


def _axis_letter(cosines: list[float]) -> str:
    """The patient direction (PS3.3 C.7.6.1.1.1) an image axis points along most nearly."""
    axis = int(np.argmax(np.abs(cosines)))
    positive = cosines[axis] > 0
    return ("L" if positive else "R", "P" if positive else "A", "H" if positive else "F")[axis]


def _orientation(iop: object) -> tuple[str, str] | None:
    try:
        values = [float(v) for v in iop]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    if len(values) != 6 or not any(values[:3]) or not any(values[3:]):
        return None
    return _axis_letter(values[:3]), _axis_letter(values[3:])


def _label(code: Code | None, frame: int) -> str:
    if code is None:
        return f"FRAME {frame + 1}"
    if code.value == ANTERIOR:
        return "ANTERIOR"
    if code.value == POSTERIOR:
        return "POSTERIOR"
    text = "".join(c for c in code.meaning.upper() if c.isascii() and (c.isalnum() or c == " "))
    return text.strip()[:_FRAME_LABEL_MAX] or f"FRAME {frame + 1}"


def _view_code(holder: Dataset) -> Code | None:
    """The first View Code Sequence item of ``holder``, if it has a short code value."""
    items = holder.get("ViewCodeSequence") or []
    if not items or not items[0].get("CodeValue"):
        return None
    item = items[0]
    return Code(item.CodeValue, item.CodingSchemeDesignator, str(item.get("CodeMeaning", "")))


def frame_views(source: Dataset, frame_count: int) -> list[FrameView]:
    """The view of each frame, from the NM Detector Module where the source has one.

    Frame i was taken by detector ``DetectorVector[i]`` (PS3.3 C.8.4.8); that detector's
    Detector Information item holds the View Code Sequence and Image Orientation (Patient)
    (C.8.4.11). A single-frame source may carry its own View Code Sequence (SC Image,
    C.8.6.2). Without either, two frames are taken as anterior then posterior (DOMAIN.md
    section 1), and orientation is left unknown rather than guessed.
    """
    detectors = list(source.get("DetectorInformationSequence") or [])
    vector = [int(v) for v in (source.get("DetectorVector") or [])]
    if len(vector) != frame_count:
        vector = list(range(1, frame_count + 1))
    # A Patient Orientation shared by every frame (C.7.6.1.1.1) is the fallback.
    fallback_orientation: tuple[str, str] | None = None
    shared = source.get("PatientOrientation")
    if shared is not None and not isinstance(shared, str) and len(shared) == 2:
        fallback_orientation = (str(shared[0]), str(shared[1]))
    views = []
    for frame, detector in enumerate(vector):
        code: Code | None = None
        orientation = fallback_orientation
        if 1 <= detector <= len(detectors):
            item = detectors[detector - 1]
            code = _view_code(item)
            orientation = _orientation(item.get("ImageOrientationPatient")) or orientation
        if code is None and frame_count == 1:
            code = _view_code(source)
        if code is None and not detectors and frame_count == 2:
            code = (
                Code(ANTERIOR, "SCT", "Anterior projection")
                if frame == 0
                else Code(POSTERIOR, "SCT", "Posterior projection")
            )
        views.append(FrameView(_label(code, frame), code, orientation))
    return views
