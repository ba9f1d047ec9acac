"""The methods an evaluation compares: baselines and trained checkpoints.

Every method is an :class:`Estimator`: rapid-scan counts of one study (uint16, F×H×W) and the
dose factor (standard time over rapid time, 2 for 40 against 20 cm/min) in, estimated
standard-speed counts (float64, F×H×W) out.

``rapid``
    The rapid counts times the dose factor: what a reader would see after rescaling.
``gaussian``
    A Gaussian filter on the rescaled counts. Filtering counts (not their Anscombe transform)
    is linear, so it keeps each pixel's expectation's total and needs no inverse transform;
    σ is tuned on phantoms outside the evaluation set (:func:`tune_gaussian_sigma`).
``bm3d``
    BM3D (Mäkitalo & Foi's Poisson recipe): Anscombe transform of the *rapid* counts, BM3D
    with noise σ = 1, the closed-form unbiased inverse, times the dose factor. The rapid counts
    are the Poisson variable, so the unbiased inverse is exact for them; transforming the
    rescaled counts ``dose · r`` instead (noise σ = sqrt(dose) in those units, the networks'
    input domain) leaves the inverse biased by 5-17 % below 5 counts per pixel, because
    ``dose · r`` is not Poisson.
models
    Cascade checkpoints through :class:`enhancer.runtime.Enhancer` (what the node runs), one
    per ``NAME=PATH[:profile]``.

Every estimator returns its estimate unrounded; the evaluation rounds each one with the
node's :func:`enhancer.runtime.round_counts` (what a stored NM series would hold) and scores
both, so that no method is scored on floats against another's integers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from enhancer.checkpoint import ModelCard, card_path
from enhancer.modeling.cascade import Profile
from enhancer.runtime import Enhancer
from enhancer.vst import inverse_anscombe_unbiased
from training.evaluate.metrics import psnr

__all__ = [
    "BM3D_PROFILES",
    "GAUSSIAN_SIGMA_GRID",
    "Bm3dVst",
    "Estimator",
    "GaussianFilter",
    "ModelEstimator",
    "ModelSpec",
    "RapidRescaled",
    "anscombe_np",
    "denoise_poisson_vst",
    "parse_model_spec",
    "tune_gaussian_sigma",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
Denoiser = Callable[[FloatArray, float], FloatArray]

#: σ in pixels tried by :func:`tune_gaussian_sigma`.
GAUSSIAN_SIGMA_GRID = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
#: Profiles the ``bm3d`` package accepts by name (``np`` is its normal profile).
BM3D_PROFILES = ("np", "refilter", "vn", "high")
# BM3D runs on the bounding box of the input's counts plus this margin; outside it the input
# is all zero (rows past the sweep), where BM3D would return zero counts anyway.
_BM3D_MARGIN = 8


class Estimator(Protocol):
    """A method under evaluation."""

    name: str
    description: str

    def estimate(self, rapid: npt.NDArray[np.uint16], dose_factor: float) -> FloatArray:
        """Standard-speed counts (F×H×W float64) from rapid counts (F×H×W uint16)."""
        ...


def anscombe_np(counts: npt.ArrayLike) -> FloatArray:
    """Anscombe transform ``2 sqrt(x + 3/8)`` of counts (NumPy twin of ``enhancer.vst``)."""
    values: FloatArray = 2.0 * np.sqrt(np.clip(np.asarray(counts, np.float64), 0.0, None) + 0.375)
    return values


def _inverse_unbiased(vst: FloatArray) -> FloatArray:
    out: FloatArray = inverse_anscombe_unbiased(torch.from_numpy(vst)).numpy()
    return out


def denoise_poisson_vst(counts: npt.ArrayLike, denoiser: Denoiser) -> FloatArray:
    """Denoise one Poisson count image through the Anscombe transform.

    Parameters
    ----------
    counts : array_like, shape (H, W)
        Poisson counts (not rescaled: the unbiased inverse is exact only for Poisson data).
    denoiser : callable
        ``denoiser(vst_image, sigma)`` for Gaussian noise of standard deviation ``sigma``
        (1 here); returns an estimate of ``E[anscombe(counts)]``.

    Returns
    -------
    ndarray of float64, shape (H, W)
        Estimated Poisson means (closed-form unbiased inverse, Mäkitalo & Foi 2011).
    """
    vst = anscombe_np(counts)
    return _inverse_unbiased(np.asarray(denoiser(vst, 1.0), dtype=np.float64))


@dataclass
class RapidRescaled:
    """The rapid input times the dose factor, untouched otherwise."""

    name: str = "rapid"
    description: str = "rapid input x dose factor (no processing)"

    def estimate(self, rapid: npt.NDArray[np.uint16], dose_factor: float) -> FloatArray:
        """``dose_factor · rapid`` as float64."""
        return np.asarray(rapid, dtype=np.float64) * dose_factor


@dataclass
class GaussianFilter:
    """Gaussian smoothing of the rescaled counts (reflecting edges keep the total)."""

    sigma: float
    name: str = "gaussian"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"Gaussian sigma {self.sigma!r} px must be positive")
        if not self.description:
            self.description = f"Gaussian filter on counts, sigma = {self.sigma:g} px"

    def estimate(self, rapid: npt.NDArray[np.uint16], dose_factor: float) -> FloatArray:
        """Each frame filtered separately."""
        frames = np.asarray(rapid, dtype=np.float64) * dose_factor
        return np.stack([ndimage.gaussian_filter(f, self.sigma, mode="reflect") for f in frames])


def tune_gaussian_sigma(
    samples: Sequence[tuple[npt.NDArray[np.uint16], FloatArray]],
    dose_factor: float,
    grid: Sequence[float] = GAUSSIAN_SIGMA_GRID,
) -> tuple[float, dict[float, float]]:
    """The σ with the best mean PSNR against the truth on tuning scans.

    Parameters
    ----------
    samples : sequence of (rapid, truth)
        Rapid counts (F×H×W) and noise-free standard-speed truth (F×H×W) of scans that are
        not in the evaluation set.
    dose_factor : float
    grid : sequence of float
        Candidate σ in pixels.

    Returns
    -------
    (float, dict)
        The best σ and the mean PSNR of every candidate.
    """
    if not samples or not grid:
        raise ValueError("tuning needs at least one scan and one candidate sigma")
    scores: dict[float, float] = {}
    for sigma in grid:
        values = []
        for rapid, truth in samples:
            estimate = GaussianFilter(sigma).estimate(rapid, dose_factor)
            values += [
                psnr(e, t, peak=float(t.max())) for e, t in zip(estimate, truth, strict=True)
            ]
        scores[float(sigma)] = float(np.mean(values))
    best = max(scores, key=lambda s: scores[s])
    return best, scores


def _bbox(frame: npt.NDArray[np.generic], margin: int) -> tuple[slice, slice] | None:
    rows = np.flatnonzero(frame.any(axis=1))
    cols = np.flatnonzero(frame.any(axis=0))
    if rows.size == 0:
        return None
    h, w = frame.shape
    return (
        slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, h)),
        slice(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, w)),
    )


@dataclass
class Bm3dVst:
    """BM3D on the Anscombe transform of the rapid counts (see the module docstring)."""

    profile: str = "np"
    name: str = "bm3d"
    description: str = ""

    def __post_init__(self) -> None:
        if self.profile not in BM3D_PROFILES:
            raise ValueError(f"BM3D profile {self.profile!r} is not one of {BM3D_PROFILES}")
        if not self.description:
            self.description = (
                f"BM3D (profile {self.profile!r}) on the Anscombe transform of the rapid counts, "
                "sigma = 1, unbiased inverse, x dose factor"
            )

    def _denoise(self, vst: FloatArray, sigma: float) -> FloatArray:
        import bm3d  # imported here: slow to import, and only this baseline needs it

        out: FloatArray = np.asarray(bm3d.bm3d(vst, sigma, profile=self.profile), np.float64)
        return out

    def estimate(self, rapid: npt.NDArray[np.uint16], dose_factor: float) -> FloatArray:
        """BM3D per frame, on the bounding box of the frame's counts."""
        out = np.zeros(rapid.shape, dtype=np.float64)
        for index, frame in enumerate(rapid):
            box = _bbox(frame, _BM3D_MARGIN)
            if box is None:
                continue
            out[index][box] = denoise_poisson_vst(frame[box], self._denoise) * dose_factor
        return out


