"""Count-fidelity QC of the enhancer's output on synthetic whole-body frames."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from enhancer.qc import FrameQc, QcTolerance, RegionCheck, check_count_fidelity, find_regions

ROWS, COLS = 1024, 256
BLADDER_CENTRE = (500, 128)
BLADDER_RADIUS = 14


def phantom(
    *, scale: float = 1.0, bladder: bool = True, bladder_radius: int = BLADDER_RADIUS
) -> NDArray[np.float64]:
    """Mean rapid counts of a whole-body anterior view: head, trunk with spine, legs, bladder.

    Soft tissue 3, spine 12 and bladder 30 counts per pixel (times ``scale``) over a background
    of 0.3. The body spans rows 30 to 989, so the pelvis band (0.45 to 0.58 of the height)
    covers rows 462 to 586 and holds the bladder at row 500.
    """
    r, c = np.mgrid[:ROWS, :COLS]
    mean = np.full((ROWS, COLS), 0.3)
    body = ((r - 90) / 60) ** 2 + ((c - 128) / 45) ** 2 <= 1
    body |= (r >= 150) & (r < 560) & (c >= 78) & (c < 178)
    body |= (r >= 560) & (r < 990) & (((c >= 88) & (c < 124)) | ((c >= 132) & (c < 168)))
    mean[body] = 3.0
    mean[(r >= 150) & (r < 560) & (c >= 122) & (c < 134)] = 12.0
    if bladder:
        row, col = BLADDER_CENTRE
        mean[(r - row) ** 2 + (c - col) ** 2 <= bladder_radius**2] = 30.0
    return mean * scale


def scan(seed: int, *, frames: int = 2, **phantom_args: Any) -> NDArray[np.uint16]:
    """Poisson counts of ``frames`` views of the phantom."""
    rng = np.random.default_rng(seed)
    mean = phantom(**phantom_args)
    return rng.poisson(mean, size=(frames, ROWS, COLS)).astype(np.uint16)


def box3(frames: NDArray[np.float64]) -> NDArray[np.float64]:
    """3x3 box blur of each frame, rescaled to keep every frame's sum exactly."""
    padded = np.pad(frames, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros_like(padded)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            out += np.roll(padded, (dr, dc), axis=(1, 2))
    out /= 9
    inner = out[:, 1:-1, 1:-1]
    inner *= frames.sum(axis=(1, 2), keepdims=True) / inner.sum(axis=(1, 2), keepdims=True)
    return inner


def check(name: str, frame: FrameQc) -> RegionCheck:
    """The check of region ``name`` in ``frame``."""
    return next(region for region in frame.regions if region.name == name)


def test_smoothed_double_passes() -> None:
    rapid = scan(1)
    enhanced = np.rint(box3(rapid * 2.0)).astype(np.uint16)

    report = check_count_fidelity(rapid, enhanced, dose_factor=2.0)

    assert report.passed, report.reason
    assert report.reason == ""
    assert [frame.frame for frame in report.frames] == [1, 2]
    names = [region.name for region in report.frames[0].regions]
    assert names == ["body", "head", "thorax", "abdomen", "pelvis", "legs", "bladder"]
    for frame in report.frames:
        # Rounding a blurred background of about 0.6 to integers loses a little of it.
        assert frame.total.ratio == pytest.approx(1.0, abs=0.03)
        assert all(region.judged and region.passed for region in frame.regions)
        assert all(region.ratio == pytest.approx(1.0, abs=0.05) for region in frame.regions)


def test_ideal_mean_output_passes_on_poisson_allowance() -> None:
    # An enhancer that outputs the true standard-speed mean differs from twice the rapid draw
    # by Poisson noise alone; that must never fail.
    rapid = scan(2)
    enhanced = np.broadcast_to(phantom() * 2.0, rapid.shape)

    assert check_count_fidelity(rapid, enhanced, dose_factor=2.0).passed


def test_hot_bladder_fails_naming_bladder() -> None:
    rapid = scan(3)
    enhanced = rapid * 2.0
    bladder = find_regions(rapid[1])["bladder"]
    enhanced[1][bladder] *= 1.5

    report = check_count_fidelity(rapid, enhanced, dose_factor=2.0)

    assert not report.passed
    assert report.frames[0].passed
    failing = report.frames[1]
    assert check("bladder", failing).ratio == pytest.approx(1.5)
    assert not check("bladder", failing).passed
    assert failing.total.passed
    # The bladder holds about a third of the pelvis band, so that band fails alongside it.
    assert "bladder holds 1.50x the expected counts" in failing.reason
    assert failing.reason.startswith("frame 2: ")
    assert "allowed ±15%" in failing.reason
    assert report.reason == failing.reason


def test_lost_counts_fail_naming_total() -> None:
    rapid = scan(4)
    enhanced = rapid * 2.0 * 0.8

    report = check_count_fidelity(rapid, enhanced, dose_factor=2.0)

    assert not report.passed
    for frame in report.frames:
        assert not frame.total.passed
        assert frame.total.ratio == pytest.approx(0.8)
        assert frame.reason.startswith(f"frame {frame.frame}: total holds 0.80x")
        assert "allowed ±5%" in frame.reason
    assert report.reason.count("total holds 0.80x") == 2


def test_total_within_relative_limit_passes() -> None:
    # 4 % too many counts everywhere is inside the 5 % total and 15 % region limits.
    rapid = scan(5)

    assert check_count_fidelity(rapid, rapid * 2.0 * 1.04, dose_factor=2.0).passed
    assert not check_count_fidelity(rapid, rapid * 2.0 * 1.07, dose_factor=2.0).passed


def test_few_count_region_is_reported_but_not_judged() -> None:
    # A low-count scan with a small bladder: it still stands out but holds under 200 expected
    # counts, too few for a relative limit to mean anything.
    rapid = scan(6, frames=1, scale=0.015, bladder_radius=5)
    enhanced = rapid * 2.0
    bladder_mask = find_regions(rapid[0])["bladder"]
    enhanced[0][bladder_mask] *= 3.0

    frame = check_count_fidelity(rapid, enhanced, dose_factor=2.0).frames[0]

    bladder = check("bladder", frame)
    assert bladder.expected < 200
    assert bladder.ratio == pytest.approx(3.0)
    assert not bladder.judged
    assert bladder.passed
    assert "bladder" not in frame.reason


def test_min_region_counts_gates_judgement() -> None:
    rapid = scan(7, frames=1)
    enhanced = rapid * 2.0
    enhanced[0][find_regions(rapid[0])["bladder"]] *= 1.3
    strict = check_count_fidelity(rapid, enhanced, dose_factor=2.0)
    assert [r.name for r in strict.frames[0].regions if not r.passed] == ["bladder"]
    bladder_expected = check(
        "bladder", check_count_fidelity(rapid, enhanced, dose_factor=2.0).frames[0]
    ).expected

    lenient = QcTolerance(min_region_counts=bladder_expected + 1)
    report = check_count_fidelity(rapid, enhanced, dose_factor=2.0, tolerance=lenient)

    assert report.passed, report.reason
    assert not check("bladder", report.frames[0]).judged


def test_poisson_floor_widens_the_allowance_for_small_sums() -> None:
    # 200 rapid counts, dose factor 2: expected 400, Poisson floor 5 * sqrt(800) = 141 counts,
    # far wider than 5 % (20 counts). Bands hold under 200 expected counts and are not judged.
    rapid = np.zeros((1, 64, 32))
    rapid[0, 20:30, 10:20] = 2.0

    inside = check_count_fidelity(rapid, rapid * 2.0 * 1.325, dose_factor=2.0)
    outside = check_count_fidelity(rapid, rapid * 2.0 * 1.375, dose_factor=2.0)

    assert inside.frames[0].total.allowed == pytest.approx(5 * np.sqrt(800))
    assert inside.passed, inside.reason
    assert not outside.passed
    assert "total holds 1.38x" in outside.reason


@pytest.mark.parametrize(
    ("rapid_shape", "enhanced_shape", "dose_factor", "message"),
    [
        ((2, 64, 32), (2, 64, 33), 2.0, r"enhanced shape \(2, 64, 33\) does not match"),
        ((64, 32), (64, 32), 2.0, r"rapid must be 3-D .* got shape \(64, 32\)"),
        ((0, 64, 32), (0, 64, 32), 2.0, r"rapid is empty, shape \(0, 64, 32\)"),
        ((2, 64, 32), (2, 64, 32), -2.0, r"dose_factor must be .* got -2\.0"),
        ((2, 64, 32), (2, 64, 32), 0.0, r"got 0\.0"),
        ((2, 64, 32), (2, 64, 32), float("nan"), r"got nan"),
    ],
)
def test_bad_arguments_raise_with_the_value(
    rapid_shape: tuple[int, ...],
    enhanced_shape: tuple[int, ...],
    dose_factor: float,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        check_count_fidelity(
            np.ones(rapid_shape, dtype=np.uint16),
            np.ones(enhanced_shape, dtype=np.uint16),
            dose_factor=dose_factor,
        )


def test_bad_values_raise_with_the_value() -> None:
    good = np.ones((1, 16, 16))
    negative = good.copy()
    negative[0, 3, 3] = -4.0
    with pytest.raises(ValueError, match=r"enhanced holds negative counts \(minimum -4\.0\)"):
        check_count_fidelity(good, negative, dose_factor=2.0)
    nan = good.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="rapid holds 1 non-finite values"):
        check_count_fidelity(nan, good, dose_factor=2.0)
    with pytest.raises(ValueError, match="rapid must hold real numbers, got dtype bool"):
        check_count_fidelity(good.astype(bool), good, dose_factor=2.0)
    with pytest.raises(ValueError, match=r"QcTolerance.region must be finite and >= 0, got -0.1"):
        QcTolerance(region=-0.1)


def test_to_dict_round_trips_through_json() -> None:
    rapid = scan(8)
    enhanced = rapid * 2.0
    enhanced[0] = 0  # a frame whose output lost every count: ratio 0, and a failing verdict
    report = check_count_fidelity(rapid, enhanced, dose_factor=2.0)

    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)

    assert json.loads(text) == data
    assert data["passed"] is False
    assert data["reason"] == report.reason
    frames = data["frames"]
    assert isinstance(frames, list)
    assert frames[0]["total"]["ratio"] == 0.0
    assert frames[1]["regions"][-1]["name"] == "bladder"


