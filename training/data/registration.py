"""Rigid registration of a rapid whole-body frame to the standard-speed frame of one study.

Two real sweeps of one patient differ by patient motion between them. We look for an integer
translation by phase correlation and, optionally, a small in-plane rotation, on
Anscombe-transformed, Gaussian-smoothed frames: the transform makes the noise of both frames
alike whatever their count level, the smoothing keeps the whitened spectrum from being
dominated by noise. The rotation search runs at half resolution; the translation of the chosen
angle is then found at full resolution. Quality is the normalised cross-correlation (NCC) over
the body, which the caller compares with a threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from training.data.crops import body_pixels

__all__ = [
    "RigidRegistration",
    "apply_rigid",
    "gaussian_smooth",
    "normalised_cross_correlation",
    "phase_correlation",
    "register_rigid",
    "rotate_nearest",
    "shift_image",
]

FloatImage = npt.NDArray[np.float64]
BoolImage = npt.NDArray[np.bool_]
_TAPER = 0.1  # share of each side faded by the Tukey window


@dataclass(frozen=True, slots=True)
class RigidRegistration:
    """How to move a frame onto another: rotate about the frame centre, then shift.

    Attributes
    ----------
    shift : (int, int)
        Rows and columns to move the rotated frame by (positive: down, right).
    angle_deg : float
        Rotation, degrees, as :func:`rotate_nearest` applies it.
    correlation : float
        NCC over the body after moving.
    correlation_before : float
        NCC over the body of the frames as they were.
    """

    shift: tuple[int, int]
    angle_deg: float
    correlation: float
    correlation_before: float


def gaussian_smooth(image: npt.NDArray[np.generic], sigma: float) -> FloatImage:
    """Separable Gaussian blur, zeros outside the image (``sigma`` in pixels, 0: none)."""
    out = np.asarray(image, dtype=np.float64)
    if sigma <= 0:
        return out.copy()
    radius = max(1, math.ceil(3.0 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        size = out.shape[axis]
        blurred = np.zeros_like(out)
        for offset, weight in enumerate(taps):
            blurred += weight * np.take(padded, np.arange(offset, offset + size), axis=axis)
        out = blurred
    return out


def _tukey(size: int) -> FloatImage:
    ramp = max(1, round(_TAPER * size))
    window = np.ones(size)
    edge = 0.5 * (1.0 - np.cos(np.pi * np.arange(ramp) / ramp))
    window[:ramp], window[size - ramp :] = edge, edge[::-1]
    return window


def phase_correlation(
    fixed: npt.NDArray[np.generic],
    moving: npt.NDArray[np.generic],
    *,
    max_shift: int | None = None,
) -> tuple[int, int]:
    """Integer shift that best moves ``moving`` onto ``fixed``, by phase correlation.

    Both images have their mean removed, are faded at the edges (Tukey window) and zero-padded
    to twice their size, so the correlation is not circular.

    Parameters
    ----------
    fixed, moving : ndarray, shape (rows, cols)
        Images of one size.
    max_shift : int, optional
        Largest shift considered along each axis, pixels.

    Returns
    -------
    (dy, dx) : (int, int)
        ``shift_image(moving, (dy, dx))`` (or ``np.roll``) best matches ``fixed``; for
        ``moving = np.roll(fixed, (sy, sx))`` it is ``(-sy, -sx)``.
    """
    if fixed.shape != moving.shape or fixed.ndim != 2:
        raise ValueError(f"images of shapes {fixed.shape!r} and {moving.shape!r} differ")
    rows, cols = fixed.shape
    window = np.outer(_tukey(rows), _tukey(cols))
    size = (2 * rows, 2 * cols)
    spectra = []
    for image in (fixed, moving):
        values = np.asarray(image, dtype=np.float64)
        spectra.append(np.fft.rfft2((values - values.mean()) * window, s=size))
    cross = spectra[0] * np.conj(spectra[1])
    cross /= np.abs(cross) + 1e-12 * float(np.abs(cross).max(initial=0.0)) + 1e-30
    surface = np.fft.irfft2(cross, s=size)
    # Index k of the surface is a shift of k (k < half) or k - size.
    dys = np.fft.fftfreq(size[0], 1.0 / size[0]).astype(int)
    dxs = np.fft.fftfreq(size[1], 1.0 / size[1]).astype(int)
    limit_y = rows - 1 if max_shift is None else min(max_shift, rows - 1)
    limit_x = cols - 1 if max_shift is None else min(max_shift, cols - 1)
    allowed = (np.abs(dys)[:, None] <= limit_y) & (np.abs(dxs)[None, :] <= limit_x)
    peak = np.unravel_index(int(np.argmax(np.where(allowed, surface, -np.inf))), size)
    return int(dys[peak[0]]), int(dxs[peak[1]])


def shift_image(
    image: npt.NDArray[np.generic], shift: tuple[int, int]
) -> tuple[FloatImage, BoolImage]:
    """Translate by whole pixels with zero fill.

    Returns
    -------
    moved : ndarray of float64
    valid : ndarray of bool
        Pixels that came from inside ``image``.
    """
    rows, cols = image.shape
    dy, dx = shift
    moved = np.zeros((rows, cols))
    valid = np.zeros((rows, cols), dtype=bool)
    if abs(dy) >= rows or abs(dx) >= cols:
        return moved, valid
    target = (slice(max(dy, 0), rows + min(dy, 0)), slice(max(dx, 0), cols + min(dx, 0)))
    source = (slice(max(-dy, 0), rows + min(-dy, 0)), slice(max(-dx, 0), cols + min(-dx, 0)))
    moved[target] = image[source]
    valid[target] = True
    return moved, valid


def rotate_nearest(
    image: npt.NDArray[np.generic], angle_deg: float
) -> tuple[FloatImage, BoolImage]:
    """Rotate about the frame centre by ``angle_deg`` (counter-clockwise as displayed, rows
    down), nearest neighbour so counts stay whole; zero fill.

    Returns
    -------
    rotated : ndarray of float64
    valid : ndarray of bool
        Pixels that came from inside ``image``.
    """
    rows, cols = image.shape
    if angle_deg == 0:
        return np.asarray(image, dtype=np.float64).copy(), np.ones((rows, cols), dtype=bool)
    theta = math.radians(angle_deg)
    cy, cx = (rows - 1) / 2.0, (cols - 1) / 2.0
    y = np.arange(rows)[:, None] - cy
    x = np.arange(cols)[None, :] - cx
    # Each output pixel samples the input at the inverse rotation of its position.
    src_y = np.rint(math.cos(theta) * y - math.sin(theta) * x + cy).astype(np.intp)
    src_x = np.rint(math.sin(theta) * y + math.cos(theta) * x + cx).astype(np.intp)
    valid = (src_y >= 0) & (src_y < rows) & (src_x >= 0) & (src_x < cols)
    rotated = np.zeros((rows, cols))
    rotated[valid] = np.asarray(image, dtype=np.float64)[src_y[valid], src_x[valid]]
    return rotated, valid


def apply_rigid(
    image: npt.NDArray[np.generic], registration: RigidRegistration
) -> tuple[FloatImage, BoolImage]:
    """Move ``image`` as ``registration`` says; returns the moved image and its valid pixels."""
    rotated, inside = rotate_nearest(image, registration.angle_deg)
    moved, valid = shift_image(rotated, registration.shift)
    moved_inside, _ = shift_image(inside, registration.shift)
    return moved, valid & (moved_inside > 0.5)


def normalised_cross_correlation(
    a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], mask: BoolImage
) -> float:
    """Pearson correlation of ``a`` and ``b`` over ``mask``; 0 where undefined."""
    if int(mask.sum()) < 2:
        return 0.0
    x = np.asarray(a, dtype=np.float64)[mask]
    y = np.asarray(b, dtype=np.float64)[mask]
    x, y = x - x.mean(), y - y.mean()
    norm = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / norm if norm > 0 else 0.0


def _prepare(counts: npt.NDArray[np.generic], scale: float, sigma: float) -> FloatImage:
    values = np.clip(np.asarray(counts, dtype=np.float64) * scale, 0.0, None)
    return gaussian_smooth(2.0 * np.sqrt(values + 0.375), sigma)


def _halve(image: FloatImage) -> FloatImage:
    rows, cols = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    blocks = image[:rows, :cols].reshape(rows // 2, 2, cols // 2, 2)
    halved: FloatImage = blocks.mean(axis=(1, 3))
    return halved


def _best_shift(
    fixed: FloatImage, moving: FloatImage, region: BoolImage, angle: float, max_shift: int
) -> tuple[float, tuple[int, int]]:
    rotated, inside = rotate_nearest(moving, angle)
    shift = phase_correlation(fixed, rotated, max_shift=max_shift)
    moved, valid = shift_image(rotated, shift)
    moved_inside, _ = shift_image(inside, shift)
    mask = region & valid & (moved_inside > 0.5)
    return normalised_cross_correlation(fixed, moved, mask), shift


def register_rigid(
    fixed: npt.NDArray[np.generic],
    moving: npt.NDArray[np.generic],
    *,
    moving_scale: float = 1.0,
    max_shift_px: int = 32,
    max_angle_deg: float = 3.0,
    angle_step_deg: float = 0.5,
    smooth_sigma_px: float = 2.0,
) -> RigidRegistration:
    """Find the rigid move of ``moving`` (rapid counts) onto ``fixed`` (standard counts).

    Parameters
    ----------
    fixed, moving : ndarray, shape (rows, cols)
        Count frames of one size.
    moving_scale : float
        Multiplies ``moving`` before the Anscombe transform so both frames have one count
        level (the dose factor).
    max_shift_px : int
        Largest translation searched along each axis.
    max_angle_deg, angle_step_deg : float
        Rotations searched: ``-max..max`` in ``step`` increments; ``max_angle_deg=0`` for
        translation only.
    smooth_sigma_px : float
        Gaussian blur before correlating, pixels.

    Returns
    -------
    RigidRegistration
        NCC is over the body of ``fixed`` (:func:`~training.data.crops.body_pixels`).
    """
    if fixed.shape != moving.shape or fixed.ndim != 2:
        raise ValueError(f"frames of shapes {fixed.shape!r} and {moving.shape!r} differ")
    if max_shift_px < 0 or max_angle_deg < 0 or angle_step_deg <= 0:
        raise ValueError(
            f"search limits {max_shift_px!r} px, {max_angle_deg!r}° step {angle_step_deg!r}° "
            "are not valid"
        )
    a = _prepare(fixed, 1.0, smooth_sigma_px)
    b = _prepare(moving, moving_scale, smooth_sigma_px)
    region = body_pixels(fixed)
    before = normalised_cross_correlation(a, b, region)
    steps = math.floor(max_angle_deg / angle_step_deg + 1e-9)
    angles = [step * angle_step_deg for step in range(-steps, steps + 1)]
    angle = 0.0
    if len(angles) > 1:
        half_a, half_b = _halve(a), _halve(b)
        half_region = _halve(region.astype(np.float64)) > 0.5
        half_shift = max_shift_px // 2 + 1
        scores = [_best_shift(half_a, half_b, half_region, t, half_shift)[0] for t in angles]
        angle = angles[int(np.argmax(scores))]
    correlation, shift = _best_shift(a, b, region, angle, max_shift_px)
    return RigidRegistration(shift, angle, correlation, before)
