"""Cascade training: option files, a tiny run that learns, exact resume, the CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from enhancer.checkpoint import load_checkpoint
from enhancer.runtime import Enhancer
from pacs_node.synth import synthetic_scan_counts
from training.config import OptionsError, load_options
from training.data.targets import expected_target
from training.data_registry import build_dataset
from training.train import _pixel_weights, build_model, seed_everything, train, validate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "options" / "tiny.yaml"


def _quick(tmp_path: Path, **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "out_dir": str(tmp_path / "run"),
        "train.iterations": 12,
        "train.checkpoint_every": 6,
        "train.val_every": 12,
        "train.log_every": 2,
        "data.train.length": 16,
        "data.train.crop": [64, 32],
        "data.val.length": 1,
        "data.val.crop": [128, 64],
    }
    return base | overrides


def test_the_tiny_option_file_validates() -> None:
    options = load_options(TINY)
    assert options.model.size == "tiny"
    assert options.train.iterations > 0
    assert options.data.train["type"] == "PhantomPairs"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train.lr": -1}, "train.lr: Input should be greater than 0"),
        ({"train.colour": "red"}, "train.colour: unknown option"),
        ({"model.size": "huge"}, "model.size: Input should be 'tiny', 'small' or 'base'"),
        ({"data.train": {"seed": 1}}, "data.train: Value error, needs a 'type'"),
    ],
)
def test_bad_options_name_the_file_and_key(override: dict[str, object], message: str) -> None:
    with pytest.raises(OptionsError, match="tiny.yaml: .*" + message.replace("(", r"\(")):
        load_options(TINY, overrides=override)


def test_a_tiny_run_lowers_the_loss_and_resumes_exactly(tmp_path: Path) -> None:
    options_a = load_options(TINY, overrides=_quick(tmp_path / "a"))
    # The run's starting point: train() seeds, then builds the model the same way.
    seed_everything(options_a.train.seed)
    untrained = validate(
        build_model(options_a),
        build_dataset(options_a.data.val or {}, where="data.val"),
        torch.device("cpu"),
        cascade=True,
    )
    straight = train(options_a, progress=False)
    assert straight is not None
    # Held-out loss, as PSNR of expected counts against the truth: both profiles gain.
    for profile in ("fast", "cascade"):
        key = f"val_psnr_{profile}"
        assert straight.metrics[key] > untrained[key] + 1.0, (straight.metrics, untrained)
    rows = list(csv.DictReader((tmp_path / "a" / "run" / "curves.csv").open()))
    assert len([r for r in rows if r.get("loss_total")]) >= 4
    assert straight.curves.is_file() and straight.curves.stat().st_size > 0
    assert straight.metrics["val_psnr_rapid"] == pytest.approx(untrained["val_psnr_rapid"])

    # Stop half way (the state is saved at 6), then resume to the end.
    options_b = load_options(TINY, overrides=_quick(tmp_path / "b"))
    assert train(options_b, progress=False, stop_after=6) is None
    state = torch.load(options_b.out_dir / "training_state.pt", weights_only=False)
    assert state["iteration"] == 6
    resumed = train(options_b, progress=False)
    assert resumed is not None
    a, b = load_file(str(straight.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_the_trained_checkpoint_serves_both_profiles(tmp_path: Path) -> None:
    result = train(load_options(TINY, overrides=_quick(tmp_path)), progress=False)
    assert result is not None
    loaded = load_checkpoint(result.weights)
    assert loaded.card.sha256 == result.card.sha256
    assert result.weights.stat().st_mode & 0o044 == 0o044  # others may read (safetensors: 0600)
    assert set(loaded.card.profiles) == {"fast", "cascade"}
    assert "PhantomPairs" in loaded.card.training_data
    assert "independent of the rapid scan" in loaded.card.training_data
    rapid = synthetic_scan_counts(3, 0, speed_cm_min=40)
    for profile in ("fast", "cascade"):
        counts = Enhancer.from_checkpoint(result.weights, device="cpu", profile=profile).enhance(
            rapid
        )
        assert counts.shape == rapid.shape


def test_the_no_prior_ablation_ships_a_fast_only_model(tmp_path: Path) -> None:
    overrides = _quick(tmp_path, **{"losses.cascade": False, "train.iterations": 4})
    result = train(load_options(TINY, overrides=overrides), progress=False)
    assert result is not None
    assert result.card.profiles == ("fast",)
    assert "val_psnr_cascade" not in result.metrics


def test_count_weights_follow_the_target_s_counts() -> None:
    lam = torch.tensor([0.0, 50.0, 1000.0], dtype=torch.float64)
    target = torch.as_tensor(expected_target(lam.numpy()), dtype=torch.float64)
    weights = _pixel_weights(target, 50.0)
    assert weights is not None
    # 1 + λ / 50, within the algebraic inverse's error (about 1/8 count, and 0 -> ~0.1).
    torch.testing.assert_close(weights, 1.0 + lam / 50.0, atol=0.01, rtol=0.002)
    assert _pixel_weights(target, None) is None


def test_a_run_with_hot_crops_and_count_weights_trains(tmp_path: Path) -> None:
    overrides = _quick(
        tmp_path,
        **{
            "losses.count_reference": 20.0,
            "data.train.hot_probability": 0.5,
            "train.iterations": 4,
            "train.val_every": 4,
        },
    )
    options = load_options(TINY, overrides=overrides)
    assert options.losses.count_reference == 20.0
    result = train(options, progress=False)
    assert result is not None
    rows = list(csv.DictReader((tmp_path / "run" / "curves.csv").open()))
    losses = [float(r["loss_total"]) for r in rows if r.get("loss_total")]
    assert losses and all(0.0 < value < float("inf") for value in losses)
    with pytest.raises(OptionsError, match=r"losses\.count_reference"):
        load_options(TINY, overrides={"losses.count_reference": 0})


def test_the_cli_reports_bad_options_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {iterations: 0}\ndata: {train: {type: Nope}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "training", "train", "-opt", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "train.iterations: Input should be greater than 0" in done.stderr
