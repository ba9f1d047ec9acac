"""Count-fidelity QC: does the enhanced scan hold the counts a standard-speed scan would?

The enhancer's output should hold the rapid counts times ``dose_factor`` (standard time / rapid
time, 2.0 for 40 against 20 cm/min; DOMAIN.md §4). Restoration may move counts locally to remove
noise but must not create or destroy activity: a bladder 30 % too hot or a frame missing a fifth
of its counts would mislead a reader. Per frame, this compares total and regional sums of input
and output and gives a verdict with a readable reason, so the node can refuse to send a
suspicious result. Regions are found on the rapid input only, so a bad output cannot move the
goalposts, and are coarse on purpose (body, five bands, bladder). Pure NumPy, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import cast

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BANDS",
    "FrameQc",
    "QcReport",
    "QcTolerance",
    "RegionCheck",
    "check_count_fidelity",
    "find_regions",
]

#: Horizontal bands as (name, top, bottom) fractions of the body's height, head at the top.
#: Coarse anatomical levels between adult and small-child proportions (a child's head takes a
#: larger share of the height), not a segmentation: they only localise where counts went wrong.
BANDS: tuple[tuple[str, float, float], ...] = (
    ("head", 0.0, 0.14),
    ("thorax", 0.14, 0.33),
    ("abdomen", 0.33, 0.45),
    ("pelvis", 0.45, 0.58),
    ("legs", 0.58, 1.0),
)

# Box filter width in pixels: wide enough that background noise and single hot pixels do not
# reach the body threshold, narrow enough to keep a child's limbs.
_SMOOTH_SIZE = 9
# Background level: the body rarely covers 90 % of a whole-body frame, so the 10th percentile
# of the smoothed frame is background (low but non-zero in real scans).
_BACKGROUND_PERCENTILE = 10.0
# A high level that sits in bone or bladder even when a small child covers a few % of the frame.
_HIGH_PERCENTILE = 99.5
# Body = smoothed counts above background + this fraction of (high - background). Soft tissue
# in a bone scan is roughly a tenth to a third of bone uptake; background is far below that.
_BODY_FRACTION = 0.05
# The bladder is searched in the pelvis band widened by this fraction of the body height on
# each side, because the bands are coarse and body proportions vary with age.
_BLADDER_MARGIN = 0.05
# A hot spot counts as the bladder only when its peak is this many times the median smoothed
# body counts of the search window; pelvic bone alone rarely reaches it, a filled bladder does.
_HOT_SPOT_CONTRAST = 5.0
# The bladder is the connected region around the peak above this fraction of the peak.
_HOT_SPOT_LEVEL = 0.5

_Counts = NDArray[np.float64]
_Mask = NDArray[np.bool_]


@dataclass(frozen=True)
class QcTolerance:
    """How far the output's sums may stray from the expected standard-speed counts.

    A sum with expected value ``E`` (rapid counts times ``dose_factor``) passes when
    ``|out - E| <= max(relative * E, poisson_sigmas * sqrt(E * dose_factor))``, where
    ``relative`` is :attr:`total` for the whole frame and :attr:`region` for each region.
    The second term is the Poisson floor: the rapid sum ``n`` is itself one Poisson draw, so
    ``E = n * dose_factor`` is uncertain by ``dose_factor * sqrt(n) = sqrt(E * dose_factor)``
    and a perfect restoration may differ from it by that much.

    Parameters
    ----------
    total : float
        Largest relative deviation of a frame's total counts.
    region : float
        Largest relative deviation of one region's sum.
    poisson_sigmas : float
        The allowance never falls below this many Poisson standard deviations of the sum.
    min_region_counts : float
        Regions with fewer expected counts are reported but not judged. The total is always
        judged.
    """

    total: float = 0.05
    region: float = 0.15
    poisson_sigmas: float = 5.0
    min_region_counts: float = 200.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"QcTolerance.{f.name} must be finite and >= 0, got {value!r}")


@dataclass(frozen=True)
class RegionCheck:
    """Counts in one region (or the whole frame) before and after enhancement.

    Attributes
    ----------
    name : str
        ``"total"``, ``"body"``, a band name from :data:`BANDS`, or ``"bladder"``.
    pixels : int
        Pixels in the region.
    counts_in : float
        Rapid counts in the region.
    expected : float
        ``counts_in * dose_factor``.
    counts_out : float
        Enhanced counts in the region.
    allowed : float
        Largest accepted ``|counts_out - expected|`` in counts (see :class:`QcTolerance`).
    ratio : float
        ``counts_out / expected``; 1.0 when both are zero and ``inf`` when only ``expected``
        is zero (``None`` in :meth:`QcReport.to_dict`).
    judged : bool
        False when ``expected`` is below ``QcTolerance.min_region_counts``.
    passed : bool
        True when not judged or within ``allowed``.
    """

    name: str
    pixels: int
    counts_in: float
    expected: float
    counts_out: float
    allowed: float
    ratio: float
    judged: bool
    passed: bool


@dataclass(frozen=True)
class FrameQc:
    """QC of one frame.

    Attributes
    ----------
    frame : int
        1-based frame number, as DICOM numbers frames (the array index plus one).
    total : RegionCheck
        The whole frame, named ``"total"``.
    regions : tuple of RegionCheck
        Body, the bands of :data:`BANDS` in order, then the bladder when one was found; empty
        when the frame has no counts.
    passed : bool
        The total and every judged region passed, and the frame has counts.
    reason : str
        ``""`` when passed, else one sentence per failure, e.g. ``"frame 1: bladder holds
        1.50x the expected counts (30012 vs 20008; allowed ±15%)"``.
    """

    frame: int
    total: RegionCheck
    regions: tuple[RegionCheck, ...]
    passed: bool
    reason: str


@dataclass(frozen=True)
class QcReport:
    """QC of a whole enhanced instance: every frame must pass.

    Attributes
    ----------
    frames : tuple of FrameQc
        One entry per frame, in order.
    passed : bool
        All frames passed.
    reason : str
        The failing frames' reasons joined by ``" | "``; ``""`` when passed.
    """

    frames: tuple[FrameQc, ...]
    passed: bool = field(init=False)
    reason: str = field(init=False)

    def __post_init__(self) -> None:
        # Derived here so a report can never claim a verdict its frames do not support.
        object.__setattr__(self, "passed", all(frame.passed for frame in self.frames))
        reasons = [frame.reason for frame in self.frames if not frame.passed]
        object.__setattr__(self, "reason", " | ".join(reasons))

    def to_dict(self) -> dict[str, object]:
        """All fields as nested dicts and lists for the audit store.

        Non-finite ratios become ``None``, so ``json.dumps(..., allow_nan=False)`` (and
        PostgreSQL's JSON types) accept the result.
        """
        return cast("dict[str, object]", _jsonable(asdict(self)))


def check_count_fidelity(
    rapid: NDArray[np.generic],
    enhanced: NDArray[np.generic],
    *,
    dose_factor: float,
    tolerance: QcTolerance | None = None,
) -> QcReport:
    """Compare total and regional counts of an enhanced scan with the expected scaling.

    Parameters
    ----------
    rapid : numpy.ndarray
        Rapid-scan counts, [frames, rows, columns] (head at row 0), any real dtype
        (normally uint16), non-negative.
    enhanced : numpy.ndarray
        The enhancer's output, same shape, counts on the standard-speed scale.
    dose_factor : float
        Standard acquisition time over rapid acquisition time (2.0 for 40 vs 20 cm/min).
    tolerance : QcTolerance, optional
        Acceptance limits; ``QcTolerance()`` when omitted. The rule is in its docstring.

    Returns
    -------
    QcReport
        Per-frame checks and the overall verdict. A frame without counts fails with the reason
        ``"frame N has no counts"``.

    Raises
    ------
    ValueError
        The arrays are not 3-D, empty, of different shapes, not real-valued, negative or
        non-finite, or ``dose_factor`` is not a finite number above zero.
    """
    tolerance = QcTolerance() if tolerance is None else tolerance
    rapid_f = _validated("rapid", rapid)
    enhanced_f = _validated("enhanced", enhanced)
    if rapid_f.shape != enhanced_f.shape:
        raise ValueError(
            f"enhanced shape {enhanced_f.shape} does not match rapid shape {rapid_f.shape}"
        )
    if isinstance(dose_factor, bool) or not (math.isfinite(dose_factor) and dose_factor > 0):
        raise ValueError(f"dose_factor must be a finite number > 0, got {dose_factor!r}")
    frames = tuple(
        _check_frame(index + 1, rapid_f[index], enhanced_f[index], float(dose_factor), tolerance)
        for index in range(rapid_f.shape[0])
    )
    return QcReport(frames=frames)


def find_regions(counts: NDArray[np.generic]) -> dict[str, _Mask]:
    """Body, anatomical bands and bladder of one rapid frame, as boolean masks.

    The body is where the frame, smoothed with a 9-pixel box filter, exceeds the background
    (10th percentile) by 5 % of the span up to the 99.5th percentile. The bands split the
    body's bounding box vertically at the fractions of :data:`BANDS` and keep only body
    pixels, so the band sums add up to the body sum. The bladder is the connected region
    above half the brightest smoothed body pixel of the pelvis band (widened by 5 % of the
    body height each side); it is left out when that peak is less than 5 times the band's
    median, or lies on the window's edge (something hotter just outside), because then there
    is no clear hot spot to call a bladder.

    Parameters
    ----------
    counts : numpy.ndarray
        One frame, [rows, columns], head at row 0, non-negative counts.

    Returns
    -------
    dict of str to numpy.ndarray
        ``"body"``, the band names, then ``"bladder"`` when found; each a [rows, columns] bool
        mask. Empty when the frame has no counts.

    Raises
    ------
    ValueError
        ``counts`` is not 2-D.
    """
    frame = np.asarray(counts, dtype=np.float64)
    if frame.ndim != 2:
        raise ValueError(f"a frame must be 2-D [rows, columns], got shape {frame.shape}")
    if not frame.any():
        return {}
    smoothed = _box_mean(frame, _SMOOTH_SIZE)
    background = float(np.percentile(smoothed, _BACKGROUND_PERCENTILE))
    high = float(np.percentile(smoothed, _HIGH_PERCENTILE))
    body = smoothed > background + _BODY_FRACTION * (high - background)
    if not body.any():
        # Only a perfectly flat frame has nothing above its own background: call it all body
        # rather than judge nothing.
        body = smoothed > 0
    rows = np.flatnonzero(body.any(axis=1))
    top, height = int(rows[0]), int(rows[-1] - rows[0] + 1)

    regions: dict[str, _Mask] = {"body": body}
    for name, start, stop in BANDS:
        band = np.zeros_like(body)
        band[_band_rows(top, height, start, stop)] = True
        regions[name] = band & body

    bladder = _find_bladder(smoothed, body, top, height)
    if bladder is not None:
        regions["bladder"] = bladder
    return regions


def _validated(name: str, array: NDArray[np.generic]) -> _Counts:
    """``array`` as float64 after the checks of :func:`check_count_fidelity`."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "uif":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"{name} must be 3-D [frames, rows, columns], got shape {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"{name} is empty, shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(arr)).sum())} non-finite values")
    if arr.dtype.kind != "u" and (minimum := arr.min()) < 0:
        raise ValueError(f"{name} holds negative counts (minimum {minimum})")
    return arr.astype(np.float64, copy=False)


def _check_frame(
    number: int, rapid: _Counts, enhanced: _Counts, dose_factor: float, tolerance: QcTolerance
) -> FrameQc:
    judge = partial(
        _judge, rapid=rapid, enhanced=enhanced, dose_factor=dose_factor, tolerance=tolerance
    )
    everything = np.ones(rapid.shape, dtype=bool)
    total = judge("total", everything, relative=tolerance.total, always_judged=True)
    if total.counts_in == 0:
        return FrameQc(number, total, (), passed=False, reason=f"frame {number} has no counts")
    regions = tuple(
        judge(name, mask, relative=tolerance.region) for name, mask in find_regions(rapid).items()
    )
    failures = [check for check in (total, *regions) if not check.passed]
    reason = f"frame {number}: " + "; ".join(map(_describe, failures)) if failures else ""
    return FrameQc(number, total, regions, passed=not failures, reason=reason)


def _judge(
    name: str,
    mask: _Mask,
    *,
    rapid: _Counts,
    enhanced: _Counts,
    dose_factor: float,
    relative: float,
    tolerance: QcTolerance,
    always_judged: bool = False,
) -> RegionCheck:
    counts_in = float(rapid[mask].sum())
    counts_out = float(enhanced[mask].sum())
    expected = counts_in * dose_factor
    allowed = max(relative * expected, tolerance.poisson_sigmas * math.sqrt(expected * dose_factor))
    # 1.0 for 0 of 0 keeps an empty region neutral; inf flags counts made from nothing.
    ratio = counts_out / expected if expected > 0 else 1.0 if counts_out == 0 else math.inf
    judged = always_judged or expected >= tolerance.min_region_counts
    passed = not judged or abs(counts_out - expected) <= allowed
    return RegionCheck(
        name=name,
        pixels=int(mask.sum()),
        counts_in=counts_in,
        expected=expected,
        counts_out=counts_out,
        allowed=allowed,
        ratio=ratio,
        judged=judged,
        passed=passed,
    )


def _describe(check: RegionCheck) -> str:
    if check.expected == 0:
        return f"{check.name} expected no counts but holds {check.counts_out:.0f}"
    return (
        f"{check.name} holds {check.ratio:.2f}x the expected counts "
        f"({check.counts_out:.0f} vs {check.expected:.0f}; "
        f"allowed ±{check.allowed / check.expected:.0%})"
    )


def _band_rows(top: int, height: int, start: float, stop: float) -> slice:
    # Rounding the same fraction the same way for adjacent bands makes them tile the box.
    return slice(top + round(start * height), top + round(stop * height))


def _find_bladder(smoothed: _Counts, body: _Mask, top: int, height: int) -> _Mask | None:
    (_, start, stop) = next(band for band in BANDS if band[0] == "pelvis")
    window = _band_rows(
        top, height, max(start - _BLADDER_MARGIN, 0.0), min(stop + _BLADDER_MARGIN, 1.0)
    )
    local = smoothed[window]
    local_body = body[window]
    if not local_body.any():
        return None
    peak_index = np.argmax(np.where(local_body, local, -np.inf))
    peak_row, peak_col = np.unravel_index(peak_index, local.shape)
    peak = float(local[peak_row, peak_col])
    if peak < _HOT_SPOT_CONTRAST * float(np.median(local[local_body])):
        return None
    if peak_row in (0, local.shape[0] - 1):
        # The window cuts through something hotter outside it (a kidney, say): not a bladder.
        return None
    seed = np.zeros_like(local_body)
    seed[peak_row, peak_col] = True
    hot = _grow(seed, local_body & (local >= _HOT_SPOT_LEVEL * peak))
    bladder = np.zeros_like(body)
    bladder[window] = hot
    return bladder


def _grow(seed: _Mask, allowed: _Mask) -> _Mask:
    """The 4-connected part of ``allowed`` reachable from ``seed`` (geodesic dilation)."""
    region = seed & allowed
    while True:
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= allowed
        if np.array_equal(grown, region):
            return region
        region = grown


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _box_mean(image: _Counts, size: int) -> _Counts:
    """Mean over a ``size``-square window, edges padded by repetition (integral image)."""
    pad = size // 2
    padded = np.pad(image, pad, mode="edge")
    integral = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1))
    integral[1:, 1:] = padded.cumsum(axis=0).cumsum(axis=1)
    rows, cols = image.shape
    total = (
        integral[size : size + rows, size : size + cols]
        - integral[:rows, size : size + cols]
        - integral[size : size + rows, :cols]
        + integral[:rows, :cols]
    )
    # Integer counts give exact sums in float64; the clamp only guards float inputs.
    mean: _Counts = np.maximum(total, 0.0) / (size * size)
    return mean
