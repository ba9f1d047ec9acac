"""Enhanced frames as Secondary Capture: multi-frame word (default) or one image per view.

highdicom's ``SCImage`` builds the single-frame Secondary Capture Image (PS3.3 A.8.1); it has
no multi-frame form, so the Multi-frame Grayscale Word SC Image (A.8.4) is built here with
pydicom, module by module, and both are checked the same way (``dciodvfy``, strict reading).
"""

from __future__ import annotations

import logging
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacs_node.derived.carried import carry_over
from pacs_node.derived.labels import UInt16Frames, code_item, file_meta, label_instance, window
from pacs_node.derived.provenance import ModelProvenance
from pacs_node.derived.uids import DerivedUids
from pacs_node.derived.views import FrameView, frame_views

__all__ = [
    "MULTIFRAME_GRAYSCALE_WORD_SC",
    "SECONDARY_CAPTURE",
    "build_multiframe_sc",
    "build_single_frame_sc",
]

logger = logging.getLogger(__name__)

MULTIFRAME_GRAYSCALE_WORD_SC = UID("1.2.840.10008.5.1.4.1.1.7.3")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
FRAME_LABEL_VECTOR_TAG = Tag("FrameLabelVector")
_BIPED_LETTERS = frozenset("LRAPHF")
_IMAGE_TYPE = ["DERIVED", "SECONDARY"]  # C.8.6.2 / DOMAIN.md section 2


def _sc_equipment(ds: Dataset, source: Dataset, model: ModelProvenance) -> None:
    """SC Equipment Module (PS3.3 C.8.6.1).

    Its Modality (Type 3) is the source equipment of the image and overrides the General
    Series definition, so the series keeps the source's modality and hangs with it.
    """
    ds.Modality = source.get("Modality") or "OT"
    ds.ConversionType = "WSD"  # workstation: made by software, not digitised
    ds.SecondaryCaptureDeviceManufacturer = model.manufacturer
    ds.SecondaryCaptureDeviceManufacturerModelName = model.name
    ds.SecondaryCaptureDeviceSoftwareVersions = model.software_versions


def _pixel_spacing(source: Dataset) -> list[str] | None:
    spacing = source.get("PixelSpacing")
    if spacing is None or len(spacing) != 2:
        return None
    return [str(value) for value in spacing]


def _voi(ds: Dataset, pixels: UInt16Frames) -> None:
    """VOI LUT Module (C.11.2): a counts window; the stored values stay counts."""
    ds.WindowCenter, ds.WindowWidth = window(pixels)
    ds.WindowCenterWidthExplanation = "COUNTS 0 TO P99.5"


def build_multiframe_sc(
    source: Dataset,
    pixels: UInt16Frames,
    model: ModelProvenance,
    *,
    uids: DerivedUids,
    series_number: int,
    now: datetime,
) -> Dataset:
    """One Multi-frame Grayscale Word SC instance holding every enhanced frame.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The source image instance.
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
        The Multi-frame Grayscale Word SC Image IOD (PS3.3 A.8.4) with file meta.
    """
    frames = pixels.shape[0]
    sop_uid = uids.sop_instance_uids[0]
    ds = Dataset()
    ds.file_meta = file_meta(MULTIFRAME_GRAYSCALE_WORD_SC, sop_uid)
    ds.SOPClassUID = MULTIFRAME_GRAYSCALE_WORD_SC
    carry_over(source, ds)
    label_instance(
        ds,
        source,
        model,
        series_instance_uid=uids.series_instance_uid,
        sop_instance_uid=sop_uid,
        series_number=series_number,
        instance_number=int(source.get("InstanceNumber") or 1),
        frames=list(range(frames)),
        now=now,
    )
    _sc_equipment(ds, source, model)
    ds.ImageType = _IMAGE_TYPE
    # One Patient Orientation serves every frame (Type 2C). Anterior and posterior views run
    # opposite ways (the posterior is seen from behind), so then it stays empty and the
    # frame labels say which view is which.
    views = frame_views(source, frames)
    orientations = {view.orientation for view in views}
    shared = orientations.pop() if len(orientations) == 1 else None
    ds.PatientOrientation = list(shared) if shared is not None else ""
    # Image Pixel (C.7.6.3) as A.8.4.4.1 fixes it for word SC: 16 bits, all stored, unsigned.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    # Multi-frame (C.7.6.6) and SC Multi-frame Vector (C.8.6.4): frames are indexed by view.
    # For one frame the pointer must be absent (C.8.6.3: Type 1C, frames > 1), and so must
    # the vector it would point to.
    ds.NumberOfFrames = frames
    if frames > 1:
        ds.FrameIncrementPointer = FRAME_LABEL_VECTOR_TAG
        ds.FrameLabelVector = [view.label for view in views]
    # SC Multi-frame Image (C.8.6.3): identity rescale with type US, as A.8.4.4.1 requires.
    spacing = _pixel_spacing(source)
    if spacing is not None:
        ds.PixelSpacing = spacing
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PresentationLUTShape = "IDENTITY"
    _voi(ds, pixels)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _highdicom_orientation(view: FrameView) -> tuple[str, str] | None:
    if view.orientation is None or not all(v in _BIPED_LETTERS for v in view.orientation):
        return None
    return view.orientation


