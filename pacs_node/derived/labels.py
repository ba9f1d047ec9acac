"""The labels every derived object carries, whatever its IOD (DOMAIN.md section 2).

The series is new and says what it is (Series Description, Image Comments, Derivation
Description); the Source Image Sequence points at the source instance and, where it holds
only some of them, its frames; the Contributing Equipment Sequence names the acquisition
device and the processing algorithm (IHE AI Results). Also here: the check of the enhanced
frames against the source, the counts window and the file meta.
"""

from __future__ import annotations

import copy
import logging
from datetime import datetime

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from pydicom.valuerep import DT

from pacs_node.derived.carried import ACQUISITION_EQUIPMENT_KEYWORDS
from pacs_node.derived.provenance import ModelProvenance

__all__ = [
    "PROCESSING_ALGORITHM",
    "UInt16Frames",
    "check_enhanced",
    "code_item",
    "file_meta",
    "label_instance",
    "window",
]

logger = logging.getLogger(__name__)

UInt16Frames = npt.NDArray[np.uint16]

#: Purpose of Reference of the algorithm's Contributing Equipment item (IHE RAD AIR; the
#: profile's placeholder code until DICOM assigns one).
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")
_WINDOW_PERCENTILE = 99.5


def code_item(code: Code) -> Dataset:
    """A Code Sequence item (PS3.3 Table 8.8-1, basic coded entry attributes)."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def check_enhanced(source: Dataset, enhanced: np.ndarray) -> UInt16Frames:
    """Check the enhanced frames against the source; return them as little-endian uint16.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The source image instance.
    enhanced : ndarray of uint16, shape (frames, rows, columns)
        One enhanced frame per source frame, in the source's frame order.

    Returns
    -------
    ndarray of ``<u2``, C-contiguous
    """
    if not isinstance(enhanced, np.ndarray):
        raise ValueError(f"enhanced frames are a {type(enhanced).__name__}, not a numpy array")
    if enhanced.dtype.type is not np.uint16:
        raise ValueError(f"enhanced dtype {enhanced.dtype} is not uint16")
    if enhanced.ndim != 3:
        raise ValueError(f"enhanced shape {enhanced.shape} is not (frames, rows, columns)")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not source.get(keyword):
            raise ValueError(f"source has no {keyword}")
    if int(source.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"source Samples per Pixel {source.SamplesPerPixel} is not 1")
    frames = int(source.get("NumberOfFrames") or 1)
    if enhanced.shape[0] != frames:
        raise ValueError(
            f"enhanced has {enhanced.shape[0]} frames but the source has NumberOfFrames {frames}"
        )
    rows, cols = source.get("Rows"), source.get("Columns")
    if enhanced.shape[1:] != (rows, cols):
        raise ValueError(
            f"enhanced frames are {enhanced.shape[1]}x{enhanced.shape[2]} (rows x columns) "
            f"but the source's are {rows}x{cols}"
        )
    return np.ascontiguousarray(enhanced, dtype="<u2")


def window(pixels: UInt16Frames) -> tuple[str, str]:
    """Window Center and Width (C.11.2.1.2) that show counts from 0 to a high percentile.

    The bladder and injection site are often hundreds of times brighter than bone; a window
    up to the 99.5th percentile of counted pixels shows the skeleton, as NM viewers do.
    """
    counted = pixels[pixels > 0]
    top = float(np.percentile(counted, _WINDOW_PERCENTILE)) if counted.size else 1.0
    width = max(1, int(np.ceil(top)))
    return f"{width / 2:g}", str(width)


def _source_image_item(source: Dataset, frames: list[int]) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    # Image SOP Instance Reference Macro (PS3.3 Table 10-3): Referenced Frame Number is
    # Type 1C, required when the source is multi-frame and the reference does not apply to
    # all its frames, and with no "may be present otherwise" it must be absent when it does.
    source_frames = int(source.get("NumberOfFrames") or 1)
    if "NumberOfFrames" in source and sorted(frames) != list(range(source_frames)):
        item.ReferencedFrameNumber = [frame + 1 for frame in frames]
    item.PurposeOfReferenceCodeSequence = Sequence(
        [code_item(codes.DCM.SourceImageForImageProcessingOperation)]
    )
    return item


def _contributing_equipment(source: Dataset, model: ModelProvenance, now: datetime) -> Sequence:
    """Earlier contributors, the acquisition device, then the algorithm (C.12.1.1.5)."""
    items = [copy.deepcopy(item) for item in source.get("ContributingEquipmentSequence") or []]
    acquisition_code = codes.DCM.AcquisitionEquipment
    has_acquisition = any(
        purpose.get("CodeValue") == acquisition_code.value
        for item in items
        for purpose in item.get("PurposeOfReferenceCodeSequence") or []
    )
    if source.get("Manufacturer") and not has_acquisition:
        acquisition = Dataset()
        for keyword in ACQUISITION_EQUIPMENT_KEYWORDS:
            if source.get(keyword):
                acquisition[keyword] = copy.deepcopy(source[keyword])
        acquisition.PurposeOfReferenceCodeSequence = Sequence([code_item(acquisition_code)])
        items.append(acquisition)
    algorithm = Dataset()
    algorithm.Manufacturer = model.manufacturer
    algorithm.ManufacturerModelName = model.name
    algorithm.SoftwareVersions = model.software_versions
    algorithm.ContributionDateTime = DT(now)
    algorithm.ContributionDescription = f"AI enhancement, profile {model.profile}"
    algorithm.PurposeOfReferenceCodeSequence = Sequence([code_item(PROCESSING_ALGORITHM)])
    items.append(algorithm)
    return Sequence(items)


def label_instance(
    ds: Dataset,
    source: Dataset,
    model: ModelProvenance,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    frames: list[int],
    now: datetime,
) -> None:
    """Write the identity and derivation labels shared by every derived IOD.

    Covers General Series (C.7.3.1), General Equipment (C.7.5.1), the derivation part of
    General Image (C.7.6.1) and General Reference (C.7.6.16), and SOP Common (C.12.1).
    Image Type, pixel modules and IOD-specific modules are the caller's.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The derived instance, changed in place.
    source : pydicom.dataset.Dataset
        The instance its pixels were derived from.
    model : ModelProvenance
        The model that made the pixels.
    series_instance_uid, sop_instance_uid : str
        From :func:`pacs_node.derived.uids.derived_uids`.
    series_number, instance_number : int
        Positive integers.
    frames : list of int
        Zero-based source frames this instance holds, in its frame order.
    now : datetime
        Creation time of the instance.
    """
    day, clock = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPInstanceUID = UID(sop_instance_uid)
    ds.InstanceCreationDate, ds.InstanceCreationTime = day, clock
    ds.SeriesInstanceUID = UID(series_instance_uid)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = model.series_description
    ds.SeriesDate, ds.SeriesTime = day, clock
    ds.ContentDate, ds.ContentTime = day, clock
    ds.InstanceNumber = instance_number
    # The node made these pixels: General Equipment names it; the camera moves to the
    # Contributing Equipment Sequence with the algorithm.
    ds.Manufacturer = model.manufacturer
    ds.ManufacturerModelName = model.name
    ds.SoftwareVersions = model.software_versions
    ds.ImageComments = f"{model.series_description}: made by an AI model, not the acquired image"
    ds.BurnedInAnnotation = "NO"
    # Once lossy, always flagged (C.7.6.1.1.5): the enhancement cannot undo a lossy source.
    if source.get("LossyImageCompression") == "01":
        for keyword in (
            "LossyImageCompression",
            "LossyImageCompressionRatio",
            "LossyImageCompressionMethod",
        ):
            if keyword in source:
                ds[keyword] = copy.deepcopy(source[keyword])
    else:
        ds.LossyImageCompression = "00"
    # No Derivation Code Sequence: no CID 7203 (Image Derivation) code describes learned
    # restoration, and the nearest (113087, Smoothing) would misdescribe it; the text says it.
    ds.DerivationDescription = model.derivation_description
    ds.SourceImageSequence = Sequence([_source_image_item(source, frames)])
    ds.ContributingEquipmentSequence = _contributing_equipment(source, model, now)


def file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File Meta Information (PS3.10 7.1) for Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PACS_NODE_010"
    return meta
