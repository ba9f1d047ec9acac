"""Random crops that mostly land on the body, and a rough body mask for count frames.

A child may fill a small part of a 1024×256 whole-body frame; uniform crops would mostly show
empty field. :func:`crop_window` centres a crop on a body pixel with high probability and
anywhere otherwise, so the network still sees some background.

The hottest spot of a bone scan, residual tracer at the injection site, covers a dozen pixels
at several times the skeleton's counts; a 256×128 crop drawn over the body holds it in about
38 % of the frames that show one (phantom seed 1), and then as a dozen of the crop's 32 768
pixels. The 0.2.0 model flattened it (4x the rapid scan's own squared error there). With
``hot_probability`` a crop holds one of the frame's hot pixels (:func:`hot_pixels`), placed
anywhere inside it; the loss's ``count_reference`` weights them (``training.config``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "CROP_MULTIPLE",
    "body_pixels",
    "box_mean",
    "check_crop",
    "count_hot_pixels",
    "crop_window",
    "hot_pixels",
    "random_crop",
]

#: Crop sides must be multiples of this (the restoration U-Nets downsample four times).
CROP_MULTIPLE = 16
_BODY_BOX_PX = 9
_BODY_FRACTION_OF_MEAN = 0.05
#: Pixels at or above this fraction of a frame's maximum are its hot spots.
HOT_FRACTION_OF_MAX = 0.5

Window = tuple[slice, slice]


def check_crop(crop: tuple[int, int] | None) -> tuple[int, int] | None:
    """Validate a crop size (rows, cols).

    Raises
    ------
    ValueError
        A side that is not a positive multiple of :data:`CROP_MULTIPLE`.
    """
    if crop is None:
        return None
    if len(crop) != 2:
        raise ValueError(f"crop {crop!r} is not (rows, cols)")
    rows, cols = int(crop[0]), int(crop[1])
    if rows <= 0 or cols <= 0 or rows % CROP_MULTIPLE or cols % CROP_MULTIPLE:
        raise ValueError(f"crop {crop!r} sides are not positive multiples of {CROP_MULTIPLE}")
    return rows, cols


def crop_window(
    shape: tuple[int, ...],
    crop: tuple[int, int],
    rng: np.random.Generator,
    *,
    body: npt.NDArray[np.bool_] | None = None,
    body_probability: float = 0.9,
    hot: npt.NDArray[np.bool_] | None = None,
    hot_probability: float = 0.0,
) -> Window:
    """Choose a ``crop``-sized window inside an image of ``shape`` (rows, cols).

    Parameters
    ----------
    shape : (rows, cols)
        Image size.
    crop : (rows, cols)
        Window size, no larger than the image.
    rng : numpy.random.Generator
        Source of the draws.
    body : ndarray of bool, shape ``shape``, optional
        Pixels worth seeing. With probability ``body_probability`` the window is centred
        (as nearly as the image edges allow) on one of them, drawn uniformly.
    body_probability : float
        0-1; the rest of the time the window is placed uniformly.
    hot : ndarray of bool, shape ``shape``, optional
        Hot pixels (:func:`hot_pixels`). With probability ``hot_probability`` the window
        holds one of them, drawn uniformly, at a uniformly drawn place inside the window;
        otherwise the window is placed as above.
    hot_probability : float
        0-1. At 0 (the default) no extra number is drawn, so the windows are those of a
        call without ``hot``.

    Returns
    -------
    (slice, slice)
        Row and column slices of the window.

    Raises
    ------
    ValueError
        A crop larger than the image.
    """
    rows, cols = int(shape[0]), int(shape[1])
    crop_rows, crop_cols = crop
    if crop_rows > rows or crop_cols > cols:
        raise ValueError(f"crop {crop!r} is larger than the {rows}x{cols} frame")
    if not 0.0 <= body_probability <= 1.0:
        raise ValueError(f"body probability {body_probability!r} is outside 0-1")
    if not 0.0 <= hot_probability <= 1.0:
        raise ValueError(f"hot-spot probability {hot_probability!r} is outside 0-1")
    if hot_probability > 0.0:
        # Four draws always, so the stream does not depend on the branch taken.
        use_hot, pick, down, across = rng.random(4)
        spots = np.flatnonzero(hot) if hot is not None and use_hot < hot_probability else None
        if spots is not None and spots.size:
            row, col = divmod(int(spots[min(int(pick * spots.size), spots.size - 1)]), cols)
            top = min(max(row - int(down * crop_rows), 0), rows - crop_rows)
            left = min(max(col - int(across * crop_cols), 0), cols - crop_cols)
            return slice(top, top + crop_rows), slice(left, left + crop_cols)
    # Draw both numbers always, so the stream does not depend on the branch taken.
    use_body = rng.random() < body_probability
    pick = rng.random()
    candidates = np.flatnonzero(body) if body is not None and use_body else None
    if candidates is not None and candidates.size:
        row, col = divmod(
            int(candidates[min(int(pick * candidates.size), candidates.size - 1)]), cols
        )
        top = min(max(row - crop_rows // 2, 0), rows - crop_rows)
        left = min(max(col - crop_cols // 2, 0), cols - crop_cols)
    else:
        top = int(rng.integers(0, rows - crop_rows + 1))
        left = int(rng.integers(0, cols - crop_cols + 1))
    return slice(top, top + crop_rows), slice(left, left + crop_cols)


def random_crop(
    images: Sequence[npt.NDArray[np.generic]],
    crop: tuple[int, int],
    rng: np.random.Generator,
    *,
    body: npt.NDArray[np.bool_] | None = None,
    body_probability: float = 0.9,
) -> list[npt.NDArray[np.generic]]:
    """Cut the same :func:`crop_window` out of each of ``images`` (all of one shape).

    Returns
    -------
    list of ndarray
        Views (not copies) of the window in each image, in order.
    """
    if not images:
        return []
    shape = images[0].shape
    if any(image.shape != shape for image in images):
        raise ValueError(f"images of shapes {[image.shape for image in images]!r} differ")
    window = crop_window(shape, crop, rng, body=body, body_probability=body_probability)
    return [image[window] for image in images]


def hot_pixels(
    image: npt.NDArray[np.generic], fraction: float = HOT_FRACTION_OF_MAX
) -> npt.NDArray[np.bool_]:
    """Pixels at or above ``fraction`` of the image's maximum (all False for an empty image).

    Give it expected counts (a phantom's λ) or smoothed counts (:func:`box_mean` of a scan):
    on raw counts a noisy pixel can stand in for the maximum.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"hot fraction {fraction!r} is outside (0, 1]")
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if not peak > 0:
        return np.zeros(values.shape, dtype=bool)
    hot: npt.NDArray[np.bool_] = values >= fraction * peak
    return hot


