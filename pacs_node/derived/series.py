"""Build a derived series from one source instance and its enhanced frames, and write it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pacs_node.derived.derived_nm import build_derived_nm
from pacs_node.derived.labels import check_enhanced
from pacs_node.derived.provenance import ModelProvenance, OutputKind
from pacs_node.derived.secondary_capture import build_multiframe_sc, build_single_frame_sc
from pacs_node.derived.uids import derived_uids

__all__ = ["SERIES_NUMBER_OFFSETS", "build_derived_series", "write_series"]

logger = logging.getLogger(__name__)

#: Added to the source's Series Number when none is given, so each kind of derived series
#: sorts after the acquisition and apart from the other kinds.
SERIES_NUMBER_OFFSETS = {
    OutputKind.MULTIFRAME_SC: 1000,
    OutputKind.SINGLE_FRAME_SC: 2000,
    OutputKind.DERIVED_NM: 3000,
}
_IS_MAX = 2**31 - 1  # Integer String range (PS3.5 6.2)


def _series_number(source: Dataset, kind: OutputKind, series_number: int | None) -> int:
    if series_number is None:
        series_number = int(source.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSETS[kind]
    if not 1 <= series_number <= _IS_MAX:
        raise ValueError(f"series number {series_number!r} is not in 1..{_IS_MAX}")
    return series_number


def build_derived_series(
    source: Dataset,
    enhanced: np.ndarray,
    model: ModelProvenance,
    *,
    kind: OutputKind = OutputKind.MULTIFRAME_SC,
    series_number: int | None = None,
    now: datetime | None = None,
) -> list[Dataset]:
    """The derived objects of one source instance, labelled per DOMAIN.md section 2.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The source image instance (for :attr:`OutputKind.DERIVED_NM`, an NM Image).
    enhanced : ndarray of uint16, shape (frames, rows, columns)
        One enhanced frame per source frame, in the source's frame order; the frame count
        must equal the source's Number of Frames and the frame size its Rows and Columns.
    model : ModelProvenance
        The model that made the frames.
    kind : OutputKind
        Multi-frame Grayscale Word SC (default), single-frame SC per view, or derived NM.
    series_number : int, optional
        Series Number of the derived series; by default the source's plus
        :data:`SERIES_NUMBER_OFFSETS` of the kind.
    now : datetime, optional
        Creation time written into the objects; the current local time by default. UIDs do
        not depend on it.

    Returns
    -------
    list of pydicom.dataset.Dataset
        One instance, or one per frame for single-frame SC, each with file meta for
        Explicit VR Little Endian; same study, new series.

    Raises
    ------
    ValueError
        If the frames do not fit the source (shape, dtype, frame count) or the source lacks
        what the kind needs; the message names the problem.
    """
    kind = OutputKind(kind)
    pixels = check_enhanced(source, enhanced)
    number = _series_number(source, kind, series_number)
    uids = derived_uids(
        str(source.SOPInstanceUID),
        model.sha256,
        kind=kind,
        source_series_instance_uid=str(source.SeriesInstanceUID),
        frame_count=pixels.shape[0],
    )
    when = now if now is not None else datetime.now()
    if kind is OutputKind.MULTIFRAME_SC:
        out = [
            build_multiframe_sc(source, pixels, model, uids=uids, series_number=number, now=when)
        ]
    elif kind is OutputKind.SINGLE_FRAME_SC:
        out = build_single_frame_sc(
            source, pixels, model, uids=uids, series_number=number, now=when
        )
    else:
        out = [build_derived_nm(source, pixels, model, uids=uids, series_number=number, now=when)]
    logger.info(
        "built %d %s instance(s) in series %s with model %s %s",
        len(out),
        kind.value,
        uids.series_instance_uid,
        model.name,
        model.version,
    )
    return out


def write_series(datasets: Iterable[Dataset], out_dir: Path) -> list[Path]:
    """Write derived objects as DICOM Part-10 files named by SOP Instance UID.

    A re-run writes the same names, so it replaces its earlier files.

    Parameters
    ----------
    datasets : iterable of pydicom.dataset.Dataset
        From :func:`build_derived_series` (each with ``file_meta``).
    out_dir : Path
        Folder to write into; created if missing.

    Returns
    -------
    list of Path
        The files written, in the order given.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:
            raise ValueError(f"data set {ds.get('SOPInstanceUID')!r} has no file meta")
        path = out_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
