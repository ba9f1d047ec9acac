"""Wrap anterior/posterior count frames into an NM Image Storage object.

The writer knows nothing of phantoms: it takes a ``(2, rows, cols)`` uint16 array (frame 0 =
detector 1 = anterior, frame 1 = detector 2 = posterior) and an :class:`NMHeader`, and builds
the modules of the NM Image IOD (PS3.3 A.5): Patient, General Study, Patient Study, General
Series, NM/PET Patient Orientation, General Equipment, General Image, Image Pixel, NM Image
Pixel, Multi-frame, NM Multi-frame, NM Image, NM Isotope, NM Detector and SOP Common.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from pacs_node import __version__

logger = logging.getLogger(__name__)

NM_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.20")
ENERGY_WINDOW_VECTOR_TAG = 0x00540010
DETECTOR_VECTOR_TAG = 0x00540020
SUPPORTED_CHARACTER_SETS = (None, "ISO_IR 100", "ISO_IR 192")

# CID 26 Nuclear Medicine Projection (PS3.16); detector 1 looks at the front.
ANTERIOR_VIEW = Code("399321004", "SCT", "Anterior projection")
POSTERIOR_VIEW = Code("399001007", "SCT", "Posterior projection")
# Image Orientation (Patient) of each detector's frame: down a column is head to feet (-Z);
# along a row is towards the patient's left (+X) seen from the front, right (-X) from behind.
_ORIENTATION = {1: [1, 0, 0, 0, 0, -1], 2: [-1, 0, 0, 0, 0, -1]}
_AGE_PATTERN = re.compile(r"^\d{3}[DWMY]$")

UInt16Frames = npt.NDArray[np.uint16]


@dataclass(frozen=True, slots=True)
class Isotope:
    """A radionuclide and the photopeak window used to image it (PS3.3 C.8.4.10)."""

    code: Code  #: CID 18 Isotopes in Radiopharmaceuticals
    window_name: str
    window_kev: tuple[float, float]


#: Tc-99m, 140 keV photopeak with a 20 % window.
TC99M = Isotope(Code("72454006", "SCT", "^99m^Technetium"), "Tc99m", (126.0, 154.0))


class Radiopharmaceutical(enum.Enum):
    """Bone-seeking Tc-99m agents; values are the Radiopharmaceutical (0018,0031) text."""

    MDP = "Tc-99m MDP"  #: medronate, CID 25 (SCT 96390006)
    HDP = "Tc-99m HDP"  #: oxidronate, CID 25 (SCT 53951001)

    @property
    def code(self) -> Code:
        """Radiopharmaceutical Code Sequence item (CID 25)."""
        if self is Radiopharmaceutical.MDP:
            return Code("96390006", "SCT", "Technetium Tc^99m^ medronate")
        return Code("53951001", "SCT", "Technetium Tc^99m^ oxidronate")


@dataclass(frozen=True, slots=True, kw_only=True)
class NMHeader:
    """Header facts of one whole-body NM instance; no defaults for anything patient-specific.

    Sizes follow DICOM units: Patient's Size in metres, Weight in kg, durations in ms.
    ``specific_character_set`` None means the default repertoire (ASCII names only).
    """

    patient_name: str
    patient_id: str
    patient_birth_date: date
    patient_sex: Literal["M", "F", "O"]
    patient_age: str  #: Age String (AS), e.g. "006M" or "012Y"
    patient_size_m: float
    patient_weight_kg: float
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    accession_number: str
    study_id: str
    study_datetime: datetime
    acquisition_datetime: datetime
    scan_speed_cm_min: float
    actual_frame_duration_ms: int
    scan_length_mm: int
    pixel_spacing_mm: float
    administered_activity_mbq: float
    injection_datetime: datetime
    isotope: Isotope = TC99M
    radiopharmaceutical: Radiopharmaceutical = Radiopharmaceutical.MDP
    series_number: int = 1
    instance_number: int = 1
    study_description: str = "NM Whole Body Bone Scan"
    series_description: str = "WB ANT/POST"
    referring_physician_name: str = ""
    institution_name: str = "Synthetic Children's Hospital"
    station_name: str = "SYNTH-NM01"
    manufacturer: str = "pacs_node synthetic"
    manufacturer_model_name: str = "BonePhantom"
    device_serial_number: str = "SYN0001"
    software_versions: str = f"pacs_node {__version__}"
    collimator: str = "LEHR"
    specific_character_set: str | None = None

    def __post_init__(self) -> None:
        for name in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
            value = getattr(self, name)
            if not UID(value).is_valid:
                raise ValueError(f"{name} {value!r} is not a valid UID")
        if self.specific_character_set not in SUPPORTED_CHARACTER_SETS:
            raise ValueError(f"character set {self.specific_character_set!r} is not supported")
        if self.specific_character_set is None and not self.patient_name.isascii():
            raise ValueError("a non-ASCII patient name needs a specific character set")
        if self.specific_character_set == "ISO_IR 100":
            try:
                self.patient_name.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("the patient name does not fit ISO_IR 100 (Latin-1)") from None
        if not _AGE_PATTERN.match(self.patient_age):
            raise ValueError(f"patient age {self.patient_age!r} is not an Age String (nnnD/W/M/Y)")
        if self.scan_speed_cm_min <= 0:
            raise ValueError(f"scan speed {self.scan_speed_cm_min!r} cm/min is not positive")
        if self.actual_frame_duration_ms <= 0:
            raise ValueError(f"frame duration {self.actual_frame_duration_ms!r} ms is not positive")
        if self.pixel_spacing_mm <= 0:
            raise ValueError(f"pixel spacing {self.pixel_spacing_mm!r} mm is not positive")
        if len(self.accession_number) > 16:
            raise ValueError(f"accession number {self.accession_number!r} is longer than 16")


def dicom_age(age_years: float) -> str:
    """Patient's Age as an Age String (PS3.5 6.2): days under 1 month, months under 2 years.

    Parameters
    ----------
    age_years : float
        Age in years, 0-999.

    Returns
    -------
    str
        Four characters, e.g. ``"006M"`` for half a year or ``"014Y"``.
    """
    if not 0.0 <= age_years < 1000.0:
        raise ValueError(f"age {age_years!r} years cannot be written as an Age String")
    if age_years < 1.0 / 12.0:
        return f"{int(age_years * 365.25):03d}D"
    if age_years < 2.0:
        return f"{int(age_years * 12.0):03d}M"
    return f"{int(age_years):03d}Y"


def build_nm_dataset(frames: UInt16Frames, header: NMHeader) -> Dataset:
    """Build a whole-body NM Image Storage data set with file meta information.

    Parameters
    ----------
    frames : ndarray of uint16, shape (2, rows, cols)
        Detected counts; frame 0 is detector 1 (anterior), frame 1 detector 2 (posterior, as
        seen from behind).
    header : NMHeader
        Patient, study, series and acquisition facts.

    Returns
    -------
    pydicom.dataset.Dataset
        The NM Image IOD (PS3.3 A.5) with ``file_meta`` for Explicit VR Little Endian.
    """
    if frames.dtype != np.uint16:
        raise ValueError(f"frames dtype {frames.dtype} is not uint16")
    if frames.ndim != 3 or frames.shape[0] != 2:
        raise ValueError(f"frames shape {frames.shape} is not (2, rows, cols)")
    ds = Dataset()
    _sop_common(ds, header)
    _patient_and_study(ds, header)
    _series_and_equipment(ds, header)
    _image(ds, header, frames)
    _isotope(ds, header)
    _detectors(ds, header)
    ds.file_meta = _file_meta(header)
    logger.debug("built NM instance with %d counts", int(ds.CountsAccumulated))
    return ds


def write_nm(path: Path, ds: Dataset) -> Path:
    """Write an NM data set from :func:`build_nm_dataset` as a DICOM Part-10 file.

    Parameters
    ----------
    path : Path
        Destination file; parent folders must exist.
    ds : pydicom.dataset.Dataset
        Data set with ``file_meta``.

    Returns
    -------
    Path
        ``path``, for chaining.
    """
    if ds.get("SOPClassUID") != NM_IMAGE_STORAGE:
        raise ValueError(f"SOP class {ds.get('SOPClassUID')!r} is not NM Image Storage")
    ds.save_as(path, enforce_file_format=True)
    return path


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _da(value: date) -> str:
    return value.strftime("%Y%m%d")


def _tm(value: datetime) -> str:
    return value.strftime("%H%M%S")


def _file_meta(header: NMHeader) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = NM_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = UID(header.sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PACS_NODE_010"
    return meta


def _sop_common(ds: Dataset, header: NMHeader) -> None:
    """SOP Common Module (PS3.3 C.12.1)."""
    if header.specific_character_set is not None:
        ds.SpecificCharacterSet = header.specific_character_set
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = header.sop_instance_uid
    # Derived from the acquisition, not the clock, so a seed gives byte-identical files.
    ds.InstanceCreationDate = _da(header.acquisition_datetime)
    ds.InstanceCreationTime = _tm(header.acquisition_datetime)


def _patient_and_study(ds: Dataset, header: NMHeader) -> None:
    """Patient (C.7.1.1), General Study (C.7.2.1) and Patient Study (C.7.2.2) Modules."""
    ds.PatientName = header.patient_name
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = _da(header.patient_birth_date)
    ds.PatientSex = header.patient_sex
    ds.StudyInstanceUID = header.study_instance_uid
    ds.StudyDate = _da(header.study_datetime)
    ds.StudyTime = _tm(header.study_datetime)
    ds.ReferringPhysicianName = header.referring_physician_name
    ds.StudyID = header.study_id
    ds.AccessionNumber = header.accession_number
    ds.StudyDescription = header.study_description
    ds.PatientAge = header.patient_age
    ds.PatientSize = f"{header.patient_size_m:.2f}"
    ds.PatientWeight = f"{header.patient_weight_kg:.1f}"


def _series_and_equipment(ds: Dataset, header: NMHeader) -> None:
    """General Series (C.7.3.1), NM/PET Patient Orientation (C.8.4.6), General Equipment."""
    ds.Modality = "NM"
    ds.SeriesInstanceUID = header.series_instance_uid
    ds.SeriesNumber = header.series_number
    ds.SeriesDate = _da(header.acquisition_datetime)
    ds.SeriesTime = _tm(header.acquisition_datetime)
    ds.SeriesDescription = header.series_description
    ds.ProtocolName = "Whole Body Bone"
    ds.BodyPartExamined = "WHOLEBODY"
    # CID 19 / CID 20 / CID 21: supine, head first, as whole-body sweeps are acquired.
    orientation = _code(Code("102538003", "SCT", "recumbent"))
    orientation.PatientOrientationModifierCodeSequence = Sequence(
        [_code(Code("40199007", "SCT", "supine"))]
    )
    ds.PatientOrientationCodeSequence = Sequence([orientation])
    ds.PatientGantryRelationshipCodeSequence = Sequence(
        [_code(Code("102540008", "SCT", "headfirst"))]
    )
    ds.Manufacturer = header.manufacturer
    ds.InstitutionName = header.institution_name
    ds.StationName = header.station_name
    ds.ManufacturerModelName = header.manufacturer_model_name
    ds.DeviceSerialNumber = header.device_serial_number
    ds.SoftwareVersions = header.software_versions


def _image(ds: Dataset, header: NMHeader, frames: UInt16Frames) -> None:
    """General Image, Image Pixel, NM Image Pixel, (NM) Multi-frame and NM Image Modules."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]  # C.8.4.9.1.1
    ds.InstanceNumber = header.instance_number
    ds.AcquisitionDate = _da(header.acquisition_datetime)
    ds.AcquisitionTime = _tm(header.acquisition_datetime)
    ds.ContentDate = _da(header.acquisition_datetime)
    ds.ContentTime = _tm(header.acquisition_datetime)
    # Patient Orientation is one value for the instance, but the two frames run in opposite
    # row directions (posterior is seen from behind), so leave it empty (Type 2C) and let each
    # Detector Information item's Image Orientation (Patient) carry the frame's orientation.
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames.shape[0]
    ds.Rows = frames.shape[1]
    ds.Columns = frames.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    spacing = f"{header.pixel_spacing_mm:.4g}"
    ds.PixelSpacing = [spacing, spacing]
    # NM Multi-frame (C.8.4.8): for WHOLE BODY, frames are indexed by window then detector.
    ds.FrameIncrementPointer = [ENERGY_WINDOW_VECTOR_TAG, DETECTOR_VECTOR_TAG]
    ds.EnergyWindowVector = [1, 1]
    ds.NumberOfEnergyWindows = 1
    ds.DetectorVector = [1, 2]
    ds.NumberOfDetectors = 2
    # NM Image (C.8.4.9): Scan Velocity in mm/s, Scan Length in mm, durations in ms.
    ds.CountsAccumulated = int(frames.sum(dtype=np.int64))
    ds.AcquisitionTerminationCondition = "MANU"
    ds.ActualFrameDuration = header.actual_frame_duration_ms
    ds.ScanVelocity = f"{header.scan_speed_cm_min * 10.0 / 60.0:.4f}"
    ds.ScanLength = header.scan_length_mm
    ds.WholeBodyTechnique = "1PS"
    ds.PixelData = np.ascontiguousarray(frames, dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"


def _isotope(ds: Dataset, header: NMHeader) -> None:
    """NM Isotope Module (PS3.3 C.8.4.10).

    Radionuclide Half Life and Radiopharmaceutical Start DateTime belong to the PET Isotope
    Module; in an NM image they would make a Standard Extended SOP Class.
    """
    window_range = Dataset()
    window_range.EnergyWindowLowerLimit = f"{header.isotope.window_kev[0]:g}"
    window_range.EnergyWindowUpperLimit = f"{header.isotope.window_kev[1]:g}"
    window = Dataset()
    window.EnergyWindowRangeSequence = Sequence([window_range])
    window.EnergyWindowName = header.isotope.window_name
    ds.EnergyWindowInformationSequence = Sequence([window])

    agent = Dataset()
    agent.RadiopharmaceuticalRoute = "IV"
    agent.AdministrationRouteCodeSequence = Sequence(
        [_code(Code("47625008", "SCT", "Intravenous route"))]  # CID 11
    )
    agent.RadiopharmaceuticalStartTime = _tm(header.injection_datetime)
    agent.RadionuclideTotalDose = f"{header.administered_activity_mbq:.1f}"
    agent.Radiopharmaceutical = header.radiopharmaceutical.value
    agent.RadionuclideCodeSequence = Sequence([_code(header.isotope.code)])
    agent.RadiopharmaceuticalCodeSequence = Sequence([_code(header.radiopharmaceutical.code)])
    ds.RadiopharmaceuticalInformationSequence = Sequence([agent])


def _detectors(ds: Dataset, header: NMHeader) -> None:
    """NM Detector Module (PS3.3 C.8.4.11): one item per detector, in Detector Vector order."""
    items = []
    for detector, view in ((1, ANTERIOR_VIEW), (2, POSTERIOR_VIEW)):
        item = Dataset()
        item.CollimatorGridName = header.collimator
        item.CollimatorType = "PARA"
        item.FieldOfViewShape = "RECTANGLE"
        item.FieldOfViewDimensions = [533, 387]
        item.FocalDistance = None
        item.ZoomFactor = ["1", "1"]
        item.ImagePositionPatient = None
        item.ImageOrientationPatient = _ORIENTATION[detector]
        view_item = _code(view)
        view_item.ViewModifierCodeSequence = Sequence()
        item.ViewCodeSequence = Sequence([view_item])
        items.append(item)
    ds.DetectorInformationSequence = Sequence(items)
