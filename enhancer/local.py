"""Local use: enhance NM DICOM files on disk (``pacs-node enhance``).

Reads each file (any transfer syntax pydicom can decode), runs the enhancer, and writes
the enhanced frames as the same labelled derived series that goes to PACS
(:mod:`pacs_node.derived`: multi-frame SC by default), or PNG previews (rapid | enhanced,
side by side per frame) with ``preview=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from enhancer.runtime import EnhancementResult, Enhancer, EnhancerInputError
from pacs_node.derived import ModelProvenance, OutputKind, build_derived_series, write_series

__all__ = ["EnhanceFileError", "EnhancedFile", "enhance_file", "read_nm_frames"]

logger = logging.getLogger(__name__)

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"


class EnhanceFileError(ValueError):
    """A file that cannot be enhanced; the message names the file and why."""


@dataclass(frozen=True)
class EnhancedFile:
    """What became of one input file."""

    source: Path
    outputs: tuple[Path, ...]
    result: EnhancementResult


def read_nm_frames(path: Path) -> tuple[Dataset, np.ndarray]:
    """The data set and its frames as uint16 [frames, rows, columns].

    Raises
    ------
    EnhanceFileError
        Not DICOM, not an NM image, or pixel data that does not decode.
    """
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        raise EnhanceFileError(f"{path}: not a readable DICOM file ({exc})") from None
    if ds.get("Modality") != "NM" or ds.get("SOPClassUID") != NM_IMAGE_STORAGE:
        raise EnhanceFileError(
            f"{path}: modality {ds.get('Modality')!r} / SOP class {ds.get('SOPClassUID')!r} "
            "is not an NM Image Storage object"
        )
    try:
        pixels = ds.pixel_array
    except (AttributeError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise EnhanceFileError(f"{path}: pixel data does not decode ({exc})") from None
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.ndim != 3 or pixels.dtype.kind not in "ui":
        raise EnhanceFileError(
            f"{path}: expected grayscale count frames, got {pixels.dtype} of shape {pixels.shape}"
        )
    if pixels.dtype.kind == "i" and (pixels < 0).any():
        raise EnhanceFileError(f"{path}: pixel data holds negative counts")
    return ds, pixels.astype(np.uint16, copy=False)


def _window(counts: np.ndarray, top: float) -> np.ndarray:
    # A square-root window shows bladder and distal limbs in one 8-bit image.
    scaled = np.sqrt(counts.astype(np.float64) / max(top, 1.0))
    return np.clip(scaled * 255.0, 0, 255).astype(np.uint8)


def _previews(stem: str, rapid: np.ndarray, enhanced: np.ndarray, out_dir: Path) -> list[Path]:
    paths = []
    for index, (before, after) in enumerate(zip(rapid, enhanced, strict=True)):
        top = float(np.percentile(after, 99.9))
        # The rapid frame is shown at the enhanced scale so both read alike.
        scale = float(after.sum()) / max(float(before.sum()), 1.0)
        row = np.concatenate([_window(before * scale, top), _window(after, top)], axis=1)
        path = out_dir / f"{stem}_frame{index + 1}.png"
        Image.fromarray(row).save(path)
        paths.append(path)
    return paths


def enhance_file(
    enhancer: Enhancer,
    path: Path,
    out_dir: Path,
    *,
    preview: bool = False,
    kind: OutputKind = OutputKind.MULTIFRAME_SC,
) -> EnhancedFile:
    """Enhance one NM file into ``out_dir``; see the module docstring.

    Derived UIDs depend only on the source and the model, so files of one source series
    land in one derived series and a re-run overwrites rather than duplicates.
    """
    ds, frames = read_nm_frames(path)
    try:
        result = enhancer.enhance_with_qc(frames)
    except EnhancerInputError as exc:
        raise EnhanceFileError(f"{path}: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    if preview:
        outputs = _previews(path.stem, frames, result.counts, out_dir)
    else:
        provenance = ModelProvenance(
            name=result.model_name,
            version=result.model_version,
            sha256=result.model_sha256,
            profile=result.profile.value,
        )
        try:
            derived = build_derived_series(ds, result.counts, provenance, kind=kind)
        except ValueError as exc:
            raise EnhanceFileError(f"{path}: cannot build the derived series ({exc})") from None
        outputs = write_series(derived, out_dir)
    if not result.qc.passed:
        logger.warning("%s: count-fidelity QC failed: %s", path.name, result.qc.reason)
    return EnhancedFile(source=path, outputs=tuple(outputs), result=result)


def enhance_files(
    enhancer: Enhancer,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    preview: bool = False,
    kind: OutputKind = OutputKind.MULTIFRAME_SC,
    progress: Callable[[Sequence[Path]], Iterable[Path]] | None = None,
) -> list[EnhancedFile]:
    """Enhance many files; one derived series per source series."""
    return [
        enhance_file(enhancer, path, out_dir, preview=preview, kind=kind)
        for path in (progress(inputs) if progress is not None else inputs)
    ]
