"""Training data: standard/rapid pairs of whole-body bone-scan views.

Three sources, one :data:`~training.data.sample.Sample` format:

- :class:`PhantomPairs`: phantom renders with Poisson noise and binomial thinning, with ground
  truth (expected counts, skeleton mask), drawn on the fly;
- :class:`ThinnedDicomPairs`: a site's standard-speed NM scans, thinned on the fly;
- :class:`RegisteredDicomPairs`: true standard/rapid scans of one study, rigidly registered.
"""

from training.data.crops import body_pixels, check_crop, crop_window, random_crop
from training.data.dicom_files import NMFile, SkipReason, UnusableFileError, find_nm_files
from training.data.dicom_pairs import ThinnedDicomPairs
from training.data.phantom_pairs import PhantomPairs, poisson_pair
from training.data.registered_pairs import RegisteredDicomPairs, RegisteredPair
from training.data.registration import (
    RigidRegistration,
    apply_rigid,
    phase_correlation,
    register_rigid,
    rotate_nearest,
    shift_image,
)
from training.data.sample import EpochDataset, Sample, make_sample

__all__ = [
    "EpochDataset",
    "NMFile",
    "PhantomPairs",
    "RegisteredDicomPairs",
    "RegisteredPair",
    "RigidRegistration",
    "Sample",
    "SkipReason",
    "ThinnedDicomPairs",
    "UnusableFileError",
    "apply_rigid",
    "body_pixels",
    "check_crop",
    "crop_window",
    "find_nm_files",
    "make_sample",
    "phase_correlation",
    "poisson_pair",
    "random_crop",
    "register_rigid",
    "rotate_nearest",
    "shift_image",
]