def build_single_frame_sc(
    source: Dataset,
    pixels: UInt16Frames,
    model: ModelProvenance,
    *,
    uids: DerivedUids,
    series_number: int,
    now: datetime,
) -> list[Dataset]:
    """One Secondary Capture Image per enhanced frame (view), built with highdicom.

    Parameters
    ----------
    source, pixels, model, series_number, now
        As for :func:`build_multiframe_sc`.
    uids : DerivedUids
        With one SOP Instance UID per frame.

    Returns
    -------
    list of pydicom.dataset.Dataset
        Secondary Capture Image IODs (PS3.3 A.8.1), in frame order, with file meta.
    """
    frames = pixels.shape[0]
    views = frame_views(source, frames)
    first_number = (int(source.get("InstanceNumber") or 1) - 1) * frames + 1
    spacing = _pixel_spacing(source)
    out: list[Dataset] = []
    for frame, (view, sop_uid) in enumerate(zip(views, uids.sop_instance_uids, strict=True)):
        orientation = _highdicom_orientation(view)
        sc = hd.sc.SCImage(
            pixel_array=pixels[frame],
            photometric_interpretation="MONOCHROME2",
            bits_allocated=16,
            coordinate_system="PATIENT",
            study_instance_uid=source.StudyInstanceUID,
            series_instance_uid=uids.series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            instance_number=first_number + frame,
            manufacturer=model.manufacturer,
            pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
            # highdicom insists on an orientation; an unknown one is emptied below.
            patient_orientation=orientation or ("L", "F"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            content_date=now.date(),
            content_time=now.time(),
        )
        sc.file_meta = file_meta(SECONDARY_CAPTURE, sop_uid)
        # Copied rather than passed to highdicom, which checks it against the terms it knows.
        carry_over(source, sc)
        label_instance(
            sc,
            source,
            model,
            series_instance_uid=uids.series_instance_uid,
            sop_instance_uid=sop_uid,
            series_number=series_number,
            instance_number=first_number + frame,
            frames=[frame],
            now=now,
        )
        _sc_equipment(sc, source, model)
        sc.ImageType = _IMAGE_TYPE
        if orientation is None:
            sc["PatientOrientation"].value = ""
        # SC Image Module (C.8.6.2): when it was captured, and which view it shows.
        sc.DateOfSecondaryCapture, sc.TimeOfSecondaryCapture = sc.ContentDate, sc.ContentTime
        if view.code is not None:
            sc.ViewCodeSequence = Sequence([code_item(view.code)])
        sc.DerivationDescription = f"{view.label} view. {model.derivation_description}"
        _voi(sc, pixels)
        out.append(sc)
    return out
