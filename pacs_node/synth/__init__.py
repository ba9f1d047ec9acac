"""Synthetic paediatric whole-body bone scans as NM Image Storage files.

A seed and an index fix everything about a scan: the patient (mostly children of 0.5-16
years, some adults), the phantom's variation, the Poisson counts and every UID, so the same
call gives byte-identical files. A 40 or 60 cm/min scan is the binomial thinning (p = 1/2 or
1/3) of the 20 cm/min scan of the same seed and index: same patient and study, new series and
SOP instance (DOMAIN.md section 4; White & Lawson 2015).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs_node.synth.bone_phantom import BonePhantom, PhantomRender
from pacs_node.synth.lesions import Lesion, LesionKind, LesionModel
from pacs_node.synth.nm_writer import (
    NMHeader,
    Radiopharmaceutical,
    UInt16Frames,
    build_nm_dataset,
    dicom_age,
    write_nm,
)
from pacs_node.synth.phantom import (
    DEFAULT_PIXEL_SPACING_MM,
    BodyHabitus,
    Phantom,
    Sex,
    WholeBodyViews,
)

__all__ = [
    "SUPPORTED_SPEEDS_CM_MIN",
    "BodyHabitus",
    "BonePhantom",
    "Lesion",
    "LesionKind",
    "LesionModel",
    "NMHeader",
    "Phantom",
    "PhantomRender",
    "SyntheticPatient",
    "WholeBodyViews",
    "build_nm_dataset",
    "sample_counts",
    "synthetic_patient",
    "synthetic_scan_counts",
    "synthetic_scan_dataset",
    "thin_counts",
    "write_nm",
    "write_synthetic_scans",
]

logger = logging.getLogger(__name__)

SUPPORTED_SPEEDS_CM_MIN = (20, 40, 60)
_STANDARD_SPEED = 20
_UID_NAMESPACE = "pacs_node.synth"
_ADULT_SHARE = 0.1
# Streams of one (seed, index): patient facts, phantom variation, counts, thinning.
_PATIENT, _PHANTOM, _COUNTS, _THINNING = range(4)


@dataclass(frozen=True, slots=True)
class SyntheticPatient:
    """Who was scanned and when; shared by the 20 and 40 cm/min scans of one index."""

    body: BodyHabitus
    name: str
    patient_id: str
    birth_date: date
    study_datetime: datetime
    injection_datetime: datetime
    administered_activity_mbq: float
    accession_number: str
    radiopharmaceutical: Radiopharmaceutical


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def _check(seed: int, index: int, speed_cm_min: int) -> None:
    if speed_cm_min not in SUPPORTED_SPEEDS_CM_MIN:
        speeds = ", ".join(str(speed) for speed in SUPPORTED_SPEEDS_CM_MIN)
        raise ValueError(f"scan speed {speed_cm_min!r} cm/min is not one of {speeds}")
    if seed < 0:
        raise ValueError(f"seed {seed!r} is negative")
    if index < 0:
        raise ValueError(f"index {index!r} is negative")


def synthetic_patient(seed: int, index: int, *, unicode_name: bool = False) -> SyntheticPatient:
    """Draw the synthetic patient of one scan.

    Parameters
    ----------
    seed, index : int
        Non-negative; together they fix the patient.
    unicode_name : bool
        Give the patient a non-ASCII (Latin and Japanese) name, for ISO_IR 192 tests.

    Returns
    -------
    SyntheticPatient
        Children 0.5-16 years nine times in ten, otherwise an adult of 18-75 years.
    """
    rng = _rng(seed, index, _PATIENT)
    sex: Sex = "M" if rng.random() < 0.5 else "F"
    adult = rng.random() < _ADULT_SHARE
    age = float(rng.uniform(18.0, 75.0) if adult else rng.uniform(0.5, 16.0))
    typical = BodyHabitus.typical(age, sex)
    body = BodyHabitus(
        age_years=age,
        sex=sex,
        height_cm=round(typical.height_cm * float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1)), 1),
        weight_kg=round(typical.weight_kg * float(np.clip(rng.normal(1.0, 0.12), 0.7, 1.4)), 1),
    )
    study_day = date(2024, 1, 2) + timedelta(days=int(rng.integers(0, 730)))
    study_datetime = datetime.combine(study_day, datetime.min.time()) + timedelta(
        minutes=8 * 60 + int(rng.integers(0, 8 * 60))
    )
    uptake = timedelta(minutes=int(rng.integers(150, 240)))
    group = "ADULT" if adult else "CHILD"
    name = f"SYNTHETIC^{group}^{seed}-{index:04d}"
    if unicode_name:
        name = f"Synthétique^Zoë^{seed}-{index:04d}=合成^ゾエ"
    # Weight-based activity with a floor for small children (EANM paediatric dosage card).
    activity = round(float(np.clip(7.0 * body.weight_kg, 40.0, 740.0)), 1)
    accession = f"SYN{int(rng.integers(0, 10**9)):09d}"
    agent = Radiopharmaceutical.MDP if rng.random() < 0.8 else Radiopharmaceutical.HDP
    return SyntheticPatient(
        body=body,
        name=name,
        patient_id=f"SYN-{seed}-{index:04d}",
        birth_date=study_day - timedelta(days=round(age * 365.25)),
        study_datetime=study_datetime,
        injection_datetime=study_datetime - uptake,
        administered_activity_mbq=activity,
        accession_number=accession,
        radiopharmaceutical=agent,
    )


def sample_counts(views: WholeBodyViews, rng: np.random.Generator) -> UInt16Frames:
    """Draw Poisson counts from a phantom's expected counts.

    Parameters
    ----------
    views : WholeBodyViews
        Expected counts of both views.
    rng : numpy.random.Generator
        Source of the Poisson noise.

    Returns
    -------
    ndarray of uint16, shape (2, rows, cols)
        Frame 0 anterior, frame 1 posterior; clipped at 65535.
    """
    rows = views.scanned_rows
    counts = np.zeros((2, *views.anterior.shape), dtype=np.uint16)
    for frame, lam in enumerate((views.anterior, views.posterior)):
        drawn = rng.poisson(lam[:rows])
        counts[frame, :rows] = np.minimum(drawn, np.iinfo(np.uint16).max)
    return counts


def thin_counts(counts: UInt16Frames, rng: np.random.Generator, p: float = 0.5) -> UInt16Frames:
    """Binomial thinning: keep each detected count with probability ``p``.

    Applied to Poisson counts of a 20 cm/min sweep, p = 1/2 gives exactly the statistics of a
    40 cm/min sweep of the same object and p = 1/3 those of a 60 cm/min sweep (DOMAIN.md
    section 4). For p = 1/2 and n <= 63 the kept count is the number of set bits among n fair
    random bits, which is Binomial(n, 1/2) exactly and about ten times faster than
    ``Generator.binomial``; other p and larger n use ``Generator.binomial``.

    Parameters
    ----------
    counts : ndarray of uint16
        Integer counts, any shape.
    rng : numpy.random.Generator
        Source of the random draws.
    p : float
        Probability of keeping a count, 0-1.

    Returns
    -------
    ndarray of uint16
        Same shape; every element <= the input's.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"thinning probability {p!r} is outside 0-1")
    flat = counts.ravel()
    nonzero = np.flatnonzero(flat)  # most of a frame is empty: draw only where needed
    if p != 0.5:
        kept = rng.binomial(flat[nonzero], p).astype(np.uint16)
    else:
        n = flat[nonzero].astype(np.uint64)
        bits = rng.bit_generator.random_raw(n.size)
        mask = (np.uint64(1) << np.minimum(n, np.uint64(63))) - np.uint64(1)
        kept = np.bitwise_count(bits & mask).astype(np.uint16)
        large = np.flatnonzero(n > 63)
        if large.size:
            kept[large] = rng.binomial(flat[nonzero[large]], 0.5)
    thinned = np.zeros_like(flat)
    thinned[nonzero] = kept
    return thinned.reshape(counts.shape)


