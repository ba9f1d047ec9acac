"""Evaluation on held-out phantoms: metrics, baselines, perceptual weights, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from models import write_tiny_checkpoint

from enhancer.runtime import Enhancer
from pacs_node.synth import synthetic_scan_counts
from training.evaluate.baselines import (
    Bm3dVst,
    GaussianFilter,
    ModelEstimator,
    ModelSpec,
    RapidRescaled,
    anscombe_np,
    denoise_poisson_vst,
    parse_model_spec,
    tune_gaussian_sigma,
)
from training.evaluate.evaluation import EXPECTED_MODELS
from training.evaluate.heldout import age_band, held_out_scan
from training.evaluate.metrics import (
    count_error,
    disc_mask,
    frechet_distance,
    lesion_contrast,
    psnr,
    ssim,
    ssim_map,
)
from training.evaluate.perceptual import AlexLpips, InceptionFeatures, PerceptualWeightsError
from training.evaluate.run import build_parser, main


def smooth_image(shape: tuple[int, int] = (64, 48), level: float = 20.0) -> np.ndarray:
    """A smooth positive count image: a bright blob on a low background."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    blob = np.exp(-((rows - shape[0] / 2) ** 2 + (cols - shape[1] / 3) ** 2) / 60.0)
    image: np.ndarray = 1.0 + level * blob
    return image


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


# ---------------------------------------------------------------- metrics


def test_psnr_is_infinite_for_identical_images_and_drops_as_noise_grows() -> None:
    truth = smooth_image()
    assert psnr(truth, truth, peak=float(truth.max())) == math.inf
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(truth.shape)
    values = [psnr(truth + s * noise, truth, peak=float(truth.max())) for s in (0.1, 0.5, 2.0)]
    assert values[0] > values[1] > values[2]
    # 10 log10(peak² / σ²) for white noise of σ = 0.5.
    assert values[1] == pytest.approx(10 * math.log10(truth.max() ** 2 / 0.25), abs=0.3)
    mask = np.zeros(truth.shape, dtype=bool)
    mask[:10] = True
    assert psnr(truth + mask, truth, peak=1.0, mask=~mask) == math.inf


def test_ssim_is_one_for_identical_images_falls_with_noise_and_matches_the_formula() -> None:
    truth = smooth_image()
    peak = float(truth.max())
    assert ssim(truth, truth, data_range=peak) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(truth.shape)
    values = [ssim(truth + s * noise, truth, data_range=peak) for s in (0.2, 1.0, 4.0)]
    assert 1.0 > values[0] > values[1] > values[2]
    # Constant images a and b: no structure, SSIM = (2ab + C1) / (a² + b² + C1).
    a, b, data_range = 3.0, 5.0, 10.0
    c1 = (0.01 * data_range) ** 2
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    values_map = ssim_map(np.full((32, 32), a), np.full((32, 32), b), data_range=data_range)
    assert np.allclose(values_map, expected)


def test_frechet_distance_is_zero_for_one_gaussian_and_grows_with_the_mean_shift() -> None:
    rng = np.random.default_rng(2)
    features = rng.standard_normal((4000, 4))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    other = rng.standard_normal((4000, 4))
    shifts = [0.5, 1.0, 2.0]
    distances = [frechet_distance(features, other + s) for s in shifts]
    assert distances[0] < distances[1] < distances[2]
    # |Δμ|² = 4 s² for a shift of s in each of 4 dimensions; covariances nearly agree.
    for shift, distance in zip(shifts, distances, strict=True):
        assert distance == pytest.approx(4 * shift**2, rel=0.1, abs=0.05)
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(features[:1], features)


def test_lesion_contrast_recovers_the_drawn_contrast_of_a_disc() -> None:
    background, radius, centre = 10.0, 6.0, (40.0, 30.0)
    for contrast in (3.0, 0.4):
        image = np.full((80, 60), background)
        image[disc_mask(image.shape, centre, radius)] *= contrast
        measured = lesion_contrast(image, centre, radius)
        assert measured is not None
        assert measured.contrast == pytest.approx(contrast)
        # With Poisson noise the ratio stays close.
        noisy = np.random.default_rng(3).poisson(image * 20) / 20
        measured_noisy = lesion_contrast(noisy, centre, radius)
        assert measured_noisy is not None
        assert measured_noisy.contrast == pytest.approx(contrast, rel=0.05)
    assert lesion_contrast(np.ones((20, 20)), (500.0, 500.0), 3.0) is None


def test_count_error_is_the_relative_total_difference() -> None:
    assert count_error(np.full(10, 1.1), np.ones(10)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="no counts"):
        count_error(np.ones(3), np.zeros(3))


# ---------------------------------------------------------------- baselines


def test_unbiased_inverse_keeps_low_count_totals_where_the_algebraic_one_loses_them() -> None:
    # 0.4 counts per pixel; a perfect denoiser returns E[anscombe(X)] everywhere.
    rng = np.random.default_rng(4)
    counts = rng.poisson(0.4, (256, 256))
    estimate = denoise_poisson_vst(counts, lambda vst, sigma: np.full_like(vst, vst.mean()))
    assert count_error(estimate, np.full(counts.shape, 0.4)) == pytest.approx(0.0, abs=0.02)
    algebraic = (anscombe_np(counts).mean() / 2) ** 2 - 0.375
    assert algebraic / 0.4 - 1 < -0.15  # the plain inverse loses about a quarter


def test_bm3d_and_gaussian_denoise_without_losing_counts() -> None:
    truth = smooth_image((64, 64), level=30.0)
    rng = np.random.default_rng(5)
    rapid = rng.poisson(truth / 2)[None].astype(np.uint16)
    peak = float(truth.max())
    plain = RapidRescaled().estimate(rapid, 2.0)[0]
    assert count_error(plain, 2.0 * rapid[0]) == 0.0
    for method in (Bm3dVst(), GaussianFilter(1.5)):
        estimate = method.estimate(rapid, 2.0)[0]
        assert psnr(estimate, truth, peak=peak) > psnr(plain, truth, peak=peak) + 3.0
        assert count_error(estimate, truth) == pytest.approx(0.0, abs=0.03)
    with pytest.raises(ValueError, match="profile"):
        Bm3dVst(profile="nonsense")


def test_gaussian_sigma_is_tuned_on_the_grid() -> None:
    truth = np.stack([smooth_image((64, 64), level=30.0)] * 2)
    rapid = np.random.default_rng(6).poisson(truth / 2).astype(np.uint16)
    sigma, scores = tune_gaussian_sigma([(rapid, truth)], 2.0, grid=(0.5, 1.5, 8.0))
    assert set(scores) == {0.5, 1.5, 8.0}
    assert scores[sigma] == max(scores.values())
    assert sigma == 1.5


def test_model_specs_parse_names_paths_and_profiles() -> None:
    assert parse_model_spec("cascade=ckpt.safetensors:cascade") == ModelSpec(
        "cascade", Path("ckpt.safetensors"), parse_model_spec("a=b:cascade").profile
    )
    assert parse_model_spec("fast=/x/y.safetensors").profile is None
    assert parse_model_spec("w=C:/m.safetensors:fast").path == Path("C:/m.safetensors")
    for bad in ("nothing", "=x.safetensors", "name="):
        with pytest.raises(ValueError, match="NAME=PATH"):
            parse_model_spec(bad)


def test_a_model_trained_for_another_dose_gets_rescaled_input_and_a_note(
    tiny_checkpoint: Path,
) -> None:
    enhancer = Enhancer.from_checkpoint(tiny_checkpoint, device="cpu", profile="fast")
    method = ModelEstimator("fast", enhancer, tiny_checkpoint)
    rapid = np.random.default_rng(7).poisson(5.0, (1, 32, 32)).astype(np.uint16)
    out = method.estimate(rapid, 2.0)
    assert out.shape == rapid.shape and out.dtype == np.float64 and not method.notes
    method.estimate(rapid, 3.0)
    assert method.notes and "trained for dose factor 2" in method.notes[0]


# ---------------------------------------------------------------- held-out scans


def test_held_out_scans_are_the_synth_commands_scans() -> None:
    scan = held_out_scan(4242, 3, 40)
    assert np.array_equal(scan.standard, synthetic_scan_counts(4242, 3, 20))
    assert np.array_equal(scan.rapid, synthetic_scan_counts(4242, 3, 40))
    assert scan.truth.shape == scan.standard.shape == scan.body_mask.shape
    # The rapid scan rescaled holds the truth's counts within Poisson noise.
    assert count_error(2.0 * scan.rapid, scan.truth) == pytest.approx(0.0, abs=0.01)
    slow = held_out_scan(4242, 3, 60)
    assert slow.rapid.sum() < scan.rapid.sum()
    assert [age_band(a) for a in (0.5, 2.0, 11.9, 12.0, 17.5, 40.0)] == [
        "infant <2",
        "child 2-11",
        "child 2-11",
        "adolescent 12-17",
        "adolescent 12-17",
        "adult 18+",
    ]


# ---------------------------------------------------------------- perceptual weights


