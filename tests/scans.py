"""Synthetic scans shaped for receiver tests: series of several instances, bad objects."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs_node.synth import synthetic_scan_dataset, write_nm


def series_files(
    out_dir: Path, count: int, *, seed: int = 1, series_description: str | None = None
) -> list[Path]:
    """``count`` NM instances of one new series in one new study."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        ds = synthetic_scan_dataset(seed, index)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        if series_description is not None:
            ds.SeriesDescription = series_description
        renumber(ds)
        paths.append(write_nm(out_dir / f"{index:04d}.dcm", ds))
    return paths


def renumber(ds: Dataset) -> Dataset:
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def variant(path: Path, out: Path, **changes: object) -> Path:
    """A copy of ``path`` with attributes changed (``None`` deletes one)."""
    ds = dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(out, enforce_file_format=True)
    return out


def dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part-10 file (after preamble and File Meta Information)."""
    ds = dcmread(path, stop_before_pixels=False)
    with path.open("rb") as f:
        f.seek(0)
        raw = f.read()
    # File Meta group length tells where the meta group ends: 132 + 12 + length.
    meta_length = int(ds.file_meta.FileMetaInformationGroupLength)
    return raw[132 + 12 + meta_length :]
