"""The AI-derived series: IOD validity (dciodvfy), labels, UIDs and round trips."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from pacs_node import __version__
from pacs_node.derived import (
    ModelProvenance,
    OutputKind,
    build_derived_series,
    derived_uids,
    stable_uid,
    write_series,
)
from pacs_node.synth import synthetic_scan_dataset, write_nm

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) missing")
SEED = 7
NOW = datetime(2025, 3, 1, 10, 15, 30)
MODEL = ModelProvenance(name="cascade-small", version="1.2.0", sha256="ab12" * 16, profile="fast")
OTHER_WEIGHTS = replace(MODEL, sha256="cd34" * 16)
SOP_CLASS = {
    OutputKind.MULTIFRAME_SC: "1.2.840.10008.5.1.4.1.1.7.3",
    OutputKind.SINGLE_FRAME_SC: "1.2.840.10008.5.1.4.1.1.7",
    OutputKind.DERIVED_NM: "1.2.840.10008.5.1.4.1.1.20",
}
IOD_NAME = {
    OutputKind.MULTIFRAME_SC: "MultiframeGrayscaleWordSCImage",
    OutputKind.SINGLE_FRAME_SC: "SCImage",
    OutputKind.DERIVED_NM: "NMImage",
}
ANTERIOR, POSTERIOR = "399321004", "399001007"


def dciodvfy(path: Path) -> list[str]:
    """Lines dciodvfy prints about ``path`` (it reports on stderr)."""
    assert DCIODVFY is not None
    done = subprocess.run([DCIODVFY, str(path)], check=False, capture_output=True, text=True)
    return (done.stdout + done.stderr).splitlines()


def fake_enhanced(source: Dataset) -> np.ndarray:
    """Stand-in for the model: doubled counts plus a ramp, so every pixel value is checked."""
    counts = source.pixel_array.astype(np.uint32)
    ramp = np.arange(counts.size, dtype=np.uint32).reshape(counts.shape) % 7
    frames: np.ndarray = np.minimum(counts * 2 + ramp, 65535).astype(np.uint16)
    return frames


def frame_numbers(value: object) -> list[int]:
    """Referenced Frame Number (IS, VM 1-n) as a list whatever its multiplicity."""
    if isinstance(value, MultiValue):
        return [int(v) for v in value]
    return [int(value)]  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def source_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sources")
    return {
        "ascii": write_nm(out / "ascii.dcm", synthetic_scan_dataset(SEED, 1, 40)),
        "utf8": write_nm(out / "utf8.dcm", synthetic_scan_dataset(SEED, 2, 40, unicode_name=True)),
    }


@pytest.fixture(scope="module")
def source(source_files: dict[str, Path]) -> Dataset:
    return dcmread(source_files["ascii"])


@pytest.fixture(scope="module")
def enhanced(source: Dataset) -> np.ndarray:
    return fake_enhanced(source)


@pytest.fixture(scope="module")
def written(
    source: Dataset, enhanced: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> dict[OutputKind, list[Path]]:
    out = tmp_path_factory.mktemp("derived")
    return {
        kind: write_series(
            build_derived_series(source, enhanced, MODEL, kind=kind, now=NOW), out / kind.value
        )
        for kind in OutputKind
    }


@needs_dciodvfy
@pytest.mark.parametrize("kind", list(OutputKind))
def test_dciodvfy_reports_no_errors(
    written: dict[OutputKind, list[Path]], kind: OutputKind
) -> None:
    for path in written[kind]:
        lines = dciodvfy(path)
        assert IOD_NAME[kind] in lines, lines  # recognised as the intended IOD
        errors = [line for line in lines if line.startswith("Error")]
        assert errors == [], f"{kind}: {errors}"


@pytest.mark.parametrize("kind", list(OutputKind))
def test_round_trip_gives_the_enhanced_pixels(
    written: dict[OutputKind, list[Path]],
    enhanced: np.ndarray,
    kind: OutputKind,
    strict_reading: None,
) -> None:
    datasets = [dcmread(path) for path in written[kind]]
    for ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == SOP_CLASS[kind] == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 16, 15)
        assert ds.PixelRepresentation == 0
    if kind is OutputKind.SINGLE_FRAME_SC:
        assert len(datasets) == enhanced.shape[0]
        pixels = np.stack([ds.pixel_array for ds in datasets])
    else:
        assert len(datasets) == 1
        pixels = datasets[0].pixel_array
    assert pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, enhanced)


@pytest.mark.parametrize("kind", list(OutputKind))
def test_labels_say_what_the_series_is(
    written: dict[OutputKind, list[Path]], source: Dataset, kind: OutputKind, strict_reading: None
) -> None:
    for frame, path in enumerate(written[kind]):
        ds = dcmread(path)
        # Same patient and study, new series and instance (DOMAIN.md section 2).
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "PatientAge",
            "StudyInstanceUID",
            "AccessionNumber",
            "StudyID",
            "StudyDate",
            "StudyDescription",
        ):
            assert ds[keyword].value == source[keyword].value, keyword
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SOPInstanceUID != source.SOPInstanceUID
        assert ds.Modality == "NM"
        assert ds.ImageType[0] == "DERIVED"
        assert ds.ImageType[1] == ("PRIMARY" if kind is OutputKind.DERIVED_NM else "SECONDARY")
        assert ds.SeriesDescription == "AI ENHANCED cascade-small 1.2.0"
        assert len(ds.SeriesDescription) <= 64
        assert "not the acquired image" in ds.ImageComments
        assert "cascade-small 1.2.0" in ds.DerivationDescription
        assert MODEL.sha256 in ds.DerivationDescription
        assert ds.BurnedInAnnotation == "NO"
        assert ds.LossyImageCompression == "00"
        assert [float(v) for v in ds.PixelSpacing] == [float(v) for v in source.PixelSpacing]
        assert (ds.ContentDate, ds.ContentTime) == ("20250301", "101530")
        assert (ds.InstanceCreationDate, ds.SeriesDate) == ("20250301", "20250301")

        (ref,) = ds.SourceImageSequence
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        if kind is OutputKind.SINGLE_FRAME_SC:  # one frame of a multi-frame source
            assert frame_numbers(ref.ReferencedFrameNumber) == [frame + 1]
        else:  # all frames: Table 10-3 has Referenced Frame Number absent
            assert "ReferencedFrameNumber" not in ref
        (purpose,) = ref.PurposeOfReferenceCodeSequence
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
        assert purpose.CodeMeaning.lower() == "source image for image processing operation"

        acquisition, algorithm = ds.ContributingEquipmentSequence
        assert acquisition.PurposeOfReferenceCodeSequence[0].CodeValue == "109101"
        assert acquisition.Manufacturer == source.Manufacturer
        assert acquisition.ManufacturerModelName == source.ManufacturerModelName
        assert acquisition.DeviceSerialNumber == source.DeviceSerialNumber
        (purpose,) = algorithm.PurposeOfReferenceCodeSequence
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
            "Newcode1",
            "99IHE",
            "Processing Algorithm",
        )
        assert algorithm.Manufacturer == "pacs-node"
        assert algorithm.ManufacturerModelName == "cascade-small"
        assert list(algorithm.SoftwareVersions) == [
            "1.2.0",
            f"sha256:{MODEL.sha256[:16]}",
            f"pacs-node {__version__}",
        ]
        assert algorithm.ContributionDateTime == "20250301101530"
        # The node, not the camera, made this instance.
        assert (ds.Manufacturer, ds.ManufacturerModelName) == ("pacs-node", "cascade-small")
        assert "DeviceSerialNumber" not in ds and "StationName" not in ds
        assert float(ds.WindowWidth) > 0


def test_multiframe_sc_module_values(
    written: dict[OutputKind, list[Path]], strict_reading: None
) -> None:
    (path,) = written[OutputKind.MULTIFRAME_SC]
    ds = dcmread(path)
    assert ds.ImageType == ["DERIVED", "SECONDARY"]
    assert ds.NumberOfFrames == 2
    assert ds.FrameIncrementPointer == Tag("FrameLabelVector")
    assert ds.FrameLabelVector == ["ANTERIOR", "POSTERIOR"]
    assert (ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType) == (1, 0, "US")
    assert ds.PresentationLUTShape == "IDENTITY"
    assert ds.ConversionType == "WSD"
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.SecondaryCaptureDeviceManufacturerModelName == "cascade-small"
    assert ds.PatientOrientation == ""  # the two views run opposite ways
    assert 0 < float(ds.WindowCenter) < float(ds.WindowWidth) <= ds.pixel_array.max() + 1


def test_single_frame_sc_is_one_image_per_view(
    written: dict[OutputKind, list[Path]], strict_reading: None
) -> None:
    first, second = (dcmread(path) for path in written[OutputKind.SINGLE_FRAME_SC])
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    assert first.ViewCodeSequence[0].CodeValue == ANTERIOR
    assert second.ViewCodeSequence[0].CodeValue == POSTERIOR
    # Anterior rows run to the patient's left, posterior (seen from behind) to the right.
    assert list(first.PatientOrientation) == ["L", "F"]
    assert list(second.PatientOrientation) == ["R", "F"]
    assert "NumberOfFrames" not in first
    assert first.DerivationDescription.startswith("ANTERIOR view.")
    assert first.WindowWidth == second.WindowWidth  # both views shown alike


def test_derived_nm_keeps_nm_semantics(
    written: dict[OutputKind, list[Path]],
    source: Dataset,
    enhanced: np.ndarray,
    strict_reading: None,
) -> None:
    (path,) = written[OutputKind.DERIVED_NM]
    ds = dcmread(path)
    assert ds.ImageType == ["DERIVED", "PRIMARY", "WHOLE BODY", "EMISSION"]
    for keyword in (
        "FrameIncrementPointer",
        "DetectorVector",
        "EnergyWindowVector",
        "ScanVelocity",
        "ActualFrameDuration",
        "AcquisitionDate",
        "AcquisitionTime",
        "PatientOrientationCodeSequence",
    ):
        assert ds[keyword].value == source[keyword].value, keyword
    views = [item.ViewCodeSequence[0].CodeValue for item in ds.DetectorInformationSequence]
    assert views == [ANTERIOR, POSTERIOR]
    assert (
        ds.RadiopharmaceuticalInformationSequence == source.RadiopharmaceuticalInformationSequence
    )
    assert ds.CountsAccumulated == int(enhanced.sum(dtype=np.int64))


def test_uids_are_deterministic_and_valid(source: Dataset, enhanced: np.ndarray) -> None:
    later = datetime(2026, 1, 1)
    untouched = copy.deepcopy(source)
    for kind in OutputKind:
        first = build_derived_series(source, enhanced, MODEL, kind=kind, now=NOW)
        again = build_derived_series(source, enhanced, MODEL, kind=kind, now=later)
        assert [ds.SOPInstanceUID for ds in first] == [ds.SOPInstanceUID for ds in again]
        assert first[0].SeriesInstanceUID == again[0].SeriesInstanceUID
        for ds in first:
            for uid in (ds.SeriesInstanceUID, ds.SOPInstanceUID):
                assert UID(uid).is_valid and len(uid) <= 64
                assert uid not in {source.SOPInstanceUID, source.SeriesInstanceUID}
                assert uid != source.StudyInstanceUID
    assert source == untouched  # building never edits the source


def test_uids_differ_by_weights_source_and_kind(source: Dataset) -> None:
    def uids(sop: str, sha: str, kind: OutputKind, series: str) -> tuple[UID, ...]:
        got = derived_uids(sop, sha, kind=kind, source_series_instance_uid=series, frame_count=2)
        return (got.series_instance_uid, *got.sop_instance_uids)

    sop, series = str(source.SOPInstanceUID), str(source.SeriesInstanceUID)
    other_sop = str(synthetic_scan_dataset(SEED, 3, 40).SOPInstanceUID)
    variants = [uids(sop, MODEL.sha256, kind, series) for kind in OutputKind] + [
        uids(sop, OTHER_WEIGHTS.sha256, OutputKind.MULTIFRAME_SC, series),
        uids(other_sop, MODEL.sha256, OutputKind.MULTIFRAME_SC, series),
    ]
    every_uid = [uid for variant in variants for uid in variant]
    # Another source instance of the same series shares the series UID, nothing else does.
    assert variants[4][0] == variants[0][0]
    every_uid.remove(variants[4][0])
    assert len(set(every_uid)) == len(every_uid)
    assert derived_uids(
        sop, MODEL.sha256.upper(), kind=OutputKind.DERIVED_NM, source_series_instance_uid=series
    ) == derived_uids(
        sop, MODEL.sha256, kind=OutputKind.DERIVED_NM, source_series_instance_uid=series
    )
    with pytest.raises(ValueError, match="not a valid UID"):
        derived_uids(
            "1.2.03", MODEL.sha256, kind=OutputKind.DERIVED_NM, source_series_instance_uid=series
        )


def test_stable_uid_keeps_parts_apart() -> None:
    # generate_uid hashes the joined sources, so these two would collide without separation.
    assert generate_uid(entropy_srcs=["a", "bc"]) == generate_uid(entropy_srcs=["ab", "c"])
    assert stable_uid("a", "bc") != stable_uid("ab", "c")
    assert stable_uid("a", "bc") == stable_uid("a", "bc")
    assert stable_uid("1:a") != stable_uid("1", "a")


@pytest.mark.parametrize("kind", list(OutputKind))
def test_unicode_patient_name_round_trips(
    source_files: dict[str, Path], tmp_path: Path, kind: OutputKind, strict_reading: None
) -> None:
    source = dcmread(source_files["utf8"])
    datasets = build_derived_series(source, fake_enhanced(source), MODEL, kind=kind, now=NOW)
    for path in write_series(datasets, tmp_path):
        ds = dcmread(path)
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert str(ds.PatientName) == str(source.PatientName)
        assert "合成".encode() in path.read_bytes()
        if DCIODVFY is not None:
            assert not [line for line in dciodvfy(path) if line.startswith("Error")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.astype(np.float32), "dtype float32 is not uint16"),
        (lambda a: a.astype(np.int16), "dtype int16 is not uint16"),
        (lambda a: a[0], r"shape \(1024, 256\) is not \(frames, rows, columns\)"),
        (lambda a: np.concatenate([a, a[:1]]), "3 frames but the source has NumberOfFrames 2"),
        (lambda a: a[:1], "1 frames but the source has NumberOfFrames 2"),
        (lambda a: a[:, :512], "512x256 .* source's are 1024x256"),
        (lambda a: a.tolist(), "list, not a numpy array"),
    ],
)
def test_bad_frames_are_refused(
    source: Dataset, enhanced: np.ndarray, change: Callable[[np.ndarray], Any], message: str
) -> None:
    for kind in OutputKind:
        with pytest.raises(ValueError, match=message):
            build_derived_series(source, change(enhanced), MODEL, kind=kind)


def test_big_endian_frames_are_accepted(source: Dataset, enhanced: np.ndarray) -> None:
    (ds,) = build_derived_series(source, enhanced.astype(">u2"), MODEL, now=NOW)
    np.testing.assert_array_equal(ds.pixel_array, enhanced)


def test_bad_source_or_series_number_is_refused(source: Dataset, enhanced: np.ndarray) -> None:
    (sc,) = build_derived_series(source, enhanced, MODEL, now=NOW)
    with pytest.raises(ValueError, match="needs an NM Image Storage source"):
        build_derived_series(sc, enhanced, MODEL, kind=OutputKind.DERIVED_NM)
    with pytest.raises(ValueError, match="series number 0"):
        build_derived_series(source, enhanced, MODEL, series_number=0)
    no_uid = copy.deepcopy(source)
    del no_uid.SeriesInstanceUID
    with pytest.raises(ValueError, match="source has no SeriesInstanceUID"):
        build_derived_series(no_uid, enhanced, MODEL)


def test_series_numbers(source: Dataset, enhanced: np.ndarray) -> None:
    numbers = {
        kind: build_derived_series(source, enhanced, MODEL, kind=kind, now=NOW)[0].SeriesNumber
        for kind in OutputKind
    }
    base = source.SeriesNumber
    assert numbers == {
        OutputKind.MULTIFRAME_SC: base + 1000,
        OutputKind.SINGLE_FRAME_SC: base + 2000,
        OutputKind.DERIVED_NM: base + 3000,
    }
    (ds,) = build_derived_series(source, enhanced, MODEL, series_number=77, now=NOW)
    assert ds.SeriesNumber == 77


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": "ab" * 31}, "not 64 hexadecimal digits"),
        ({"sha256": "zz" * 32}, "not 64 hexadecimal digits"),
        ({"name": "a\\b"}, "backslash"),
        ({"name": ""}, "empty"),
        ({"version": "é"}, "printable ASCII"),
        ({"name": "n" * 50}, "series description .* longer than 64"),
        ({"manufacturer": "m" * 65}, "longer than 64"),
    ],
)
def test_model_provenance_is_checked(change: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(MODEL, **change)


def test_sha256_is_kept_lower_case() -> None:
    assert replace(MODEL, sha256=MODEL.sha256.upper()).sha256 == MODEL.sha256


def test_lossy_source_stays_flagged(source: Dataset, enhanced: np.ndarray) -> None:
    lossy = copy.deepcopy(source)
    lossy.LossyImageCompression = "01"
    lossy.LossyImageCompressionRatio = "8.5"
    lossy.LossyImageCompressionMethod = "ISO_10918_1"
    for kind in OutputKind:
        for ds in build_derived_series(lossy, enhanced, MODEL, kind=kind, now=NOW):
            assert ds.LossyImageCompression == "01"
            assert ds.LossyImageCompressionMethod == "ISO_10918_1"


def test_views_fall_back_to_frame_order(
    source: Dataset, enhanced: np.ndarray, tmp_path: Path
) -> None:
    bare = copy.deepcopy(source)
    del bare.DetectorInformationSequence
    (mf,) = build_derived_series(bare, enhanced, MODEL, now=NOW)
    assert mf.FrameLabelVector == ["ANTERIOR", "POSTERIOR"]
    singles = build_derived_series(bare, enhanced, MODEL, kind=OutputKind.SINGLE_FRAME_SC, now=NOW)
    assert [ds.ViewCodeSequence[0].CodeValue for ds in singles] == [ANTERIOR, POSTERIOR]
    # Without Image Orientation (Patient) no orientation is made up.
    assert all(ds.PatientOrientation == "" for ds in singles)
    if DCIODVFY is not None:
        for path in write_series(singles, tmp_path):
            assert not [line for line in dciodvfy(path) if line.startswith("Error")]


@pytest.mark.parametrize("kind", list(OutputKind))
def test_compressed_iso2022_source(
    source: Dataset, enhanced: np.ndarray, tmp_path: Path, kind: OutputKind, strict_reading: None
) -> None:
    """A JPEG-LS source with a Japanese name (DOMAIN.md section 1) gives plain, valid output."""
    jls = copy.deepcopy(source)
    jls.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    jls.PatientName = "Yamada^Tarou=山田^太郎"
    jls.compress(JPEGLSLossless)
    jls.save_as(tmp_path / "source.dcm", enforce_file_format=True)
    read = dcmread(tmp_path / "source.dcm")
    paths = write_series(
        build_derived_series(read, enhanced, MODEL, kind=kind, now=NOW), tmp_path / "out"
    )
    for path in paths:
        ds = dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert list(ds.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
        assert str(ds.PatientName) == "Yamada^Tarou=山田^太郎"
        if DCIODVFY is not None:
            assert not [line for line in dciodvfy(path) if line.startswith("Error")]
    pixels = np.stack([dcmread(path).pixel_array for path in paths]).reshape(enhanced.shape)
    np.testing.assert_array_equal(pixels, enhanced)


@pytest.mark.parametrize("kind", [OutputKind.MULTIFRAME_SC, OutputKind.SINGLE_FRAME_SC])
def test_single_frame_source(
    written: dict[OutputKind, list[Path]], tmp_path: Path, kind: OutputKind
) -> None:
    """An SC view as source: one frame, no frame numbers, its view and orientation kept."""
    single = dcmread(written[OutputKind.SINGLE_FRAME_SC][1])
    frames = fake_enhanced(single)[np.newaxis]
    (ds,) = build_derived_series(single, frames, OTHER_WEIGHTS, kind=kind, now=NOW)
    assert "ReferencedFrameNumber" not in ds.SourceImageSequence[0]
    assert list(ds.PatientOrientation) == ["R", "F"]
    if kind is OutputKind.MULTIFRAME_SC:
        assert ds.NumberOfFrames == 1
        assert "FrameIncrementPointer" not in ds  # Type 1C: only for more than one frame
    else:
        assert ds.ViewCodeSequence[0].CodeValue == POSTERIOR
    (path,) = write_series([ds], tmp_path)
    if DCIODVFY is not None:
        assert not [line for line in dciodvfy(path) if line.startswith("Error")]


def test_write_series_replaces_on_rerun(
    source: Dataset, enhanced: np.ndarray, tmp_path: Path
) -> None:
    kind = OutputKind.SINGLE_FRAME_SC
    first = write_series(build_derived_series(source, enhanced, MODEL, kind=kind), tmp_path)
    second = write_series(build_derived_series(source, enhanced, MODEL, kind=kind), tmp_path)
    assert first == second
    assert sorted(tmp_path.iterdir()) == sorted(first)
    with pytest.raises(ValueError, match="has no file meta"):
        write_series([Dataset()], tmp_path)


def test_derived_package_imports_neither_torch_nor_enhancer() -> None:
    code = (
        "import sys, pacs_node.derived; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'enhancer'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@needs_dciodvfy
def test_dciodvfy_would_catch_a_broken_object(
    written: dict[OutputKind, list[Path]], tmp_path: Path
) -> None:
    """The check above can fail: a Type 1 attribute removed is reported as an error."""
    (path,) = written[OutputKind.MULTIFRAME_SC]
    ds = dcmread(path)
    del ds.ConversionType
    ds.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    errors = [line for line in dciodvfy(tmp_path / "broken.dcm") if line.startswith("Error")]
    assert any("ConversionType" in line for line in errors), errors
