"""Image-quality metrics for count images: pure NumPy (and SciPy), no I/O.

Every metric here compares an estimate of standard-speed counts with a reference on the counts
scale (the noise-free truth λ, or the real standard scan):

``psnr``
    ``10 log10(peak² / MSE)`` with ``peak`` fixed per image by the caller (the truth's maximum),
    so a method cannot move its own data range. Over the whole frame or a mask.
``ssim``
    Structural similarity (Wang et al. 2004, IEEE TIP 13:600) with the 11-tap Gaussian window
    (σ = 1.5), K1 = 0.01, K2 = 0.03 and the same fixed data range; averaged over the frame
    without its 5-pixel border (where the window leaves the image) or over a mask.
``lesion_contrast``
    Mean counts in a lesion's disc over the mean in an annulus around it: the lesion-to-
    background ratio a reader judges.
``count_error``
    ``sum(estimate) / sum(reference) - 1``: total-count fidelity.
``frechet_distance``
    The Fréchet distance between two Gaussians fitted to feature sets (the formula behind FID;
    Heusel et al. 2017), for any features: here our own SAM encoder's (``FD-SAM``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import linalg, ndimage

__all__ = [
    "SSIM_K1",
    "SSIM_K2",
    "SSIM_SIGMA",
    "LesionContrast",
    "annulus_radii",
    "count_error",
    "disc_mask",
    "frechet_distance",
    "lesion_contrast",
    "psnr",
    "ssim",
    "ssim_map",
    "ssim_mean",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# scipy truncates the Gaussian at truncate·σ: 3.5 · 1.5 rounds to a radius of 5, the 11×11
# window of Wang et al.
_SSIM_TRUNCATE = 3.5
_SSIM_RADIUS = int(_SSIM_TRUNCATE * SSIM_SIGMA + 0.5)


def _as_float(image: npt.ArrayLike) -> FloatArray:
    return np.asarray(image, dtype=np.float64)


def _check_pair(estimate: FloatArray, reference: FloatArray) -> None:
    if estimate.shape != reference.shape:
        raise ValueError(f"shapes differ: estimate {estimate.shape}, reference {reference.shape}")
    if estimate.ndim != 2:
        raise ValueError(f"images must be 2-D; got shape {estimate.shape}")


def psnr(
    estimate: npt.ArrayLike,
    reference: npt.ArrayLike,
    *,
    peak: float,
    mask: BoolArray | None = None,
) -> float:
    """Peak signal-to-noise ratio in dB.

    Parameters
    ----------
    estimate, reference : array_like, shape (H, W)
        Counts (any real values).
    peak : float
        The data range, positive; fixed by the caller (the truth's maximum) so that every
        method of one image is measured on the same scale.
    mask : ndarray of bool, optional
        Pixels to compare; the whole frame when absent.

    Returns
    -------
    float
        ``inf`` when the images are identical on the compared pixels.
    """
    est, ref = _as_float(estimate), _as_float(reference)
    _check_pair(est, ref)
    if not peak > 0:
        raise ValueError(f"peak {peak!r} must be positive")
    diff = est - ref if mask is None else (est - ref)[mask]
    if diff.size == 0:
        raise ValueError("mask selects no pixel")
    mse = float(np.mean(diff**2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak**2 / mse)


def ssim_map(estimate: npt.ArrayLike, reference: npt.ArrayLike, *, data_range: float) -> FloatArray:
    """Per-pixel SSIM with a Gaussian window (Wang et al. 2004, eq. 13).

    Local statistics are Gaussian-weighted population moments (no sample correction), as in
    the paper; edges are reflected.

    Parameters
    ----------
    estimate, reference : array_like, shape (H, W)
    data_range : float
        ``L`` in ``C1 = (K1 L)²`` and ``C2 = (K2 L)²``; positive.

    Returns
    -------
    ndarray of float64, shape (H, W)
    """
    x, y = _as_float(estimate), _as_float(reference)
    _check_pair(x, y)
    if not data_range > 0:
        raise ValueError(f"data_range {data_range!r} must be positive")

    def blur(image: FloatArray) -> FloatArray:
        out: FloatArray = ndimage.gaussian_filter(
            image, SSIM_SIGMA, mode="reflect", truncate=_SSIM_TRUNCATE
        )
        return out

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    result: FloatArray = numerator / denominator
    return result


def ssim(
    estimate: npt.ArrayLike,
    reference: npt.ArrayLike,
    *,
    data_range: float,
    mask: BoolArray | None = None,
) -> float:
    """Mean SSIM over the frame without its border, or over ``mask``.

    Parameters
    ----------
    estimate, reference : array_like, shape (H, W)
    data_range : float
        Fixed per image by the caller (the truth's maximum).
    mask : ndarray of bool, optional
        Pixels to average (border pixels are left out here too).

    Returns
    -------
    float
        1 for identical images; lower as they differ.
    """
    return ssim_mean(ssim_map(estimate, reference, data_range=data_range), mask=mask)


def ssim_mean(values: FloatArray, *, mask: BoolArray | None = None) -> float:
    """Average an :func:`ssim_map` over the frame without its border, or over ``mask``.

    The border (the window's radius, 5 pixels) is left out because the window reaches past
    the image there.
    """
    keep = np.zeros(values.shape, dtype=bool)
    r = _SSIM_RADIUS
    keep[r:-r, r:-r] = True
    if mask is not None:
        keep &= mask
    if not keep.any():
        raise ValueError("no pixel left to average (image too small or mask empty)")
    return float(values[keep].mean())


def count_error(estimate: npt.ArrayLike, reference: npt.ArrayLike) -> float:
    """Total-count fidelity ``sum(estimate) / sum(reference) - 1``.

    Parameters
    ----------
    estimate, reference : array_like
        Counts; the reference must hold some.

    Returns
    -------
    float
        0 for a perfect total, -0.05 for 5 % of the counts lost.
    """
    total = float(np.sum(reference, dtype=np.float64))
    if not total > 0:
        raise ValueError(f"reference holds no counts (sum {total!r})")
    return float(np.sum(estimate, dtype=np.float64)) / total - 1.0


def disc_mask(
    shape: tuple[int, int], centre: tuple[float, float], radius: float, inner: float = 0.0
) -> BoolArray:
    """Pixels whose centre lies within ``inner <= distance <= radius`` of ``centre``.

    Parameters
    ----------
    shape : (rows, cols)
    centre : (row, col)
        In pixels, fractional allowed.
    radius, inner : float
        In pixels; ``inner > 0`` makes an annulus.
    """
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    distance = np.hypot(rows - centre[0], cols - centre[1])
    mask: BoolArray = (distance <= radius) & (distance >= inner)
    return mask


def annulus_radii(radius_px: float) -> tuple[float, float]:
    """Inner and outer radius of the background annulus around a lesion of ``radius_px``.

    The annulus starts a lesion radius out (at least 3 pixels, about one collimator FWHM at
    2.4 mm pixels) so that little of the lesion's blurred edge falls in it, and is as wide as
    the lesion (at least 3 pixels) so that its mean is not too noisy.
    """
    inner = radius_px + max(radius_px, 3.0)
    return inner, inner + max(radius_px, 3.0)


@dataclass(frozen=True)
class LesionContrast:
    """A lesion-to-background ratio and the means it came from."""

    contrast: float
    lesion_mean: float
    background_mean: float


def lesion_contrast(
    image: npt.ArrayLike, centre: tuple[float, float], radius_px: float
) -> LesionContrast | None:
    """Mean counts in the lesion's disc over the mean in the annulus around it.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Counts.
    centre : (row, col)
        The lesion's centre in this image's pixels.
    radius_px : float
        The lesion's radius in pixels.

    Returns
    -------
    LesionContrast or None
        None when the disc or annulus has no pixel in the image, or the background holds no
        counts (the ratio would be meaningless).
    """
    values = _as_float(image)
    shape = (values.shape[0], values.shape[1])
    disc = disc_mask(shape, centre, radius_px)
    inner, outer = annulus_radii(radius_px)
    ring = disc_mask(shape, centre, outer, inner=inner)
    if not disc.any() or not ring.any():
        return None
    lesion_mean = float(values[disc].mean())
    background_mean = float(values[ring].mean())
    if not background_mean > 0:
        return None
    return LesionContrast(lesion_mean / background_mean, lesion_mean, background_mean)


def frechet_distance(features_a: npt.ArrayLike, features_b: npt.ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    ``|μa - μb|² + Tr(Σa + Σb - 2 (Σa Σb)^½)``, the formula of FID (Heusel et al. 2017), with
    sample means and covariances. With fewer samples than feature dimensions the covariances
    are singular and the estimate is biased upwards; compare values of equal sample size only.

    Parameters
    ----------
    features_a, features_b : array_like, shape (N, D)
        One row per image; N >= 2 each, D equal.

    Returns
    -------
    float
        Non-negative (tiny negative round-off is clipped to 0).
    """
    a, b = np.atleast_2d(_as_float(features_a)), np.atleast_2d(_as_float(features_b))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(
            f"a covariance needs at least 2 samples per set; got {a.shape[0]} and {b.shape[0]}"
        )
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    covmean = _sqrtm_product(cov_a, cov_b)
    distance = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * covmean))
    return max(distance, 0.0)


def _sqrtm_product(cov_a: FloatArray, cov_b: FloatArray) -> FloatArray:
    """``(Σa Σb)^½``, real part; nudged off singularity when sqrtm fails (as pytorch-fid)."""
    with warnings.catch_warnings():
        # sqrtm warns on singular products, which small sample sets always give; the
        # result is checked below instead.
        warnings.simplefilter("ignore", RuntimeWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():
            offset = np.eye(cov_a.shape[0]) * 1e-6
            root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    real: FloatArray = np.real(root).astype(np.float64)
    return real