def synthetic_scan_counts(seed: int, index: int, speed_cm_min: int = 20) -> UInt16Frames:
    """Counts of one synthetic scan: ``(2, 1024, 256)`` uint16, anterior then posterior.

    Parameters
    ----------
    seed, index : int
        Non-negative; fix the patient, phantom and noise.
    speed_cm_min : {20, 40, 60}
        40 and 60 give the binomial thinning (p = 20 / speed) of the 20 cm/min counts of the
        same seed and index.

    Returns
    -------
    ndarray of uint16, shape (2, 1024, 256)
    """
    return _scan(seed, index, speed_cm_min)[1]


def _scan(seed: int, index: int, speed_cm_min: int) -> tuple[int, UInt16Frames]:
    """Scanned rows and counts of one scan."""
    _check(seed, index, speed_cm_min)
    patient = synthetic_patient(seed, index)
    phantom = BonePhantom(patient.body, speed_cm_min=_STANDARD_SPEED)
    views = phantom.expected_counts(_rng(seed, index, _PHANTOM))
    counts = sample_counts(views, _rng(seed, index, _COUNTS))
    if speed_cm_min != _STANDARD_SPEED:
        p = _STANDARD_SPEED / speed_cm_min
        counts = thin_counts(counts, _rng(seed, index, _THINNING), p)
    return views.scanned_rows, counts


