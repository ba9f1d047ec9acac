"""`pacs-node enhance`: NM DICOM in, enhanced DICOM or PNG previews out, clear errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from models import write_tiny_checkpoint
from nodeharness import PACS_NODE
from PIL import Image
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless

from pacs_node.synth import synthetic_scan_dataset, write_nm

DCIODVFY = shutil.which("dciodvfy")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PACS_NODE, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def rapid_scans(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("rapid")
    return [
        write_nm(out / f"{index}.dcm", synthetic_scan_dataset(11, index, speed_cm_min=40))
        for index in range(2)
    ]


def test_enhance_writes_derived_nm_objects_that_dciodvfy_accepts(
    weights: Path, rapid_scans: list[Path], tmp_path: Path
) -> None:
    result = run(
        "enhance", *map(str, rapid_scans), "-o", str(tmp_path), "--checkpoint", str(weights)
    )
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    outputs = sorted(tmp_path.glob("*.dcm"))
    assert len(outputs) == 2
    assert result.stdout.count("QC ") == 2
    sources = {dcmread(p).SOPInstanceUID: dcmread(p) for p in rapid_scans}
    derived_series = set()
    for path in outputs:
        ds = dcmread(path)
        source = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert ds.SOPInstanceUID != source.SOPInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
        assert "tiny-test" in ds.SeriesDescription
        assert ds.pixel_array.shape == source.pixel_array.shape
        assert ds.pixel_array.dtype == np.uint16
        # The output is on the standard-speed scale: about twice the rapid counts.
        ratio = ds.pixel_array.sum() / source.pixel_array.sum()
        assert 1.0 < ratio < 4.0
        derived_series.add(ds.SeriesInstanceUID)
        if DCIODVFY is not None:
            lines = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
            errors = [
                ln for ln in (lines.stdout + lines.stderr).splitlines() if ln.startswith("Error")
            ]
            assert errors == [], errors
    # Both sources share a series, so both outputs do.
    assert len({s.SeriesInstanceUID for s in sources.values()}) == len(derived_series)


def test_compressed_input_is_decoded(
    weights: Path, rapid_scans: list[Path], tmp_path: Path
) -> None:
    ds = dcmread(rapid_scans[0])
    ds.compress(JPEGLSLossless)
    compressed = tmp_path / "jls.dcm"
    ds.save_as(compressed)
    out = tmp_path / "out"
    result = run(
        "enhance",
        str(compressed),
        "-o",
        str(out),
        "--checkpoint",
        str(weights),
        "--kind",
        "derived-nm",
    )
    assert result.returncode in (0, 1), result.stderr
    [derived] = out.glob("*.dcm")
    derived_ds = dcmread(derived)
    assert derived_ds.SOPClassUID == ds.SOPClassUID  # NM Image Storage
    assert derived_ds.pixel_array.shape == ds.pixel_array.shape


def test_preview_writes_side_by_side_pngs(
    weights: Path, rapid_scans: list[Path], tmp_path: Path
) -> None:
    result = run(
        "enhance",
        str(rapid_scans[0]),
        "-o",
        str(tmp_path),
        "--checkpoint",
        str(weights),
        "--preview",
        "--profile",
        "cascade",
    )
    assert result.returncode in (0, 1), result.stderr
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["0_frame1.png", "0_frame2.png"]
    image = np.asarray(Image.open(pngs[0]))
    assert image.shape == (1024, 512) and image.dtype == np.uint8
    assert image[:, :256].any() and image[:, 256:].any()
    assert not list(tmp_path.glob("*.dcm"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent.dcm", "input .*absent.dcm is not a file"),
        (lambda d: _write(d / "text.dcm", b"not dicom"), "text.dcm: not a readable DICOM file"),
    ],
)
def test_bad_inputs_are_named_in_one_line(
    weights: Path, tmp_path: Path, make: object, message: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    result = run("enhance", str(path), "-o", str(tmp_path / "out"), "--checkpoint", str(weights))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    import re

    assert re.search(message, result.stderr), result.stderr


def test_a_missing_checkpoint_is_a_clear_error(rapid_scans: list[Path], tmp_path: Path) -> None:
    result = run(
        "enhance", str(rapid_scans[0]), "-o", str(tmp_path), "--checkpoint", str(tmp_path / "x")
    )
    assert result.returncode == 2
    assert "no such checkpoint file" in result.stderr and "Traceback" not in result.stderr


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
