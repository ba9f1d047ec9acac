"""Standard/rapid pairs drawn on the fly from the bone-scan phantom, with ground truth.

Scan ``k`` of seed ``s`` is the phantom of :func:`pacs_node.synth.synthetic_patient` ``(s, k)``
rendered from the same random stream as :func:`pacs_node.synth.synthetic_scan_dataset`, so
``PhantomPairs(seed=s)`` and the synthetic DICOM files of seed ``s`` show the same bodies:
keep training and evaluation seeds apart. The standard-speed counts are Poisson(λ) and the
rapid counts their binomial thinning with p = 20 / speed, which has exactly the statistics of
a scan at that speed (DOMAIN.md §4).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pacs_node.synth import BonePhantom, synthetic_patient, thin_counts
from pacs_node.synth.phantom import FRAME_COLS, FRAME_ROWS, STANDARD_SPEED_CM_MIN
from training.data.cache import LruCache
from training.data.crops import check_crop, crop_window, hot_pixels
from training.data.sample import EpochDataset, Sample, make_sample
from training.data.targets import expected_target

__all__ = ["PhantomPairs", "PhantomView", "poisson_pair"]

logger = logging.getLogger(__name__)

VIEWS = ("anterior", "posterior")
# pacs_node.synth draws the phantom of (seed, index) from default_rng([seed, index, 1]).
_PHANTOM_STREAM = 1
_NOISE_STREAM = 101
_UINT16_MAX = np.iinfo(np.uint16).max


@dataclass(frozen=True, slots=True)
class PhantomView:
    """Expected counts and skeleton of one view of one rendered scan (float32 / bool)."""

    truth: npt.NDArray[np.float32]
    skeleton: npt.NDArray[np.bool_]
    body: npt.NDArray[np.bool_]
    hot: npt.NDArray[np.bool_]


def poisson_pair(
    lam: npt.NDArray[np.floating], p: float, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint16]]:
    """Draw standard counts ~ Poisson(λ) and rapid counts by thinning them with ``p``.

    Parameters
    ----------
    lam : ndarray of float
        Expected standard-speed counts, >= 0, any shape.
    p : float
        Rapid scan time over standard scan time, 0-1.
    rng : numpy.random.Generator
        Source of both draws.

    Returns
    -------
    standard, rapid : ndarray of uint16
        Same shape as ``lam``; rapid <= standard everywhere. Standard counts clip at 65535.
    """
    standard = np.minimum(rng.poisson(lam), _UINT16_MAX).astype(np.uint16)
    return standard, thin_counts(standard, rng, p)


class PhantomPairs(EpochDataset):
    """On-the-fly phantom pairs: item ``i`` is view ``i % 2`` of scan ``i // 2``.

    Parameters
    ----------
    seed : int
        Non-negative; fixes the patients and phantoms (and, with the epoch, the noise).
    length : int
        Number of samples (two per scan), >= 1.
    speeds_cm_min : sequence of int
        Rapid table speeds to draw from, each >= 20 (20 gives identical pairs); p = 20 /
        speed and ``dose_factor`` = speed / 20.
    crop : (rows, cols), optional
        Random crop, sides multiples of 16, no larger than 1024×256; None for whole frames.
    body_probability : float
        Chance that a crop is centred on the body (the render's body outline).
    hot_probability : float
        Chance that a crop holds one of the view's hot spots (λ at or above half its
        maximum: the injection site, the bladder; :mod:`training.data.crops`), placed
        anywhere in the crop; the other crops follow ``body_probability``.
    cache_scans : int
        Rendered scans kept (~5 MB each); renders take about 30 ms.

    Notes
    -----
    Item ``i`` depends on ``(seed, i, epoch)`` only: the speed, the crop position, the
    Poisson and the thinning draws change with :meth:`set_epoch`; λ and the skeleton do not.
    """

    def __init__(
        self,
        *,
        seed: int,
        length: int,
        speeds_cm_min: Sequence[int] = (40,),
        crop: tuple[int, int] | None = None,
        body_probability: float = 0.9,
        hot_probability: float = 0.0,
        cache_scans: int = 8,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed {seed!r} is negative")
        if length < 1:
            raise ValueError(f"length {length!r} is less than 1")
        speeds = tuple(int(speed) for speed in speeds_cm_min)
        if not speeds:
            raise ValueError("speeds_cm_min is empty")
        slow = [speed for speed in speeds if speed < STANDARD_SPEED_CM_MIN]
        if slow:
            raise ValueError(
                f"speeds {slow!r} cm/min are below the standard {STANDARD_SPEED_CM_MIN:g}"
            )
        if not 0.0 <= body_probability <= 1.0:
            raise ValueError(f"body probability {body_probability!r} is outside 0-1")
        if not 0.0 <= hot_probability <= 1.0:
            raise ValueError(f"hot-spot probability {hot_probability!r} is outside 0-1")
        self.seed = seed
        self.length = length
        self.speeds_cm_min = speeds
        self.crop = check_crop(crop)
        self.body_probability = body_probability
        self.hot_probability = hot_probability
        if self.crop is not None and (self.crop[0] > FRAME_ROWS or self.crop[1] > FRAME_COLS):
            raise ValueError(f"crop {crop!r} is larger than the {FRAME_ROWS}x{FRAME_COLS} frame")
        self._renders: LruCache[int, tuple[PhantomView, PhantomView]] = LruCache(cache_scans)

    def __len__(self) -> int:
        return self.length

    def render(self, scan: int) -> tuple[PhantomView, PhantomView]:
        """Both views of scan ``scan`` (cached), anterior first."""
        return self._renders.get(scan, self._render)

    def _render(self, scan: int) -> tuple[PhantomView, PhantomView]:
        body = synthetic_patient(self.seed, scan).body
        rendered = BonePhantom(body).render(
            np.random.default_rng([self.seed, scan, _PHANTOM_STREAM])
        )
        maps = (rendered.views.anterior, rendered.views.posterior)
        anterior, posterior = (
            PhantomView(
                maps[i].astype(np.float32),
                rendered.skeleton_mask[i],
                rendered.body_mask[i],
                hot_pixels(maps[i]),
            )
            for i in range(2)
        )
        return anterior, posterior

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        scan, view_index = divmod(index, 2)
        view = self.render(scan)[view_index]
        rng = np.random.default_rng([self.seed, index, self.epoch, _NOISE_STREAM])
        speed = self.speeds_cm_min[int(rng.integers(len(self.speeds_cm_min)))]
        truth, skeleton = view.truth, view.skeleton
        frame_shape = truth.shape
        if self.crop is not None:
            window = crop_window(
                truth.shape,
                self.crop,
                rng,
                body=view.body,
                body_probability=self.body_probability,
                hot=view.hot,
                hot_probability=self.hot_probability,
            )
            truth, skeleton = truth[window], skeleton[window]
        p = STANDARD_SPEED_CM_MIN / speed
        standard, rapid = poisson_pair(truth, p, rng)
        return make_sample(
            rapid=rapid,
            standard=standard,
            target_vst=expected_target(truth),
            truth=truth,
            skeleton=skeleton,
            dose_factor=speed / STANDARD_SPEED_CM_MIN,
            frame_shape=frame_shape,
            source=f"phantom:seed={self.seed}:index={scan}:view={VIEWS[view_index]}",
        )