def _uid(seed: int, index: int, *parts: str) -> str:
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, str(seed), str(index), *parts]))


def synthetic_scan_dataset(
    seed: int, index: int, speed_cm_min: int = 20, *, unicode_name: bool = False
) -> Dataset:
    """One synthetic whole-body NM instance (both views), ready for :func:`write_nm`.

    Parameters
    ----------
    seed, index : int
        Non-negative; the same pair gives the same pixel data, header and UIDs.
    speed_cm_min : {20, 40, 60}
        Table speed written to the header; 40 and 60 thin the 20 cm/min counts (p = 1/2,
        1/3) and get their own Series and SOP Instance UIDs in the same study.
    unicode_name : bool
        Use a non-ASCII patient name and Specific Character Set ISO_IR 192.

    Returns
    -------
    pydicom.dataset.Dataset
        NM Image Storage data set with file meta information.
    """
    scanned_rows, counts = _scan(seed, index, speed_cm_min)
    patient = synthetic_patient(seed, index, unicode_name=unicode_name)
    scan_length_mm = round(scanned_rows * DEFAULT_PIXEL_SPACING_MM)

    def duration_ms(speed: int) -> int:
        return round(scan_length_mm / (speed * 10.0 / 60.0) * 1000.0)

    # The sweeps run in order of speed, each two minutes after the one before.
    order = SUPPORTED_SPEEDS_CM_MIN.index(speed_cm_min)
    earlier = SUPPORTED_SPEEDS_CM_MIN[:order]
    offset = timedelta(milliseconds=sum(map(duration_ms, earlier)), minutes=2 * len(earlier))
    header = NMHeader(
        patient_name=patient.name,
        patient_id=patient.patient_id,
        patient_birth_date=patient.birth_date,
        patient_sex=patient.body.sex,
        patient_age=dicom_age(patient.body.age_years),
        patient_size_m=patient.body.height_cm / 100.0,
        patient_weight_kg=patient.body.weight_kg,
        study_instance_uid=_uid(seed, index, "study"),
        series_instance_uid=_uid(seed, index, "series", str(speed_cm_min)),
        sop_instance_uid=_uid(seed, index, "instance", str(speed_cm_min)),
        accession_number=patient.accession_number,
        study_id=f"{index:04d}",
        study_datetime=patient.study_datetime,
        acquisition_datetime=patient.study_datetime + offset,
        scan_speed_cm_min=speed_cm_min,
        actual_frame_duration_ms=duration_ms(speed_cm_min),
        scan_length_mm=scan_length_mm,
        pixel_spacing_mm=DEFAULT_PIXEL_SPACING_MM,
        administered_activity_mbq=patient.administered_activity_mbq,
        injection_datetime=patient.injection_datetime,
        radiopharmaceutical=patient.radiopharmaceutical,
        series_number=order + 1,
        series_description=f"WB ANT/POST {speed_cm_min} cm/min (synthetic)",
        manufacturer_model_name=BonePhantom.__name__,
        specific_character_set="ISO_IR 192" if unicode_name else None,
    )
    return build_nm_dataset(counts, header)


def write_synthetic_scans(
    out_dir: Path,
    *,
    count: int = 1,
    seed: int = 0,
    speed_cm_min: int = 20,
    unicode_names: bool = False,
) -> list[Path]:
    """Write ``count`` synthetic whole-body bone scans as NM Part-10 files.

    Each scan is its own patient, study and series with one two-frame instance, named
    ``scan_0001.dcm``, ``scan_0002.dcm``, ... (the number is the index passed to
    :func:`synthetic_scan_dataset`).

    Parameters
    ----------
    out_dir : Path
        Folder to write into; created if missing.
    count : int
        Number of scans, >= 1.
    seed : int
        Non-negative; the same seed gives identical files.
    speed_cm_min : {20, 40, 60}
        Table speed; 40 and 60 give the thinned twins of the 20 cm/min scans of the same
        seed.
    unicode_names : bool
        Non-ASCII patient names with Specific Character Set ISO_IR 192.

    Returns
    -------
    list of Path
        The files written, in index order.
    """
    _check(seed, 0, speed_cm_min)
    if count < 1:
        raise ValueError(f"count {count!r} is less than 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(1, count + 1):
        ds = synthetic_scan_dataset(seed, index, speed_cm_min, unicode_name=unicode_names)
        paths.append(write_nm(out_dir / f"scan_{index:04d}.dcm", ds))
    logger.info("wrote %d synthetic scans at %d cm/min", count, speed_cm_min)
    return paths
