"""The direct header walk gives what pydicom gives, or hands the file to pydicom."""

from __future__ import annotations

import os
import subprocess
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from pacs_node.receiver.header_walk import walk_header
from pacs_node.receiver.ingest import _read_header, read_header
from pacs_node.receiver.received_file import HEAD_BYTES, ReceivedDigest
from pacs_node.synth import synthetic_scan_dataset, write_nm

# dcmtk's converters, as the gamma camera's own software would write each syntax.
WALKED = {
    "explicit": None,
    "implicit": ["dcmconv", "+ti"],
    "jpeg-lossless-sv1": ["dcmcjpeg", "+e1"],
    "jpeg-ls-lossless": ["dcmcjpls", "+el"],
    "rle": ["dcmcrle"],
}
LEFT_TO_PYDICOM = {"deflate": ["dcmconv", "+td"], "big-endian": ["dcmconv", "+tb"]}


def _pydicom_header(data: bytes) -> dict[str, Any]:
    header = _read_header(BytesIO(data))
    return {
        k: list(v) if isinstance(v, MultiValue) else (None if v is None else str(v))
        for k, v in header.items()
    }


def _encoded(tmp_path: Path, ds: Dataset, converter: list[str] | None) -> bytes:
    source = write_nm(tmp_path / "source.dcm", ds)
    if converter is None:
        return source.read_bytes()
    out = tmp_path / "converted.dcm"
    subprocess.run([*converter, str(source), str(out)], check=True, capture_output=True)
    return out.read_bytes()


@pytest.mark.parametrize("syntax", sorted(WALKED))
def test_the_walk_reads_what_pydicom_reads(tmp_path: Path, syntax: str) -> None:
    ds = synthetic_scan_dataset(5, 1)
    data = _encoded(tmp_path, ds, WALKED[syntax])
    walked = walk_header(data[:HEAD_BYTES], whole=len(data) <= HEAD_BYTES)
    assert walked is not None
    assert walked == _pydicom_header(data)
    assert walked["SeriesInstanceUID"] == ds.SeriesInstanceUID
    assert walked["ImageType"] == list(ds.ImageType)


@pytest.mark.parametrize("syntax", sorted(LEFT_TO_PYDICOM))
def test_other_syntaxes_are_left_to_pydicom(tmp_path: Path, syntax: str) -> None:
    data = _encoded(tmp_path, synthetic_scan_dataset(5, 1), LEFT_TO_PYDICOM[syntax])
    assert walk_header(data[:HEAD_BYTES], whole=False) is None
    # ...which read_header then uses, with the same result as parsing the file.
    received = ReceivedDigest("0" * 64, len(data), data[:HEAD_BYTES])
    path = tmp_path / "whole.dcm"
    path.write_bytes(data)
    assert read_header(path, received)["SOPInstanceUID"] == str(
        dcmread(path, stop_before_pixels=True).SOPInstanceUID
    )


def _with(tmp_path: Path, **changes: Any) -> bytes:
    ds = synthetic_scan_dataset(5, 1)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return write_nm(tmp_path / "changed.dcm", ds).read_bytes()


def test_text_beyond_ascii_is_left_to_pydicom(tmp_path: Path) -> None:
    data = _with(tmp_path, SpecificCharacterSet="ISO_IR 192", SeriesDescription="Ganzkörper")
    assert walk_header(data[:HEAD_BYTES], whole=False) is None
    assert _pydicom_header(data)["SeriesDescription"] == "Ganzkörper"


def test_multiple_values_where_one_is_expected_are_left_to_pydicom(tmp_path: Path) -> None:
    data = _with(tmp_path, AccessionNumber=["A1", "A2"])
    assert walk_header(data[:HEAD_BYTES], whole=False) is None


@pytest.mark.parametrize("undefined_length", [False, True])
def test_a_sequence_before_the_last_attribute_is_walked_only_with_a_defined_length(
    tmp_path: Path, undefined_length: bool
) -> None:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ds = synthetic_scan_dataset(5, 1)
    ds.ReferencedImageSequence = Sequence([item])  # (0008,1140), before group 0020
    ds["ReferencedImageSequence"].is_undefined_length = undefined_length
    data = write_nm(tmp_path / "with_sequence.dcm", ds).read_bytes()
    sequence_at = data.index(b"\x08\x00\x40\x11SQ")
    assert (data[sequence_at + 8 : sequence_at + 12] == b"\xff" * 4) is undefined_length
    walked = walk_header(data[:HEAD_BYTES], whole=False)
    if undefined_length:
        assert walked is None
    else:
        assert walked == _pydicom_header(data)


def test_a_head_that_ends_before_the_last_attribute_is_left_to_pydicom(tmp_path: Path) -> None:
    data = _with(tmp_path)
    series_at = data.index(b"\x20\x00\x0e\x00")
    assert walk_header(data[:series_at], whole=False) is None
    # The same bytes as a whole (short) file: the walk reads what is there, as pydicom.
    walked = walk_header(data[:series_at], whole=True)
    assert walked is not None and walked["SeriesInstanceUID"] is None
    assert walked["SOPInstanceUID"] == _pydicom_header(data)["SOPInstanceUID"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 128 + b"DICM",
        b"\x00" * 128 + b"DICM" + os.urandom(4000),
        b"\x00" * 128 + b"DICX" + b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00",
        os.urandom(HEAD_BYTES),
    ],
    ids=["empty", "prefix only", "random after prefix", "wrong prefix", "random"],
)
def test_bytes_that_are_not_a_plain_header_are_left_to_pydicom(data: bytes) -> None:
    assert walk_header(data, whole=True) is None
    assert walk_header(data, whole=False) is None


def test_a_file_meta_length_past_the_end_is_left_to_pydicom(tmp_path: Path) -> None:
    data = bytearray(_with(tmp_path))
    data[132 + 6 : 132 + 8] = b"\xff\x7f"  # (0002,0000) UL claims 32767 bytes
    assert walk_header(bytes(data[:2000]), whole=True) is None