def test_zero_frame_fails_with_reason() -> None:
    rapid = scan(9)
    rapid[1] = 0
    enhanced = rapid * 2.0
    enhanced[1, 5, 5] = 7.0  # output counts where the input had none: ratio inf, as None in JSON

    report = check_count_fidelity(rapid, enhanced, dose_factor=2.0)

    assert report.frames[0].passed
    zero = report.frames[1]
    assert not zero.passed
    assert zero.reason == "frame 2 has no counts"
    assert zero.regions == ()
    assert zero.total.ratio == np.inf
    assert report.reason == "frame 2 has no counts"
    assert json.dumps(report.to_dict(), allow_nan=False)


def test_bladder_found_at_the_blob() -> None:
    frame = scan(10, frames=1)[0]

    regions = find_regions(frame)

    rows, cols = np.nonzero(regions["bladder"])
    assert abs(rows.mean() - BLADDER_CENTRE[0]) < 2
    assert abs(cols.mean() - BLADDER_CENTRE[1]) < 2
    # Half-maximum of the smoothed blob roughly follows the drawn disc (about 615 pixels).
    assert 300 < rows.size < 1000
    assert regions["bladder"][BLADDER_CENTRE]


def test_no_bladder_without_a_hot_spot() -> None:
    rapid = scan(11, frames=1, bladder=False)

    regions = find_regions(rapid[0])
    report = check_count_fidelity(rapid, rapid * 2.0, dose_factor=2.0)

    assert "bladder" not in regions
    assert "bladder" not in [region.name for region in report.frames[0].regions]
    assert report.passed


