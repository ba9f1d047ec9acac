"""Synthetic whole-body bone scans: the phantom, the NM writer and the scans they make."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import config, dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs_node.synth import (
    BodyHabitus,
    BonePhantom,
    sample_counts,
    synthetic_scan_counts,
    synthetic_scan_dataset,
    thin_counts,
    write_nm,
    write_synthetic_scans,
)
from pacs_node.synth.nm_writer import NM_IMAGE_STORAGE, NMHeader, build_nm_dataset, dicom_age

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) missing")
SEED = 7


def dciodvfy(path: Path) -> list[str]:
    """Lines dciodvfy prints about ``path`` (it reports on stderr)."""
    assert DCIODVFY is not None
    done = subprocess.run([DCIODVFY, str(path)], check=False, capture_output=True, text=True)
    return (done.stdout + done.stderr).splitlines()


@pytest.fixture
def strict_reading() -> Iterator[None]:
    """Read as highdicom does: any invalid value raises."""
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        yield
    finally:
        config.settings.reading_validation_mode = previous


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    out = tmp_path_factory.mktemp("synth")
    return {
        "20": write_synthetic_scans(out / "s20", count=2, seed=SEED),
        "40": write_synthetic_scans(out / "s40", count=2, seed=SEED, speed_cm_min=40),
        "60": write_synthetic_scans(out / "s60", count=1, seed=SEED, speed_cm_min=60),
        "utf8": write_synthetic_scans(out / "utf8", count=1, seed=SEED, unicode_names=True),
    }


def all_files(scans: dict[str, list[Path]]) -> list[Path]:
    return [path for paths in scans.values() for path in paths]


def test_files_are_named_per_scan(scans: dict[str, list[Path]]) -> None:
    assert [p.name for p in scans["20"]] == ["scan_0001.dcm", "scan_0002.dcm"]
    assert all(p.is_file() for p in all_files(scans))


@needs_dciodvfy
def test_dciodvfy_reports_no_errors(scans: dict[str, list[Path]]) -> None:
    for path in all_files(scans):
        lines = dciodvfy(path)
        assert "NMImage" in lines, lines  # recognised as the NM Image IOD
        errors = [line for line in lines if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


@needs_dciodvfy
def test_dciodvfy_check_catches_a_broken_object(tmp_path: Path) -> None:
    ds = synthetic_scan_dataset(SEED, 1)
    del ds.NumberOfDetectors  # Type 1 in the NM Multi-frame Module
    lines = dciodvfy(write_nm(tmp_path / "broken.dcm", ds))
    assert any(line.startswith("Error") and "NumberOfDetectors" in line for line in lines)


def test_round_trip_under_strict_validation(
    scans: dict[str, list[Path]], strict_reading: None
) -> None:
    for speed in ("20", "40", "60"):
        for index, path in enumerate(scans[speed], start=1):
            ds = dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.SOPClassUID == NM_IMAGE_STORAGE
            assert ds.Modality == "NM"
            assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
            pixels = ds.pixel_array
            assert pixels.shape == (2, 1024, 256)
            assert pixels.dtype == np.uint16
            np.testing.assert_array_equal(pixels, synthetic_scan_counts(SEED, index, int(speed)))
            assert ds.CountsAccumulated == int(pixels.sum())
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 16, 0)


def test_nm_multiframe_and_detector_headers(scans: dict[str, list[Path]]) -> None:
    ds = dcmread(scans["20"][0])
    assert ds.NumberOfFrames == 2
    assert list(ds.FrameIncrementPointer) == [0x00540010, 0x00540020]
    assert list(ds.EnergyWindowVector) == [1, 1]
    assert ds.NumberOfEnergyWindows == 1
    assert list(ds.DetectorVector) == [1, 2]
    assert ds.NumberOfDetectors == 2
    views = [item.ViewCodeSequence[0] for item in ds.DetectorInformationSequence]
    assert [(v.CodeValue, v.CodingSchemeDesignator) for v in views] == [
        ("399321004", "SCT"),  # anterior projection, CID 26
        ("399001007", "SCT"),  # posterior projection
    ]
    orientations = [list(item.ImageOrientationPatient) for item in ds.DetectorInformationSequence]
    assert orientations == [[1, 0, 0, 0, 0, -1], [-1, 0, 0, 0, 0, -1]]  # posterior seen from behind
    window = ds.EnergyWindowInformationSequence[0].EnergyWindowRangeSequence[0]
    assert (float(window.EnergyWindowLowerLimit), float(window.EnergyWindowUpperLimit)) == (
        126.0,
        154.0,
    )
    agent = ds.RadiopharmaceuticalInformationSequence[0]
    assert agent.RadionuclideCodeSequence[0].CodeValue == "72454006"  # Tc-99m
    assert agent.RadiopharmaceuticalCodeSequence[0].CodeValue in {"96390006", "53951001"}
    assert float(ds.ScanVelocity) == pytest.approx(200.0 / 60.0, abs=1e-3)  # 20 cm/min in mm/s
    assert ds.WholeBodyTechnique == "1PS"
    assert [float(v) for v in ds.PixelSpacing] == [2.4, 2.4]
    assert ds.ActualFrameDuration == pytest.approx(ds.ScanLength / (200.0 / 60.0) * 1000, 1e-3)


def test_unicode_name_is_written_as_utf8(
    scans: dict[str, list[Path]], strict_reading: None
) -> None:
    path = scans["utf8"][0]
    ds = dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == f"Synthétique^Zoë^{SEED}-0001=合成^ゾエ"
    assert "合成".encode() in path.read_bytes()


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = write_synthetic_scans(tmp_path / "a", count=2, seed=11)
    second = write_synthetic_scans(tmp_path / "b", count=2, seed=11)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_other_seed_or_index_gives_other_scan() -> None:
    base = synthetic_scan_dataset(11, 1)
    for other in (synthetic_scan_dataset(12, 1), synthetic_scan_dataset(11, 2)):
        assert other.PixelData != base.PixelData
        assert other.StudyInstanceUID != base.StudyInstanceUID
        assert other.SOPInstanceUID != base.SOPInstanceUID
        assert other.PatientID != base.PatientID


@pytest.mark.parametrize("speed", [40, 60])
def test_fast_scan_is_the_thinned_standard_scan(speed: int) -> None:
    p = 20 / speed
    for index in (1, 2, 3):
        standard = synthetic_scan_counts(SEED, index, 20)
        fast = synthetic_scan_counts(SEED, index, speed)
        assert (fast <= standard).all()
        assert fast.sum() / standard.sum() == pytest.approx(p, abs=0.02)
        assert not np.array_equal(fast, np.round(standard * p))  # random thinning, not scaling
    ds20, fast_ds = synthetic_scan_dataset(SEED, 1, 20), synthetic_scan_dataset(SEED, 1, speed)
    assert fast_ds.StudyInstanceUID == ds20.StudyInstanceUID
    assert fast_ds.PatientID == ds20.PatientID
    assert fast_ds.SeriesInstanceUID != ds20.SeriesInstanceUID
    assert fast_ds.SOPInstanceUID != ds20.SOPInstanceUID
    assert fast_ds.SeriesNumber == speed // 20
    # The sweeps run in order of speed, each after the one before.
    before = synthetic_scan_dataset(SEED, 1, speed - 20)
    assert fast_ds.AcquisitionDate + fast_ds.AcquisitionTime > (
        before.AcquisitionDate + before.AcquisitionTime
    )
    velocity = float(fast_ds.ScanVelocity)
    assert velocity == pytest.approx(float(ds20.ScanVelocity) / p, abs=1e-3)
    assert fast_ds.ActualFrameDuration == pytest.approx(ds20.ActualFrameDuration * p, abs=1)


def test_thinning_has_binomial_half_statistics() -> None:
    rng = np.random.default_rng(3)
    for n in (10, 200):  # 200 takes the Generator.binomial path for n > 63
        counts = np.full(200_000, n, dtype=np.uint16)
        kept = thin_counts(counts, rng)
        assert kept.dtype == np.uint16
        assert (kept <= counts).all()
        assert kept.mean() == pytest.approx(n / 2, rel=0.005)
        assert kept.var() == pytest.approx(n / 4, rel=0.03)


@pytest.mark.parametrize("speed", [0, 10, 30, 80])
def test_unsupported_speed_is_refused(tmp_path: Path, speed: int) -> None:
    with pytest.raises(ValueError, match=f"scan speed {speed} cm/min"):
        write_synthetic_scans(tmp_path, speed_cm_min=speed)
    with pytest.raises(ValueError, match=f"scan speed {speed} cm/min"):
        synthetic_scan_dataset(0, 1, speed)
    assert list(tmp_path.iterdir()) == []


def test_adult_counts_in_range_and_small_child_fewer() -> None:
    adult = BonePhantom(BodyHabitus.typical(35.0, "M"))
    toddler = BonePhantom(BodyHabitus.typical(1.0, "F"))
    for seed in range(5):
        rng = np.random.default_rng(seed)
        big, small = adult.expected_counts(rng), toddler.expected_counts(rng)
        for lam in (big.anterior, big.posterior):
            assert 1.0e6 <= lam.sum() <= 2.0e6
        for lam in (small.anterior, small.posterior):
            assert lam.sum() < 0.4e6
        counts = sample_counts(big, rng)
        assert 2.0e6 <= counts.sum(dtype=np.int64) <= 4.0e6
        # A small child fills only the top part of the 1024-row frame.
        assert small.scanned_rows < 400 < 700 < big.scanned_rows
        assert small.anterior[small.scanned_rows :].sum() == 0.0


def test_fast_phantom_has_half_the_expected_counts() -> None:
    body = BodyHabitus.typical(10.0, "M")
    slow = BonePhantom(body).expected_counts(np.random.default_rng(1))
    fast = BonePhantom(body, speed_cm_min=40).expected_counts(np.random.default_rng(1))
    assert fast.anterior.sum() == pytest.approx(slow.anterior.sum() / 2, rel=1e-6)


def writer_header() -> NMHeader:
    """Header facts written by hand, so the writer is tested without the phantom."""
    return NMHeader(
        patient_name="TEST^WRITER",
        patient_id="W-1",
        patient_birth_date=date(2018, 3, 1),
        patient_sex="F",
        patient_age="006Y",
        patient_size_m=1.15,
        patient_weight_kg=20.5,
        study_instance_uid=generate_uid(entropy_srcs=["test_synth", "study"]),
        series_instance_uid=generate_uid(entropy_srcs=["test_synth", "series"]),
        sop_instance_uid=generate_uid(entropy_srcs=["test_synth", "instance"]),
        accession_number="ACC0001",
        study_id="1",
        study_datetime=datetime(2024, 6, 3, 9, 30),
        acquisition_datetime=datetime(2024, 6, 3, 9, 31),
        scan_speed_cm_min=20,
        actual_frame_duration_ms=600_000,
        scan_length_mm=2000,
        pixel_spacing_mm=2.4,
        administered_activity_mbq=150.0,
        injection_datetime=datetime(2024, 6, 3, 6, 30),
    )


def test_writer_needs_no_phantom(tmp_path: Path, strict_reading: None) -> None:
    frames = (np.arange(2 * 1024 * 256) % 50).astype(np.uint16).reshape(2, 1024, 256)
    path = write_nm(tmp_path / "plain.dcm", build_nm_dataset(frames, writer_header()))
    ds = dcmread(path)
    np.testing.assert_array_equal(ds.pixel_array, frames)
    assert ds.CountsAccumulated == int(frames.sum())
    assert "SpecificCharacterSet" not in ds  # ASCII only: default repertoire
    if DCIODVFY is not None:
        assert not [line for line in dciodvfy(path) if line.startswith("Error")]


def test_writer_refuses_wrong_frames() -> None:
    header = writer_header()
    with pytest.raises(ValueError, match="float32"):
        build_nm_dataset(np.zeros((2, 1024, 256), np.float32), header)
    with pytest.raises(ValueError, match=r"\(3, 1024, 256\)"):
        build_nm_dataset(np.zeros((3, 1024, 256), np.uint16), header)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"patient_name": "Zoë^Test"}, "character set"),
        ({"patient_name": "合成^Test", "specific_character_set": "ISO_IR 100"}, "Latin-1"),
        ({"patient_age": "6Y"}, "Age String"),
        ({"sop_instance_uid": "1.2.3.04"}, "not a valid UID"),
        ({"scan_speed_cm_min": 0}, "scan speed 0"),
        ({"accession_number": "A" * 17}, "longer than 16"),
    ],
)
def test_header_refuses_bad_facts(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(writer_header(), **change)


@pytest.mark.parametrize(
    ("years", "expected"), [(0.05, "018D"), (0.5, "006M"), (1.99, "023M"), (12.3, "012Y")]
)
def test_dicom_age(years: float, expected: str) -> None:
    assert dicom_age(years) == expected
