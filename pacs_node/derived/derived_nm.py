"""Enhanced frames as a derived NM Image, for NM workstations that want NM semantics.

The source NM instance is copied (views, detectors, energy windows, isotope, scan facts) and
then relabelled: new UIDs, Image Type DERIVED, the enhanced pixels, the derivation labels.
What described the camera or the source's pixels only is dropped rather than left stale.
"""

from __future__ import annotations

import copy
import logging
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from pacs_node.derived.labels import UInt16Frames, file_meta, label_instance, window
from pacs_node.derived.provenance import ModelProvenance
from pacs_node.derived.uids import DerivedUids

__all__ = ["NM_IMAGE_STORAGE", "build_derived_nm"]

logger = logging.getLogger(__name__)

NM_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.20")

#: Source attributes that would be false of the derived instance: the source's pixel
#: statistics and thumbnail, signatures over its bytes, its place in the acquiring
#: procedure step, and the camera's identity (kept in the Contributing Equipment item).
_DROPPED = (
    "PixelData",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "IconImageSequence",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "VOILUTSequence",
    "RealWorldValueMappingSequence",
    "ReferencedImageSequence",
    "DerivationCodeSequence",
    "MACParametersSequence",
    "DigitalSignaturesSequence",
    "EncryptedAttributesSequence",
    "OriginalAttributesSequence",
    "InstanceCoercionDateTime",
    "ReferencedPerformedProcedureStepSequence",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedProcedureStepDescription",
    "CommentsOnThePerformedProcedureStep",
    "DeviceSerialNumber",
    "DeviceUID",
    "StationName",
    "GantryID",
    "UDISequence",
    "ManufacturerDeviceClassUID",
    "DateOfLastCalibration",
    "TimeOfLastCalibration",
    "DateOfManufacture",
    "DateOfInstallation",
    "SpatialResolution",
    "IrradiationEventUID",
    "AcquisitionUID",
)


def _image_type(source: Dataset) -> list[str]:
    """Image Type for the NM Image Module (PS3.3 C.8.4.9.1.1).

    Value 1 becomes DERIVED; value 2 is PRIMARY, the only value the NM IOD allows (dciodvfy
    refuses SECONDARY); values 3 on are kept as they are, since value 3 (e.g. WHOLE BODY)
    fixes what the Frame Increment Pointer of the copied NM Multi-frame Module means.
    """
    values = source.get("ImageType") or []
    if isinstance(values, str):
        values = [values]
    return ["DERIVED", "PRIMARY", *(str(v) for v in list(values)[2:])]


def build_derived_nm(
    source: Dataset,
    pixels: UInt16Frames,
    model: ModelProvenance,
    *,
    uids: DerivedUids,
    series_number: int,
    now: datetime,
) -> Dataset:
    """One derived NM Image instance with the source's NM modules and the enhanced frames.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        An NM Image Storage instance.
    pixels : ndarray of ``<u2``, shape (frames, rows, columns)
        Checked enhanced frames, in the source's frame order.
    model : ModelProvenance
        The model that made them.
    uids : DerivedUids
        With one SOP Instance UID.
    series_number : int
        Series Number of the derived series.
    now : datetime
        Creation time.

    Returns
    -------
    pydicom.dataset.Dataset
        The NM Image IOD (PS3.3 A.5) with file meta.
    """
    if source.SOPClassUID != NM_IMAGE_STORAGE:
        raise ValueError(
            f"a derived NM image needs an NM Image Storage source, not {source.SOPClassUID!r}"
        )
    ds = Dataset()
    for element in source:
        # Private elements may describe the vendor's processing of the source's pixels.
        if element.tag.is_private or element.keyword in _DROPPED:
            continue
        if element.tag.group in range(0x6000, 0x6020, 2):  # overlays drawn on the source
            continue
        ds.add(copy.deepcopy(element))
    sop_uid = uids.sop_instance_uids[0]
    ds.file_meta = file_meta(NM_IMAGE_STORAGE, sop_uid)
    label_instance(
        ds,
        source,
        model,
        series_instance_uid=uids.series_instance_uid,
        sop_instance_uid=sop_uid,
        series_number=series_number,
        instance_number=int(source.get("InstanceNumber") or 1),
        frames=list(range(pixels.shape[0])),
        now=now,
    )
    ds.ImageType = _image_type(source)
    # Counts Accumulated (C.8.4.9) is read as the image's total by NM software; keep it
    # true of the pixels it travels with.
    ds.CountsAccumulated = int(pixels.sum(dtype=np.int64))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = window(pixels)
    ds.WindowCenterWidthExplanation = "COUNTS 0 TO P99.5"
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds
