"""Training data: phantom pairs, thinned DICOM pairs, registered true pairs, their helpers."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from pydicom import dcmread
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from torch.utils.data import DataLoader

from pacs_node.synth import (
    BonePhantom,
    synthetic_patient,
    synthetic_scan_counts,
    synthetic_scan_dataset,
    write_nm,
    write_synthetic_scans,
)
from training.data import (
    PhantomPairs,
    RegisteredDicomPairs,
    ThinnedDicomPairs,
    body_pixels,
    phase_correlation,
    poisson_pair,
    random_crop,
    register_rigid,
    rotate_nearest,
)
from training.data.crops import box_mean, crop_window, hot_pixels
from training.data.targets import expected_target, held_out_target, independent_target

SEED = 11
TENSORS = ("rapid", "standard", "target_vst", "truth", "skeleton")
# Hospital scans have no truth or skeleton mask.
DICOM_SAMPLE_KEYS = {"rapid", "standard", "target_vst", "dose_factor", "frame_long_side", "source"}
ANTERIOR, POSTERIOR = "399321004", "399001007"  # SCT view codes the synthetic writer uses


def _total(sample: dict[str, torch.Tensor | float | str], key: str) -> float:
    value = sample[key]
    assert isinstance(value, torch.Tensor)
    return float(value.double().sum())


def _array(sample: dict[str, torch.Tensor | float | str], key: str) -> npt.NDArray[np.float64]:
    value = sample[key]
    assert isinstance(value, torch.Tensor)
    assert value.dtype == torch.float32 and value.ndim == 3 and value.shape[0] == 1
    return value[0].double().numpy()


# --- phantom pairs ----------------------------------------------------------------------------


def test_phantom_pairs_are_fixed_per_epoch_and_fresh_across_epochs() -> None:
    first, second = PhantomPairs(seed=SEED, length=4), PhantomPairs(seed=SEED, length=4)
    sample = first[1]
    again = second[1]
    for key in TENSORS:
        assert torch.equal(_tensor(sample, key), _tensor(again, key)), key
    assert sample["source"] == f"phantom:seed={SEED}:index=0:view=posterior"
    assert first[0]["source"] == f"phantom:seed={SEED}:index=0:view=anterior"

    first.set_epoch(1)
    later = first[1]
    assert not torch.equal(_tensor(later, "standard"), _tensor(sample, "standard"))
    assert not torch.equal(_tensor(later, "rapid"), _tensor(sample, "rapid"))
    assert torch.equal(_tensor(later, "truth"), _tensor(sample, "truth"))
    assert torch.equal(_tensor(later, "skeleton"), _tensor(sample, "skeleton"))
    first.set_epoch(0)
    assert torch.equal(_tensor(first[1], "rapid"), _tensor(sample, "rapid"))
    with pytest.raises(ValueError, match="epoch -1"):
        first.set_epoch(-1)
    with pytest.raises(IndexError):
        first[4]


def _tensor(sample: dict[str, torch.Tensor | float | str], key: str) -> torch.Tensor:
    value = sample[key]
    assert isinstance(value, torch.Tensor)
    return value


def test_phantom_pairs_show_the_bodies_of_the_synthetic_scans() -> None:
    truth = _array(PhantomPairs(seed=SEED, length=2)[0], "truth")
    counts = synthetic_scan_counts(SEED, 0)[0].astype(np.float64)
    assert abs(counts.sum() - truth.sum()) < 5.0 * np.sqrt(truth.sum())
    assert not counts[truth == 0].any()


def test_thinning_keeps_a_share_p_of_the_counts_and_dose_factor_matches_speed() -> None:
    dataset = PhantomPairs(seed=SEED, length=8, speeds_cm_min=(40, 60))
    factors = set()
    for index in range(len(dataset)):
        sample = dataset[index]
        dose_factor = sample["dose_factor"]
        assert isinstance(dose_factor, float)
        factors.add(dose_factor)
        p = 1.0 / dose_factor
        rapid, standard = _array(sample, "rapid"), _array(sample, "standard")
        assert (rapid <= standard).all()
        assert (rapid == np.round(rapid)).all()
        n = standard.sum()
        assert abs(rapid.sum() - p * n) < 5.0 * np.sqrt(n * p * (1.0 - p))
        truth = _array(sample, "truth")
        lam = truth.sum()
        assert abs(n - lam) < 5.0 * np.sqrt(lam)
        # Phantoms regress the noise-free expectation, never the scan the rapid one came from.
        assert np.array_equal(_array(sample, "target_vst"), expected_target(truth))
    assert factors == {2.0, 3.0}
    assert PhantomPairs(seed=SEED, length=1, speeds_cm_min=(60,))[0]["dose_factor"] == 3.0
    same = PhantomPairs(seed=SEED, length=1, speeds_cm_min=(20,))[0]
    assert same["dose_factor"] == 1.0
    assert torch.equal(_tensor(same, "rapid"), _tensor(same, "standard"))
    with pytest.raises(ValueError, match=r"\[10\]"):
        PhantomPairs(seed=SEED, length=1, speeds_cm_min=(10, 40))


def test_binomial_thinning_of_a_flat_field_has_binomial_variance() -> None:
    p, lam = 1.0 / 3.0, 30.0
    standard, rapid = poisson_pair(np.full((256, 256), lam), p, np.random.default_rng(5))
    s, r = standard.astype(np.float64), rapid.astype(np.float64)
    assert s.var() == pytest.approx(lam, rel=0.05)
    # Thinned Poisson is Poisson(p λ), and independent of the counts thrown away.
    assert r.mean() == pytest.approx(p * lam, rel=0.02)
    assert r.var() == pytest.approx(p * lam, rel=0.05)
    assert (r - p * s).var() == pytest.approx(p * (1.0 - p) * s.mean(), rel=0.05)
    assert abs(np.corrcoef(r.ravel(), (s - r).ravel())[0, 1]) < 0.02


def test_phantom_crops_have_the_asked_size_and_mostly_show_body() -> None:
    dataset = PhantomPairs(seed=SEED, length=20, crop=(128, 64))
    with_body = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        for key in TENSORS:
            assert _tensor(sample, key).shape == (1, 128, 64), key
        assert sample["frame_long_side"] == 1024.0  # the whole frame's, for the SAM prior
        # Body pixels expect >= 0.4 counts, the field outside 0.03.
        with_body += bool((_array(sample, "truth") > 0.3).any())
    assert with_body >= 16
    always = PhantomPairs(seed=SEED, length=10, crop=(64, 64), body_probability=1.0)
    assert all((_array(always[i], "truth") > 0.3).any() for i in range(10))
    moved = PhantomPairs(seed=SEED, length=2, crop=(64, 64))
    before = _array(moved[0], "truth")
    moved.set_epoch(3)
    assert not np.array_equal(before, _array(moved[0], "truth"))
    for bad in ((100, 64), (0, 64), (2048, 64)):
        with pytest.raises(ValueError, match="crop"):
            PhantomPairs(seed=SEED, length=2, crop=bad)


def test_phantom_pairs_collate_in_batches() -> None:
    dataset = PhantomPairs(seed=SEED, length=8, speeds_cm_min=(40, 60), crop=(64, 32))
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    for key in TENSORS:
        assert batch[key].shape == (4, 1, 64, 32)
        assert batch[key].dtype == torch.float32
    assert batch["dose_factor"].shape == (4,)
    assert len(batch["source"]) == 4


def test_random_crop_and_body_pixels() -> None:
    image = np.zeros((64, 48))
    image[40:50, 30:40] = 20.0
    body = body_pixels(image)
    assert body[45, 35] and not body[5, 5]
    rng = np.random.default_rng(0)
    for _ in range(20):
        (cut,) = random_crop([image], (16, 16), rng, body=body, body_probability=1.0)
        assert cut.shape == (16, 16) and cut.any()
    expected = np.ones((5, 5))
    assert box_mean(np.ones((9, 9)), 3)[2:7, 2:7] == pytest.approx(expected)
    assert box_mean(np.ones((9, 9)), 3)[0, 0] == pytest.approx(4.0 / 9.0)


def test_hot_crops_hold_a_hot_pixel_anywhere_in_the_window() -> None:
    image = np.ones((256, 128))
    image[200:203, 20:23] = 1000.0  # an injection site: 9 pixels of 32 768
    hot = hot_pixels(image)
    assert hot.sum() == 9 and not hot_pixels(np.zeros((4, 4))).any()
    rng = np.random.default_rng(0)
    corners = set()
    for _ in range(50):
        rows, cols = crop_window(image.shape, (64, 32), rng, hot=hot, hot_probability=1.0)
        assert hot[rows, cols].any()
        corners.add((rows.start, cols.start))
    assert len(corners) > 25  # the spot lands anywhere in the window, not always mid-crop
    misses = 0
    for _ in range(200):
        rows, cols = crop_window(image.shape, (64, 32), rng, hot=hot, hot_probability=0.5)
        misses += not hot[rows, cols].any()
    assert 60 < misses < 140  # half the crops follow the uniform / body rule
    # At probability 0 the windows are exactly those of a call without hot spots.
    first, second = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(10):
        assert crop_window(image.shape, (64, 32), first, hot=hot) == crop_window(
            image.shape, (64, 32), second
        )
    with pytest.raises(ValueError, match="hot-spot probability"):
        crop_window(image.shape, (64, 32), rng, hot=hot, hot_probability=1.5)


def test_phantom_pairs_hot_crops_show_the_frame_s_hottest_spots() -> None:
    dataset = PhantomPairs(seed=SEED, length=12, crop=(128, 64), hot_probability=1.0)
    for index in range(len(dataset)):
        scan, view = divmod(index, 2)
        peak = float(dataset.render(scan)[view].truth.max())
        assert float(_array(dataset[index], "truth").max()) >= 0.5 * peak
    plain = PhantomPairs(seed=SEED, length=12, crop=(128, 64))
    shown = [
        float(_array(plain[i], "truth").max()) / float(plain.render(i // 2)[i % 2].truth.max())
        for i in range(len(plain))
    ]
    assert min(shown) < 0.5  # body crops alone often miss them
    with pytest.raises(ValueError, match="hot-spot probability"):
        PhantomPairs(seed=SEED, length=2, hot_probability=-0.1)


# --- thinned DICOM pairs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def standard_scans(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_synthetic_scans(
        tmp_path_factory.mktemp("standard"), count=2, seed=SEED, speed_cm_min=20
    )


def test_thinned_dicom_pairs_thin_every_frame(standard_scans: list[Path]) -> None:
    dataset = ThinnedDicomPairs(standard_scans[0].parent, p=0.5, seed=1)
    assert len(dataset) == 4
    frames = [dcmread(path).pixel_array for path in standard_scans]
    for index in range(len(dataset)):
        sample = dataset[index]
        assert set(sample) == DICOM_SAMPLE_KEYS
        assert sample["frame_long_side"] == 1024.0
        standard, rapid = _array(sample, "standard"), _array(sample, "rapid")
        assert np.array_equal(standard, frames[index // 2][index % 2])
        # The target is the held-out remainder, not the scan the rapid one was thinned from.
        assert np.array_equal(_array(sample, "target_vst"), held_out_target(standard, rapid, 2.0))
        assert (rapid <= standard).all()
        n = standard.sum()
        assert abs(rapid.sum() - 0.5 * n) < 5.0 * np.sqrt(0.25 * n)
        assert sample["dose_factor"] == 2.0
        source = sample["source"]
        assert isinstance(source, str)
        assert source.startswith(f"dicom:{standard_scans[index // 2].name}#")
        assert source.endswith(f":frame={index % 2 + 1}")
        assert "SYN-" not in source  # no patient ID
    again = ThinnedDicomPairs(standard_scans, p=0.5, seed=1)
    assert torch.equal(_tensor(again[3], "rapid"), _tensor(dataset[3], "rapid"))
    again.set_epoch(1)
    assert not torch.equal(_tensor(again[3], "rapid"), _tensor(dataset[3], "rapid"))
    assert len(ThinnedDicomPairs(str(standard_scans[0].parent))) == 4  # as an options file says
    third = ThinnedDicomPairs(standard_scans, p=1.0 / 3.0)
    assert third[0]["dose_factor"] == pytest.approx(3.0)


def test_thinned_dicom_pairs_crop_and_collate(standard_scans: list[Path]) -> None:
    dataset = ThinnedDicomPairs(standard_scans[0].parent, crop=(256, 128))
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["rapid"].shape == batch["standard"].shape == (4, 1, 256, 128)
    assert (batch["rapid"] <= batch["standard"]).all()
    with pytest.raises(ValueError, match=r"scan_0001\.dcm: crop"):
        ThinnedDicomPairs(standard_scans, crop=(2048, 128))[0]


def test_thinned_dicom_pairs_skip_or_refuse_other_files(
    standard_scans: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "mixed"
    (folder / "nested").mkdir(parents=True)
    for path in standard_scans:
        shutil.copy(path, folder / "nested" / path.name)
    notes = folder / "notes.txt"
    notes.write_text("not DICOM\n")
    capture = dcmread(standard_scans[0])
    capture.SOPClassUID = capture.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    capture.SOPInstanceUID = capture.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    capture.Modality = "OT"
    capture.save_as(folder / "capture.dcm")

    with caplog.at_level(logging.INFO, logger="training.data"):
        dataset = ThinnedDicomPairs(folder)
    assert len(dataset) == 4
    assert "found 2 NM files (4 frames) among 4 files; skipped 2" in caplog.text
    assert "not a readable DICOM file" in caplog.text
    assert "not an NM Image Storage object" in caplog.text
    assert "SYN-" not in caplog.text and "SYNTHETIC" not in caplog.text

    with pytest.raises(ValueError, match=r"capture\.dcm: not an NM Image Storage object"):
        ThinnedDicomPairs([folder / "capture.dcm"])
    with pytest.raises(ValueError, match=r"notes\.txt: not a readable DICOM file"):
        ThinnedDicomPairs([*standard_scans, notes])
    with pytest.raises(ValueError, match=r"capture\.dcm: not an NM"):  # first in sorted order
        ThinnedDicomPairs(folder, strict=True)


def test_thinned_dicom_pairs_refuse_empty_and_useless_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(f"{empty}: folder holds no files")):
        ThinnedDicomPairs(empty)
    useless = tmp_path / "useless"
    useless.mkdir()
    (useless / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match=re.escape(f"{useless}: no usable NM Image Storage files")):
        ThinnedDicomPairs(useless)
    with pytest.raises(ValueError, match="no such file"):
        ThinnedDicomPairs(tmp_path / "missing")


def test_thinned_dicom_pairs_check_the_standard_speed(
    standard_scans: list[Path], tmp_path: Path
) -> None:
    (fast,) = write_synthetic_scans(tmp_path / "fast", count=1, seed=SEED, speed_cm_min=40)
    with pytest.raises(ValueError, match=r"scan_0001\.dcm: not at the standard scan speed \(40"):
        ThinnedDicomPairs([fast], standard_speed_cm_min=20)
    shutil.copytree(standard_scans[0].parent, tmp_path / "slow")
    dataset = ThinnedDicomPairs(tmp_path, standard_speed_cm_min=20)
    assert len(dataset) == 4
    assert all(header.path.parent.name == "slow" for header in dataset.files)


# --- registered true pairs --------------------------------------------------------------------


def _write_study(
    folder: Path, index: int, shift: tuple[int, int], *, flip_rapid: bool = False
) -> None:
    """A 20 and a 40 cm/min scan of one patient and study, the rapid one moved by ``shift``.

    The rapid counts are an independent Poisson draw at half the level, as a real second
    sweep would be, not a thinning of the standard counts.
    """
    body = synthetic_patient(SEED, index).body
    views = BonePhantom(body).render(np.random.default_rng([SEED, index, 7])).views
    lam = np.stack([views.anterior, views.posterior])
    rng = np.random.default_rng([SEED, index, 8])
    for speed in (20, 40):
        counts = rng.poisson(lam * 20.0 / speed).astype(np.uint16)
        if speed == 40:
            counts = np.roll(counts, shift, axis=(1, 2))
            if flip_rapid:
                counts = counts[:, ::-1].copy()
        ds = synthetic_scan_dataset(SEED, index, speed)
        ds.PixelData = counts.astype("<u2").tobytes()
        ds.CountsAccumulated = int(counts.sum())
        write_nm(folder / f"study{index}_{speed}.dcm", ds)


def _smoothed_correlation(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_]
) -> float:
    return float(np.corrcoef(box_mean(a, 9)[mask], box_mean(b, 9)[mask])[0, 1])


def test_registered_pairs_find_the_shift_between_sweeps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_study(tmp_path, 1, (6, -4))
    (lonely,) = write_synthetic_scans(tmp_path / "lonely", count=1, seed=SEED + 1)
    assert dcmread(lonely).PatientID != dcmread(tmp_path / "study1_20.dcm").PatientID
    with caplog.at_level(logging.INFO, logger="training.data"):
        dataset = RegisteredDicomPairs(tmp_path, max_angle_deg=1.0)
    assert len(dataset) == 2
    assert {pair.view for pair in dataset.pairs} == {ANTERIOR, POSTERIOR}
    for pair in dataset.pairs:
        assert pair.standard.path.name == "study1_20.dcm"
        assert pair.rapid.path.name == "study1_40.dcm"
        assert pair.standard_frame == pair.rapid_frame
        dy, dx = pair.registration.shift
        assert abs(dy + 6) <= 1 and abs(dx - 4) <= 1
        assert pair.dose_factor == 2.0
    assert "1 studies with one speed only" in caplog.text
    assert "shift (-6, 4) px" in caplog.text
    assert "SYN-" not in caplog.text and "SYNTHETIC" not in caplog.text

    unmoved = dcmread(tmp_path / "study1_40.dcm").pixel_array.astype(np.float64)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert set(sample) == DICOM_SAMPLE_KEYS
        assert sample["frame_long_side"] == 1024.0
        assert sample["dose_factor"] == 2.0
        standard, rapid = _array(sample, "standard"), _array(sample, "rapid")
        # A separately acquired standard scan is its own target.
        assert np.array_equal(_array(sample, "target_vst"), independent_target(standard))
        mask = body_pixels(standard)
        frame = dataset.pairs[index].rapid_frame
        after = _smoothed_correlation(standard, rapid, mask)
        before = _smoothed_correlation(standard, unmoved[frame], mask)
        assert after > 0.95 and after > before + 0.1

    cropped = RegisteredDicomPairs(tmp_path, crop=(128, 64), max_angle_deg=0.0)
    batch = next(iter(DataLoader(cropped, batch_size=2)))
    assert batch["rapid"].shape == (2, 1, 128, 64)


def test_registered_pairs_skip_pairs_that_do_not_correlate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_study(tmp_path, 1, (0, 0))
    _write_study(tmp_path, 2, (3, 3), flip_rapid=True)
    with caplog.at_level(logging.INFO, logger="training.data"):
        dataset = RegisteredDicomPairs(tmp_path, max_angle_deg=0.0)
    assert len(dataset) == 2
    assert all(pair.standard.path.name == "study1_20.dcm" for pair in dataset.pairs)
    assert "2 frame pairs that correlate poorly" in caplog.text
    assert "skipping dicom:study2_20.dcm#" in caplog.text


def test_registered_pairs_need_two_speeds(standard_scans: list[Path]) -> None:
    with pytest.raises(ValueError, match=r"no standard/rapid pairs.*2 studies with one speed only"):
        RegisteredDicomPairs(standard_scans[0].parent)


# --- registration helpers ---------------------------------------------------------------------


def test_phase_correlation_undoes_a_roll() -> None:
    rng = np.random.default_rng(2)
    image = box_mean(rng.random((96, 80)), 5)
    moved = np.roll(image, (7, -11), axis=(0, 1))
    assert phase_correlation(image, moved) == (-7, 11)
    assert phase_correlation(image, moved, max_shift=5) != (-7, 11)


def test_rigid_registration_finds_a_small_rotation() -> None:
    lam = PhantomPairs(seed=SEED, length=2).render(0)[0].truth.astype(np.float64)
    rng = np.random.default_rng(3)
    standard = rng.poisson(lam)
    rapid = np.roll(rotate_nearest(rng.poisson(lam / 2.0), 2.0)[0], (4, 2), axis=(0, 1))
    found = register_rigid(standard, rapid, moving_scale=2.0)
    assert found.angle_deg == pytest.approx(-2.0, abs=0.5)
    assert found.correlation > 0.95 > found.correlation_before