def test_lpips_loads_weights_from_paths_and_refuses_wrong_ones(tmp_path: Path) -> None:
    from torchvision.models import alexnet  # type: ignore[import-untyped]

    torch.manual_seed(0)
    trunk = alexnet(weights=None).features
    alex_path = tmp_path / "alexnet.pth"
    torch.save({f"features.{k}": v for k, v in trunk.state_dict().items()}, alex_path)
    channels = (64, 192, 384, 256, 256)
    lin_path = tmp_path / "alex.pth"
    torch.save(
        {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(channels)}, lin_path
    )
    lpips = AlexLpips.from_files(alex_path, lin_path, device=torch.device("cpu"))
    image = smooth_image((96, 64), level=40.0)
    noisy = np.random.default_rng(8).poisson(image).astype(float)
    assert lpips.distance(image, image) == pytest.approx(0.0, abs=1e-6)
    assert lpips.distance(noisy, image) > 0.0
    bad = tmp_path / "bad.pth"
    torch.save({"lin0.model.1.weight": torch.rand(1, 3, 1, 1)}, bad)
    with pytest.raises(PerceptualWeightsError, match="linear layers"):
        AlexLpips.from_files(alex_path, bad, device=torch.device("cpu"))
    with pytest.raises(PerceptualWeightsError, match="not Inception-v3"):
        InceptionFeatures.from_file(alex_path, device=torch.device("cpu"))
    with pytest.raises(PerceptualWeightsError, match="no such"):
        InceptionFeatures.from_file(tmp_path / "missing.pth", device=torch.device("cpu"))


# ---------------------------------------------------------------- the command


def test_bad_options_and_missing_checkpoints_exit_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", str(tmp_path), "--model", "nonsense"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--model", f"x={tmp_path / 'no.safetensors'}"]) == 2
    assert "model card not found" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--count", "0"]) == 2
    assert main(["--out", str(tmp_path), "--lpips-weights", str(tmp_path / "a.pth")]) == 2
    assert "both --alexnet-weights and --lpips-weights" in capsys.readouterr().err
    args = build_parser().parse_args(["--out", "x", "--model", "a=b", "--model", "c=d"])
    assert args.model == ["a=b", "c=d"] and args.speed == 40


@pytest.mark.slow
def test_evaluate_writes_the_report_figures_and_metrics(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    status = main(
        [
            "--out",
            str(out),
            "--count",
            "1",
            "--tune-count",
            "1",
            "--bm3d-frames",
            "1",
            "--device",
            "cpu",
            "--model",
            f"cascade={tiny_checkpoint}:cascade",
            "--model",
            f"fast={tiny_checkpoint}:fast",
        ]
    )
    assert status == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip(" *") for line in report.splitlines() if line.startswith("| **")
    }
    assert {"standard", "rapid", "gaussian", "bm3d", "cascade", "fast"} <= rows
    for missing in ("no-prior", "no-spi", "no-skd", "no-scm"):
        assert f"| **{missing}** | not provided |" in report
    assert "LPIPS: not computed" in report and "FID: not computed" in report
    assert "FD-SAM" in report and "NOT FID" in report
    for target in ("PSNR vs truth ≥", "SSIM vs truth ≥", "above BM3D", "no-prior", "Total counts"):
        assert target in report
    assert "| **not evaluated** |" in report  # no-prior was not given
    for figure in ("examples.png", "error_maps.png", "psnr_by_body_size.png"):
        assert (out / figure).stat().st_size > 1000
        assert f"]({figure})" in report
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert {t["status"] for t in metrics["targets"]} <= {"met", "not met", "not evaluated"}
    assert len(metrics["targets"]) == 7
    assert "above BM3D before rounding" in report and "PSNR truth before rounding" in report
    # Every method is scored on stored counts, and on its estimate before rounding beside.
    for frame in metrics["frames"]:
        if frame["method"] == "standard":
            assert "psnr_truth_unrounded" not in frame["values"]
        elif frame["method"] == "rapid":  # already counts: rounding leaves it as it is
            assert frame["values"]["psnr_truth_unrounded"] == frame["values"]["psnr_truth"]
        else:
            assert frame["values"]["psnr_truth_unrounded"] != frame["values"]["psnr_truth"]
    frames = {(f["method"], f["view"]) for f in metrics["frames"]}
    for name in ("standard", "rapid", "gaussian", "cascade", "fast"):
        assert {(name, "anterior"), (name, "posterior")} <= frames
    assert [f for f in metrics["frames"] if f["method"] == "bm3d"] != []
    assert len([f for f in metrics["frames"] if f["method"] == "bm3d"]) == 1
    provided = {m["name"]: m["provided"] for m in metrics["methods"]}
    assert all(provided[name] is (name in {"cascade", "fast"}) for name in EXPECTED_MODELS)
    # The unbiased pipeline keeps the rescaled rapid input's total: its count error is noise.
    rapid = metrics["summary"]["rapid"]
    assert abs(rapid["count_error_mean"]) < 0.01
