"""Pairs made from standard-speed NM DICOM scans by binomial thinning, fresh every epoch.

Keeping each detected count of a standard-speed scan with probability p gives exactly the
statistics of a scan of the same object in p times the time (White & Lawson 2015; DOMAIN.md
§4), so any site's archive of 20 cm/min whole-body scans is a training set for 40 (p = 1/2)
or 60 cm/min (p = 1/3). Thinning needs the raw counts: only NM Image Storage files whose pixel
values are counts are used.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from pacs_node.synth import thin_counts
from training.data.cache import LruCache
from training.data.crops import body_pixels, check_crop, count_hot_pixels, crop_window
from training.data.dicom_files import NMFile, PathsLike, find_nm_files, read_nm_counts
from training.data.sample import EpochDataset, Sample, make_sample
from training.data.targets import held_out_target

__all__ = ["ThinnedDicomPairs"]

logger = logging.getLogger(__name__)

_SPEED_TOLERANCE = 0.02  # relative; Scan Velocity is a decimal string of limited precision


class ThinnedDicomPairs(EpochDataset):
    """Standard-speed NM frames and their binomial thinning, one sample per frame.

    Parameters
    ----------
    paths : path or sequence of paths
        NM files and folders (searched recursively). Files that are not NM Image Storage with
        count pixel values are skipped in folders and refused when named directly.
    p : float
        Share of counts kept, 0 < p <= 1; ``dose_factor`` = 1 / p.
    seed : int
        With the item index and the epoch, fixes the thinning and the crop.
    crop : (rows, cols), optional
        Random crop, sides multiples of 16, mostly centred on the body; None for whole frames
        (which collate only when all files share one frame size).
    standard_speed_cm_min : float, optional
        When given, files whose Scan Velocity differs by more than 2 % are skipped in folders
        and refused when named; files without Scan Velocity are kept.
    strict : bool
        Refuse unusable files found in folders too.
    body_probability : float
        Chance that a crop is centred on the body.
    hot_probability : float
        Chance that a crop holds one of the frame's hot spots (3×3 mean standard counts at or
        above half their maximum; :mod:`training.data.crops`).
    cache_files : int
        Decoded files kept in memory (about 1 MB per 1024×256 two-view file).

    Raises
    ------
    ValueError
        A missing path, an empty folder, a refused file, or no usable file; the message
        names the file or folder.
    """

    def __init__(
        self,
        paths: PathsLike,
        *,
        p: float = 0.5,
        seed: int = 0,
        crop: tuple[int, int] | None = None,
        standard_speed_cm_min: float | None = None,
        strict: bool = False,
        body_probability: float = 0.9,
        hot_probability: float = 0.0,
        cache_files: int = 4,
    ) -> None:
        if not 0.0 < p <= 1.0:
            raise ValueError(f"thinning probability {p!r} is outside (0, 1]")
        if seed < 0:
            raise ValueError(f"seed {seed!r} is negative")
        if standard_speed_cm_min is not None and not standard_speed_cm_min > 0:
            raise ValueError(f"standard speed {standard_speed_cm_min!r} cm/min is not positive")
        self.p = p
        self.seed = seed
        self.crop = check_crop(crop)
        self.standard_speed_cm_min = standard_speed_cm_min
        self.body_probability = body_probability
        self.hot_probability = hot_probability
        self.files = tuple(find_nm_files(paths, strict=strict, accept=self._speed_refusal))
        self._frames = [
            (number, frame)
            for number, header in enumerate(self.files)
            for frame in range(header.frames)
        ]
        self._counts: LruCache[int, npt.NDArray[np.uint16]] = LruCache(cache_files)
        logger.info(
            "thinning %d frames of %d files with p = %.3g", len(self._frames), len(self.files), p
        )

    def _speed_refusal(self, header: NMFile) -> str | None:
        if self.standard_speed_cm_min is None or header.scan_velocity_mm_s is None:
            return None
        speed = header.scan_velocity_mm_s * 6.0  # mm/s to cm/min
        if abs(speed - self.standard_speed_cm_min) > _SPEED_TOLERANCE * self.standard_speed_cm_min:
            return f"{speed:.4g} cm/min, not {self.standard_speed_cm_min:g}"
        return None

    @property
    def dose_factor(self) -> float:
        """Standard scan time over rapid scan time, 1 / p."""
        return 1.0 / self.p

    def __len__(self) -> int:
        return len(self._frames)

    def _read(self, number: int) -> npt.NDArray[np.uint16]:
        return read_nm_counts(self.files[number])

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        number, frame = self._frames[index]
        header = self.files[number]
        standard = self._counts.get(number, self._read)[frame]
        rng = np.random.default_rng([self.seed, index, self.epoch])
        frame_shape = standard.shape
        if self.crop is not None:
            try:
                window = crop_window(
                    standard.shape,
                    self.crop,
                    rng,
                    body=body_pixels(standard),
                    body_probability=self.body_probability,
                    hot=count_hot_pixels(standard) if self.hot_probability > 0 else None,
                    hot_probability=self.hot_probability,
                )
            except ValueError as exc:
                raise ValueError(f"{header.path}: {exc}") from None
            standard = standard[window]
        # Thinning a crop draws the same distribution as cropping a thinned frame, for less.
        rapid = thin_counts(np.ascontiguousarray(standard), rng, self.p)
        return make_sample(
            rapid=rapid,
            standard=standard,
            target_vst=held_out_target(standard, rapid, self.dose_factor),
            dose_factor=self.dose_factor,
            frame_shape=frame_shape,
            source=header.frame_label(frame),
        )
