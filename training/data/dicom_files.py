"""Find NM whole-body files in folders, read their headers and decode their counts.

Shared by the thinned and the registered DICOM pair datasets. Patient ID and Study Instance
UID are only hashed into a grouping key: nothing here keeps or logs patient data. A file is
named in errors and provenance by its file name and a short digest of its full path (a folder
name may carry a patient's name; a bare file name such as ``IM0001`` may repeat).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

__all__ = [
    "NM_IMAGE_STORAGE",
    "NMFile",
    "PathsLike",
    "SkipReason",
    "UnusableFileError",
    "as_paths",
    "find_nm_files",
    "read_nm_counts",
    "read_nm_header",
]

logger = logging.getLogger(__name__)

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
_UINT16_MAX = int(np.iinfo(np.uint16).max)

#: A file or folder, or several.
PathsLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


class SkipReason(StrEnum):
    """Why a file found in a folder is not used."""

    NOT_DICOM = "not a readable DICOM file"
    NOT_NM = "not an NM Image Storage object"
    NOT_COUNTS = "pixel values are not grayscale counts"
    DUPLICATE = "same SOP Instance UID as a file already found"
    WRONG_SPEED = "not at the standard scan speed"


class UnusableFileError(ValueError):
    """A file that cannot serve as training data; the message names it and says why."""

    def __init__(self, path: Path, reason: SkipReason, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"{path}: {reason.value}{suffix}")


@dataclass(frozen=True, slots=True)
class NMFile:
    """Header facts of one NM Image Storage file.

    Attributes
    ----------
    path : Path
        Where it is.
    label : str
        File name and a digest of the full path: provenance without patient data.
    group : str
        Digest of (Patient ID, Study Instance UID): files of one study share it.
    sop_instance_uid : str
        For spotting resends.
    rows, cols, frames : int
        Frame size and number of frames.
    scan_velocity_mm_s : float or None
        Scan Velocity (0018,1300), mm/s; None when absent or zero (static images).
    views : tuple of str
        One key per frame: the View Code Sequence code value of the frame's detector
        (PS3.3 C.8.4.11), ``"frame N"`` for every frame when any is missing.
    """

    path: Path
    label: str
    group: str
    sop_instance_uid: str
    rows: int
    cols: int
    frames: int
    scan_velocity_mm_s: float | None
    views: tuple[str, ...]

    def frame_label(self, frame: int) -> str:
        """Provenance of one frame, counted from 1 as in DICOM."""
        return f"dicom:{self.label}:frame={frame + 1}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _frame_views(ds: Dataset, frames: int) -> tuple[str, ...]:
    """View key of each frame, via Detector Vector into the Detector Information Sequence."""
    fallback = tuple(f"frame {frame + 1}" for frame in range(frames))
    items = list(ds.get("DetectorInformationSequence") or [])
    detectors = [int(str(value)) for value in _as_list(ds.get("DetectorVector"))]
    if len(detectors) != frames:
        detectors = list(range(1, frames + 1))
    keys: list[str] = []
    seen: Counter[str] = Counter()
    for detector in detectors:
        if not 1 <= detector <= len(items):
            return fallback
        views = items[detector - 1].get("ViewCodeSequence")
        code = views[0].get("CodeValue") if views else None
        if not code:
            return fallback
        # Several energy windows repeat a detector: number the repeats.
        keys.append(f"{code}" if not seen[code] else f"{code}#{seen[code]}")
        seen[code] += 1
    return tuple(keys)


def _velocity(ds: Dataset) -> float | None:
    value = ds.get("ScanVelocity")
    if value is None or str(value).strip() == "":
        return None
    velocity = float(value)
    return velocity if velocity > 0 else None


def read_nm_header(path: Path) -> NMFile:
    """Read the header of one file (no pixel data).

    Raises
    ------
    UnusableFileError
        Not DICOM, not NM Image Storage, or pixel values that are not plain counts
        (colour, or a rescale other than slope 1 / intercept 0).
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError) as exc:
        raise UnusableFileError(path, SkipReason.NOT_DICOM, type(exc).__name__) from None
    modality, sop_class = ds.get("Modality"), ds.get("SOPClassUID")
    if modality != "NM" or sop_class != NM_IMAGE_STORAGE:
        detail = f"modality {modality!r}, SOP class {sop_class!r}"
        raise UnusableFileError(path, SkipReason.NOT_NM, detail)
    samples = int(ds.get("SamplesPerPixel", 1))
    slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    if samples != 1 or slope != 1.0 or intercept != 0.0:
        detail = f"samples per pixel {samples}, rescale {slope:g}/{intercept:g}"
        raise UnusableFileError(path, SkipReason.NOT_COUNTS, detail)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    resolved = str(path.resolve())
    return NMFile(
        path=path,
        label=f"{path.name}#{_digest(resolved)[:8]}",
        group=_digest(str(ds.get("PatientID", "")), str(ds.get("StudyInstanceUID", ""))),
        sop_instance_uid=str(ds.get("SOPInstanceUID", resolved)),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        frames=frames,
        scan_velocity_mm_s=_velocity(ds),
        views=_frame_views(ds, frames),
    )