def test_regions_found_on_the_body() -> None:
    frame = scan(12, frames=1)[0]

    regions = find_regions(frame)

    body = regions["body"]
    truth = phantom() >= 3.0
    # The smoothed threshold follows the outline to within a few pixels.
    assert (body & truth).sum() / truth.sum() > 0.97
    # The 9-pixel box filter widens it by a few pixels all round (a perimeter of about 3000).
    assert (body & ~truth).sum() / truth.sum() < 0.15
    bands = [regions[name] for name in ("head", "thorax", "abdomen", "pelvis", "legs")]
    assert np.array_equal(np.sum(bands, axis=0), body.astype(int))  # bands tile the body
    head_rows = np.nonzero(regions["head"])[0]
    assert head_rows.min() < 40
    assert head_rows.max() < 170
    assert regions["pelvis"][BLADDER_CENTRE]
    assert find_regions(np.zeros((32, 32))) == {}


def test_no_bladder_on_the_flank_of_a_hotter_spot_outside_the_pelvis() -> None:
    # A hot kidney just above the search window: the window's brightest pixel is on its edge,
    # on the kidney's flank, and must not be called a bladder.
    mean = phantom(bladder=False)
    r, c = np.mgrid[:ROWS, :COLS]
    mean[(r - 405) ** 2 + (c - 100) ** 2 <= 12**2] = 30.0
    frame = np.random.default_rng(13).poisson(mean).astype(np.uint16)

    assert "bladder" not in find_regions(frame)