@dataclass(frozen=True)
class ModelSpec:
    """``NAME=PATH[:profile]`` from the command line."""

    name: str
    path: Path
    profile: Profile | None = None


def parse_model_spec(text: str) -> ModelSpec:
    """Parse ``NAME=PATH[:profile]``; the profile defaults to the richest the card serves.

    Raises
    ------
    ValueError
        The text has no ``=``, an empty name or an empty path.
    """
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest:
        raise ValueError(f"model {text!r} is not NAME=PATH[:profile]")
    path, colon, suffix = rest.rpartition(":")
    if colon and suffix in {p.value for p in Profile}:
        if not path:
            raise ValueError(f"model {text!r} names no checkpoint path")
        return ModelSpec(name, Path(path), Profile(suffix))
    return ModelSpec(name, Path(rest), None)


@dataclass
class ModelEstimator:
    """A checkpoint run through :class:`Enhancer` exactly as the node runs it."""

    name: str
    enhancer: Enhancer
    path: Path
    description: str = ""
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(
        cls, spec: ModelSpec, *, device: str = "auto", description: str = ""
    ) -> ModelEstimator:
        """Load ``spec`` (once per process, through the runtime's cache).

        Raises
        ------
        enhancer.checkpoint.CheckpointError
            The checkpoint or its card is missing, damaged or does not serve the profile.
        """
        profile = spec.profile
        if profile is None:
            card = ModelCard.from_file(card_path(spec.path))
            profile = Profile.CASCADE if Profile.CASCADE.value in card.profiles else Profile.FAST
        enhancer = Enhancer.from_checkpoint(spec.path, device=device, profile=profile)
        card = enhancer.card
        text = description or f"checkpoint {card.name} {card.version}"
        text += f", profile {profile.value} ({spec.path.name}, sha256 {card.sha256[:12]})"
        return cls(spec.name, enhancer, spec.path, text)

    def estimate(self, rapid: npt.NDArray[np.uint16], dose_factor: float) -> FloatArray:
        """The enhancer's expected counts before rounding (float64); the node stores
        :func:`enhancer.runtime.round_counts` of them.

        A model trained for another dose factor gets the rapid counts rescaled to the level it
        expects (as float counts); their noise is then not what it was trained on, and a
        note says so.
        """
        trained = self.enhancer.model.dose_factor
        frames: npt.NDArray[np.generic] = rapid
        if not math.isclose(trained, dose_factor, rel_tol=1e-6):
            frames = rapid.astype(np.float32) * np.float32(dose_factor / trained)
            note = (
                f"trained for dose factor {trained:g}, evaluated at {dose_factor:g}: input "
                f"rescaled by {dose_factor / trained:g} (noisier than it was trained on)"
            )
            if note not in self.notes:
                self.notes.append(note)
                logger.warning("%s: %s", self.name, note)
        return self.enhancer.expected_counts(np.ascontiguousarray(frames)).astype(np.float64)