def as_paths(paths: PathsLike) -> list[Path]:
    """One path (``str`` or path-like, as an options file gives it) or several, as a list."""
    if isinstance(paths, str | os.PathLike):
        return [Path(paths)]
    return [Path(path) for path in paths]


def _candidates(paths: PathsLike) -> tuple[list[tuple[Path, bool]], list[Path]]:
    """(file, named explicitly) for every input file, and the folders searched."""
    entries = as_paths(paths)
    if not entries:
        raise ValueError("no files or folders given")
    files: list[tuple[Path, bool]] = []
    folders: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            folders.append(entry)
            found = sorted(path for path in entry.rglob("*") if path.is_file())
            if not found:
                raise ValueError(f"{entry}: folder holds no files")
            files.extend((path, False) for path in found)
        elif entry.is_file():
            files.append((entry, True))
        else:
            raise ValueError(f"{entry}: no such file or folder")
    return files, folders


def find_nm_files(
    paths: PathsLike,
    *,
    strict: bool = False,
    accept: Callable[[NMFile], str | None] | None = None,
) -> list[NMFile]:
    """Find usable NM Image Storage files among files and folders (searched recursively).

    Parameters
    ----------
    paths : path or sequence of paths
        Files and folders (``str`` or path-like).
    strict : bool
        Refuse any unusable file found in a folder too; by default such files are skipped,
        counted and logged. A file named directly is always refused.
    accept : callable, optional
        Further check of a header; returns None to keep the file, else the reason to refuse
        it (counted under :attr:`SkipReason.WRONG_SPEED`).

    Returns
    -------
    list of NMFile
        In the order found (folders sorted by path), resends dropped.

    Raises
    ------
    ValueError
        A missing path, an empty folder, a refused file (naming it), or nothing usable.
    """
    candidates, folders = _candidates(paths)
    found: list[NMFile] = []
    seen: set[str] = set()
    skipped: Counter[SkipReason] = Counter()
    for path, explicit in candidates:
        try:
            header = read_nm_header(path)
            refusal = accept(header) if accept is not None else None
            if refusal is not None:
                raise UnusableFileError(path, SkipReason.WRONG_SPEED, refusal)
            if header.sop_instance_uid in seen:
                raise UnusableFileError(path, SkipReason.DUPLICATE)
        except UnusableFileError as exc:
            if explicit or strict:
                raise
            skipped[exc.reason] += 1
            logger.debug("skipping %s: %s", path.name, exc.reason.value)
            continue
        seen.add(header.sop_instance_uid)
        found.append(header)
    frames = sum(header.frames for header in found)
    reasons = ", ".join(f"{count} {reason.value}" for reason, count in skipped.items())
    logger.info(
        "found %d NM files (%d frames) among %d files; skipped %d%s",
        len(found),
        frames,
        len(candidates),
        sum(skipped.values()),
        f" ({reasons})" if reasons else "",
    )
    if not found:
        where = ", ".join(str(folder) for folder in folders) or "the files given"
        raise ValueError(f"{where}: no usable NM Image Storage files ({reasons or 'none found'})")
    return found


def read_nm_counts(header: NMFile) -> npt.NDArray[np.uint16]:
    """Decode the frames of one file (any transfer syntax pydicom can decode).

    Returns
    -------
    ndarray of uint16, shape (frames, rows, cols)
        Counts as stored.

    Raises
    ------
    ValueError
        Pixel data that does not decode, does not match the header, or holds negative or
        larger than 16-bit counts; the message names the file.
    """
    path = header.path
    try:
        pixels = np.asarray(pydicom.dcmread(path).pixel_array)
    except (
        InvalidDicomError,
        OSError,
        ValueError,
        AttributeError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        raise ValueError(f"{path}: pixel data does not decode ({exc})") from None
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.shape != (header.frames, header.rows, header.cols) or pixels.dtype.kind not in "ui":
        raise ValueError(
            f"{path}: expected {header.frames}x{header.rows}x{header.cols} integer counts, "
            f"got {pixels.dtype} of shape {pixels.shape}"
        )
    if pixels.size and (int(pixels.min()) < 0 or int(pixels.max()) > _UINT16_MAX):
        raise ValueError(f"{path}: counts outside 0-{_UINT16_MAX}")
    return pixels.astype(np.uint16, copy=False)
