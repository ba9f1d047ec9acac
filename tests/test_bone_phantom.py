"""The whole-body bone-scan phantom: anatomy, uptake, masks, lesions, counts and thinning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pacs_node.synth import (
    BodyHabitus,
    BonePhantom,
    LesionKind,
    LesionModel,
    PhantomRender,
    thin_counts,
)
from pacs_node.synth.phantom import Sex, mean_total_counts
from pacs_node.synth.raster import gaussian_blur

NO_LESIONS = LesionModel(probability=0.0)


def render(
    age: float,
    seed: int,
    sex: Sex = "M",
    *,
    injection: float = 0.5,
    lesions: LesionModel = NO_LESIONS,
) -> PhantomRender:
    body = BodyHabitus.typical(age, sex)
    phantom = BonePhantom(body, injection_site_probability=injection, lesions=lesions)
    return phantom.render(np.random.default_rng(seed))


def at(image: np.ndarray, point: tuple[float, float], half: int = 1) -> float:
    """Mean of a (2 half + 1)-pixel square around a point."""
    row, col = round(point[0]), round(point[1])
    return float(image[row - half : row + half + 1, col - half : col + half + 1].mean())


def posterior(render_: PhantomRender) -> np.ndarray:
    """The posterior view mirrored back into anterior coordinates, where landmarks are."""
    return render_.views.posterior[:, ::-1]


def test_views_masks_and_landmarks_have_the_promised_shapes() -> None:
    result = render(8.0, 0)
    for lam in (result.views.anterior, result.views.posterior):
        assert lam.shape == (1024, 256)
        assert lam.dtype == np.float64
        assert lam.min() >= 0.0
        assert lam[result.views.scanned_rows :].sum() == 0.0
    for mask in (result.skeleton_mask, result.body_mask):
        assert mask.shape == (2, 1024, 256)
        assert mask.dtype == np.bool_
    # Frame 1 is seen from behind: mirrored, the masks are the anterior ones.
    np.testing.assert_array_equal(result.skeleton_mask[1][:, ::-1], result.skeleton_mask[0])
    assert (result.skeleton_mask & ~result.body_mask).sum() < 0.01 * result.skeleton_mask.sum()
    assert {"L3", "bladder", "kidney L", "femur physis R", "rib 7 lateral L"} <= set(
        result.landmarks
    )


def test_infant_is_short_in_the_frame_and_has_fewer_counts() -> None:
    infant, adult = render(0.5, 1, "F"), render(30.0, 1)
    lengths = []
    cases: tuple[tuple[PhantomRender, float, Sex], ...] = ((infant, 0.5, "F"), (adult, 30.0, "M"))
    for result, age, sex in cases:
        stature_px = BodyHabitus.typical(age, sex).height_cm * 10.0 / 2.4
        rows = np.flatnonzero(result.body_mask[0].any(axis=1))
        length = rows[-1] - rows[0] + 1
        assert length == pytest.approx(stature_px, rel=0.05)
        assert rows[0] < 20  # the head is at the top of the field
        lengths.append(length)
    assert lengths[0] < 0.4 * 1024 < 0.7 * 1024 < lengths[1]
    assert infant.views.anterior.sum() < 0.25 * adult.views.anterior.sum()


def test_total_counts_follow_the_target_of_each_body_and_speed() -> None:
    bodies: tuple[tuple[float, Sex], ...] = ((2.0, "F"), (10.0, "M"), (40.0, "M"))
    for age, sex in bodies:
        body = BodyHabitus.typical(age, sex)
        target = mean_total_counts(body, 20.0)
        ratios = []
        for seed in range(6):
            views = BonePhantom(body, lesions=NO_LESIONS).expected_counts(
                np.random.default_rng(seed)
            )
            ratios += [views.anterior.sum() / target, views.posterior.sum() / target]
        # Each scan's level varies by +-15 %, views by a few % around their mean.
        assert min(ratios) > 0.8
        assert max(ratios) < 1.25
        assert np.mean(ratios) == pytest.approx(1.0, abs=0.08)
    adult = BodyHabitus.typical(35.0, "M")
    slow = BonePhantom(adult).expected_counts(np.random.default_rng(3))
    fast = BonePhantom(adult, speed_cm_min=60.0).expected_counts(np.random.default_rng(3))
    assert fast.anterior.sum() == pytest.approx(slow.anterior.sum() / 3.0, rel=1e-6)
    assert 1.0e6 < slow.anterior.sum() < 2.0e6


def test_growth_plates_are_bright_in_a_child_and_gone_in_an_adult() -> None:
    def physis_over_shaft(result: PhantomRender) -> float:
        marks = result.landmarks
        plate = at(result.views.anterior, marks["femur physis R"])
        return plate / at(result.views.anterior, marks["femur shaft R"])

    for seed in range(3):
        child, adult = physis_over_shaft(render(6.0, seed)), physis_over_shaft(render(25.0, seed))
        assert child > 4.0
        assert adult < 3.0
        assert child > 2.0 * adult


@pytest.mark.parametrize("age", [1.0, 6.0, 14.0, 45.0])
def test_bladder_is_the_hottest_spot(age: float) -> None:
    for seed in range(3):
        result = render(age, seed, injection=0.0)
        row, col = np.unravel_index(np.argmax(result.views.anterior), (1024, 256))
        bladder = result.landmarks["bladder"]
        assert math.hypot(row - bladder[0], col - bladder[1]) < 8.0


def test_kidneys_and_spine_are_brighter_from_behind() -> None:
    for age in (4.0, 12.0, 30.0):
        result = render(age, 2)
        for name in ("kidney R", "kidney L", "T11", "L1", "L3"):
            mark = result.landmarks[name]
            assert at(posterior(result), mark, 2) > 1.15 * at(result.views.anterior, mark, 2)
        # The bladder lies in front: brighter anteriorly.
        bladder = result.landmarks["bladder"]
        assert at(result.views.anterior, bladder) > 1.2 * at(posterior(result), bladder)


def test_bone_stands_out_from_soft_tissue() -> None:
    for age in (3.0, 8.0):
        result = render(age, 4)
        stature_px = BodyHabitus.typical(age, "M").height_cm * 10.0 / 2.4
        spine = result.landmarks["L3"]
        flank = (spine[0], spine[1] + 0.075 * stature_px)
        assert result.body_mask[0][round(flank[0]), round(flank[1])]
        ratio = at(posterior(result), spine) / at(posterior(result), flank)
        assert 4.0 < ratio < 15.0  # about 5-10:1 in children


def test_skeleton_mask_covers_the_spine_but_not_soft_tissue_beside_the_ribs() -> None:
    for age in (2.0, 10.0, 35.0):
        result = render(age, 5)
        mask, body = result.skeleton_mask[0], result.body_mask[0]
        for name in [f"T{k}" for k in range(1, 13)] + [f"L{k}" for k in range(1, 6)]:
            row, col = (round(v) for v in result.landmarks[name])
            assert mask[row, col], name
        for side, step in (("R", -1), ("L", 1)):
            row, col = (round(v) for v in result.landmarks[f"rib 7 lateral {side}"])
            beyond = [col + step * k for k in range(4, 7)]
            assert body[row, beyond].all(), (age, side)
            assert not mask[row, beyond].any(), (age, side)
        # Bone is a minority of the body: the mask is not just the outline.
        assert 0.1 < mask.sum() / body.sum() < 0.5


def test_lesions_change_uptake_where_they_are_recorded() -> None:
    model = LesionModel(probability=1.0, max_count=4, hot_share=0.5)
    seen = {LesionKind.HOT: 0, LesionKind.COLD: 0}
    rr, cc = np.ogrid[:1024, :256]
    for age, seed in ((3.0, 0), (10.0, 1), (10.0, 2), (40.0, 3), (40.0, 5)):
        with_lesions = render(age, seed, lesions=model)
        without = render(age, seed)
        assert with_lesions.lesions
        assert without.lesions == ()
        for lesion in with_lesions.lesions:
            seen[lesion.kind] += 1
            row, col = lesion.centre
            disc = np.hypot(rr - row, cc - col) <= max(lesion.radius_mm / 2.4 / 2.0, 1.0)
            assert with_lesions.skeleton_mask[0][disc].any(), lesion
            ratios = [
                with_lesions.views.anterior[disc].mean() / without.views.anterior[disc].mean(),
                posterior(with_lesions)[disc].mean() / posterior(without)[disc].mean(),
            ]
            if lesion.kind is LesionKind.HOT:
                assert 1.5 <= lesion.contrast <= 5.0
                assert max(ratios) > 1.0 + 0.2 * (lesion.contrast - 1.0), lesion
            else:
                assert 0.2 <= lesion.contrast <= 0.6
                assert min(ratios) < 1.0 - 0.2 * (1.0 - lesion.contrast), lesion
            assert 5.0 <= lesion.radius_mm <= 20.0
            post_row, post_col = lesion.centre_in("posterior", 256)
            assert (post_row, post_col) == (row, 255 - col)
        # Away from every lesion, the two renders are the same scan up to the count scale.
        far = np.ones((1024, 256), dtype=bool)
        for lesion in with_lesions.lesions:
            far &= np.hypot(rr - lesion.centre[0], cc - lesion.centre[1]) > 12.0 + 20.0 / 2.4
        far &= with_lesions.body_mask[0]
        ratio = with_lesions.views.anterior[far] / without.views.anterior[far]
        assert ratio.std() < 0.01 * ratio.mean()
    assert seen[LesionKind.HOT] > 0
    assert seen[LesionKind.COLD] > 0


def test_same_seed_same_render_other_seed_other_pose() -> None:
    first, second, other = render(9.0, 7), render(9.0, 7), render(9.0, 8)
    np.testing.assert_array_equal(first.views.anterior, second.views.anterior)
    np.testing.assert_array_equal(first.views.posterior, second.views.posterior)
    np.testing.assert_array_equal(first.skeleton_mask, second.skeleton_mask)
    assert first.lesions == second.lesions
    assert first.landmarks == second.landmarks
    assert first.landmarks["L3"] != other.landmarks["L3"]
    assert not np.array_equal(first.skeleton_mask, other.skeleton_mask)


def test_arms_stay_inside_the_field() -> None:
    for seed in range(12):
        body = render(35.0, seed).body_mask[0]
        assert not body[:, :2].any()
        assert not body[:, -2:].any()


def test_phantom_refuses_bad_settings() -> None:
    body = BodyHabitus.typical(30.0, "M")
    with pytest.raises(ValueError, match="does not fit 512 rows"):
        BonePhantom(body, rows=512)
    with pytest.raises(ValueError, match=r"injection site probability 1\.5"):
        BonePhantom(body, injection_site_probability=1.5)
    with pytest.raises(ValueError, match=r"lesion probability -0\.1"):
        LesionModel(probability=-0.1)
    with pytest.raises(ValueError, match="cold contrast range"):
        LesionModel(cold_contrast=(0.5, 1.2))


@pytest.mark.parametrize("p", [1.0 / 3.0, 0.5, 0.8])
def test_thinning_keeps_a_binomial_share(p: float) -> None:
    rng = np.random.default_rng(11)
    for n in (9, 150):
        counts = np.full(200_000, n, dtype=np.uint16)
        kept = thin_counts(counts, rng, p)
        assert kept.dtype == np.uint16
        assert (kept <= counts).all()
        assert kept.mean() == pytest.approx(n * p, rel=0.005)
        assert kept.var() == pytest.approx(n * p * (1.0 - p), rel=0.03)


def test_thinning_refuses_a_probability_outside_0_1() -> None:
    with pytest.raises(ValueError, match=r"thinning probability 1\.5"):
        thin_counts(np.ones(4, dtype=np.uint16), np.random.default_rng(0), 1.5)


def test_gaussian_blur_keeps_counts_and_spreads_by_sigma() -> None:
    image = np.zeros((101, 61), dtype=np.float32)
    image[50, 30] = 1000.0
    blurred = gaussian_blur(image, 2.0)
    assert blurred.sum() == pytest.approx(1000.0, rel=1e-4)
    rows = np.arange(101, dtype=np.float64)
    profile = blurred.sum(axis=1)
    sigma = math.sqrt(float((profile * (rows - 50.0) ** 2).sum() / profile.sum()))
    assert sigma == pytest.approx(2.0, rel=0.02)
