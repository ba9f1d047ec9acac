"""True standard/rapid pairs from a site that scanned patients at both speeds.

Files are grouped by (Patient ID, Study Instance UID), used only as a hashed key; within a
study the slowest sweep (lowest Scan Velocity, PS3.3 C.8.4.9) is the standard and each faster
one a rapid scan, with ``dose_factor = v_rapid / v_standard``. Frames pair by view (View Code
Sequence of each frame's detector), or by frame order when views are not coded. The rapid frame
is registered rigidly to the standard one (:mod:`training.data.registration`), because the
patient moves between sweeps; pairs that do not correlate well after registration are skipped
with the reason logged. Unlike thinning, such pairs also carry tracer redistribution and decay
between the sweeps.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from training.data.cache import LruCache
from training.data.crops import body_pixels, check_crop, count_hot_pixels, crop_window
from training.data.dicom_files import NMFile, PathsLike, as_paths, find_nm_files, read_nm_counts
from training.data.registration import RigidRegistration, apply_rigid, register_rigid
from training.data.sample import EpochDataset, Sample, make_sample
from training.data.targets import independent_target

__all__ = ["RegisteredDicomPairs", "RegisteredPair"]

logger = logging.getLogger(__name__)

_SAME_SPEED = 0.01  # relative difference below which two velocities are one speed


@dataclass(frozen=True, slots=True)
class RegisteredPair:
    """One standard frame, the rapid frame of the same view, and the move between them."""

    standard: NMFile
    rapid: NMFile
    standard_frame: int
    rapid_frame: int
    view: str
    dose_factor: float
    registration: RigidRegistration

    @property
    def source(self) -> str:
        """Provenance of both frames, without patient data."""
        return (
            f"{self.standard.frame_label(self.standard_frame)}"
            f"|rapid={self.rapid.label}:frame={self.rapid_frame + 1}"
        )


def _frame_pairs(standard: NMFile, rapid: NMFile) -> list[tuple[int, int, str]]:
    """(standard frame, rapid frame, view) by view code, else by frame order."""
    coded = not any(view.startswith("frame ") for view in (*standard.views, *rapid.views))
    if coded:
        rapid_frames = {view: frame for frame, view in enumerate(rapid.views)}
        return [
            (frame, rapid_frames[view], view)
            for frame, view in enumerate(standard.views)
            if view in rapid_frames
        ]
    return [
        (frame, frame, f"frame {frame + 1}") for frame in range(min(standard.frames, rapid.frames))
    ]


class RegisteredDicomPairs(EpochDataset):
    """Registered standard/rapid frame pairs of the same patient and study.

    Parameters
    ----------
    paths : path or sequence of paths
        NM files and folders (searched recursively); unusable files in folders are skipped.
    crop : (rows, cols), optional
        Random crop, sides multiples of 16, mostly centred on the body.
    max_shift_px : int
        Largest translation searched along each axis.
    max_angle_deg, angle_step_deg : float
        In-plane rotations searched; ``max_angle_deg=0`` for translation only.
    min_correlation : float
        Pairs whose NCC over the body after registration is lower are skipped. Correctly
        registered phantom pairs reach 0.99; two different phantom patients 0.6-0.9, so this
        catches failed registrations and swapped files, not every wrong patient.
    seed : int
        With the item index and the epoch, fixes the crop position.
    strict : bool
        Refuse unusable files found in folders too.
    body_probability : float
        Chance that a crop is centred on the body.
    hot_probability : float
        Chance that a crop holds one of the frame's hot spots (3×3 mean standard counts at or
        above half their maximum; :mod:`training.data.crops`).
    cache_files : int
        Decoded files kept in memory.

    Attributes
    ----------
    pairs : tuple of RegisteredPair
        One per sample, with the shift and rotation found.

    Notes
    -----
    Registration runs at construction, reading every paired file once (about 0.15 s per
    1024×256 frame pair). Samples keep the standard frame's size; pixels that the moved rapid
    frame does not cover are zero in both ``rapid`` and ``standard``.
    """

    def __init__(
        self,
        paths: PathsLike,
        *,
        crop: tuple[int, int] | None = None,
        max_shift_px: int = 32,
        max_angle_deg: float = 3.0,
        angle_step_deg: float = 0.5,
        min_correlation: float = 0.8,
        seed: int = 0,
        strict: bool = False,
        body_probability: float = 0.9,
        hot_probability: float = 0.0,
        cache_files: int = 4,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed {seed!r} is negative")
        if max_shift_px < 0:
            raise ValueError(f"max shift {max_shift_px!r} px is negative")
        self.crop = check_crop(crop)
        self.max_shift_px = max_shift_px
        self.max_angle_deg = max_angle_deg
        self.angle_step_deg = angle_step_deg
        self.min_correlation = min_correlation
        self.seed = seed
        self.body_probability = body_probability
        self.hot_probability = hot_probability
        self._counts: LruCache[NMFile, npt.NDArray[np.uint16]] = LruCache(cache_files)
        files = find_nm_files(paths, strict=strict)
        groups: dict[str, list[NMFile]] = {}
        for header in files:
            groups.setdefault(header.group, []).append(header)
        skipped: Counter[str] = Counter()
        pairs: list[RegisteredPair] = []
        for members in groups.values():
            pairs.extend(self._pair_study(members, skipped))
        self.pairs = tuple(pairs)
        reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.items())
        logger.info(
            "%d registered frame pairs from %d files in %d studies; skipped %d%s",
            len(self.pairs),
            len(files),
            len(groups),
            sum(skipped.values()),
            f" ({reasons})" if reasons else "",
        )
        if not self.pairs:
            where = ", ".join(str(path) for path in as_paths(paths))
            raise ValueError(f"{where}: no standard/rapid pairs ({reasons or 'none found'})")

    def _pair_study(self, members: list[NMFile], skipped: Counter[str]) -> list[RegisteredPair]:
        timed = [header for header in members if header.scan_velocity_mm_s is not None]
        if len(timed) < len(members):
            skipped["files without Scan Velocity"] += len(members) - len(timed)
        if not timed:
            return []
        timed.sort(key=lambda header: header.scan_velocity_mm_s or 0.0)
        standard = timed[0]
        v_standard = standard.scan_velocity_mm_s or 0.0
        rapids = [
            header
            for header in timed[1:]
            if (header.scan_velocity_mm_s or 0.0) > v_standard * (1.0 + _SAME_SPEED)
        ]
        if len(timed) - len(rapids) > 1:
            skipped["extra files at the standard speed of a study"] += len(timed) - len(rapids) - 1
        if not rapids:
            skipped["studies with one speed only"] += 1
            return []
        pairs = []
        for rapid in rapids:
            if (rapid.rows, rapid.cols) != (standard.rows, standard.cols):
                skipped["rapid files of another frame size"] += 1
                continue
            frame_pairs = _frame_pairs(standard, rapid)
            if not frame_pairs:
                skipped["rapid files with no view in common"] += 1
                continue
            # Scan Velocity is a decimal string: 20 and 40 cm/min read 3.3333 and 6.6667 mm/s.
            dose_factor = round((rapid.scan_velocity_mm_s or 0.0) / v_standard, 3)
            for standard_frame, rapid_frame, view in frame_pairs:
                pair = self._register(
                    standard=standard,
                    rapid=rapid,
                    standard_frame=standard_frame,
                    rapid_frame=rapid_frame,
                    view=view,
                    dose_factor=dose_factor,
                )
                if pair is None:
                    skipped["frame pairs that correlate poorly"] += 1
                else:
                    pairs.append(pair)
        return pairs

    def _register(
        self,
        *,
        standard: NMFile,
        rapid: NMFile,
        standard_frame: int,
        rapid_frame: int,
        view: str,
        dose_factor: float,
    ) -> RegisteredPair | None:
        fixed = self._counts.get(standard, read_nm_counts)[standard_frame]
        moving = self._counts.get(rapid, read_nm_counts)[rapid_frame]
        found = register_rigid(
            fixed,
            moving,
            moving_scale=dose_factor,
            max_shift_px=self.max_shift_px,
            max_angle_deg=self.max_angle_deg,
            angle_step_deg=self.angle_step_deg,
        )
        pair = RegisteredPair(
            standard, rapid, standard_frame, rapid_frame, view, dose_factor, found
        )
        dy, dx = found.shift
        if found.correlation < self.min_correlation:
            logger.warning(
                "skipping %s: correlation %.3f < %.3g after shift (%d, %d) px, rotation %+.1f°",
                pair.source,
                found.correlation,
                self.min_correlation,
                dy,
                dx,
                found.angle_deg,
            )
            return None
        logger.info(
            "registered %s: shift (%d, %d) px, rotation %+.1f°, correlation %.3f (was %.3f)",
            pair.source,
            dy,
            dx,
            found.angle_deg,
            found.correlation,
            found.correlation_before,
        )
        return pair

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        pair = self.pairs[index]
        fixed = self._counts.get(pair.standard, read_nm_counts)[pair.standard_frame]
        moving = self._counts.get(pair.rapid, read_nm_counts)[pair.rapid_frame]
        moved, valid = apply_rigid(moving, pair.registration)
        standard = np.where(valid, fixed, 0)
        rapid = np.where(valid, moved, 0.0)
        frame_shape = standard.shape
        if self.crop is not None:
            rng = np.random.default_rng([self.seed, index, self.epoch])
            try:
                window = crop_window(
                    standard.shape,
                    self.crop,
                    rng,
                    body=valid & body_pixels(standard),
                    body_probability=self.body_probability,
                    hot=count_hot_pixels(standard) if self.hot_probability > 0 else None,
                    hot_probability=self.hot_probability,
                )
            except ValueError as exc:
                raise ValueError(f"{pair.standard.path}: {exc}") from None
            standard, rapid = standard[window], rapid[window]
        return make_sample(
            rapid=rapid,
            standard=standard,
            target_vst=independent_target(standard),
            dose_factor=pair.dose_factor,
            frame_shape=frame_shape,
            source=pair.source,
        )