def count_hot_pixels(counts: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    """:func:`hot_pixels` of a scan's counts after a 3×3 mean, so that a noisy pixel does not
    stand in for the peak."""
    return hot_pixels(box_mean(counts, 3))


def box_mean(image: npt.NDArray[np.generic], size: int) -> npt.NDArray[np.float64]:
    """Mean over a ``size``×``size`` box around each pixel (odd ``size``; zeros outside).

    Summed-area table: the cost does not grow with ``size``.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"box size {size!r} is not a positive odd number")
    half = size // 2
    padded = np.pad(np.asarray(image, dtype=np.float64), half + 1)
    table = padded.cumsum(axis=0).cumsum(axis=1)
    rows, cols = image.shape
    lo_r, hi_r = slice(0, rows), slice(size, size + rows)
    lo_c, hi_c = slice(0, cols), slice(size, size + cols)
    total = table[hi_r, hi_c] - table[lo_r, hi_c] - table[hi_r, lo_c] + table[lo_r, lo_c]
    mean: npt.NDArray[np.float64] = total / float(size * size)
    return mean


def body_pixels(counts: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    """A rough body mask of a count frame: 9×9 box-mean counts above 5 % of their mean over the
    scanned field (pixels within a box of any count).

    Good enough to place crops and to weigh registration, not a segmentation. The field
    outside the body holds scatter and room background at well under 5 % of that mean; the
    box keeps sparse low-count limbs in.

    Parameters
    ----------
    counts : ndarray, shape (rows, cols)
        Non-negative counts.

    Returns
    -------
    ndarray of bool, shape (rows, cols)
        All False for an empty frame.
    """
    smooth = box_mean(counts, _BODY_BOX_PX)
    field = smooth > 0  # the scanned field: within a box of some count
    if not field.any():
        return np.zeros(counts.shape, dtype=bool)
    return smooth > _BODY_FRACTION_OF_MEAN * float(smooth[field].mean())
