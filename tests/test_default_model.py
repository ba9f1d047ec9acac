"""The model shipped inside the package: it loads, matches its card, and enhances."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from enhancer.checkpoint import card_path, file_sha256, load_checkpoint
from enhancer.runtime import DEFAULT_WEIGHTS, Enhancer
from pacs_node.synth import write_synthetic_scans
from training.evaluate.heldout import DEFAULT_SEED, held_out_scan
from training.evaluate.metrics import psnr

# Not a scan any option file trains on (training uses seeds 1 and 90001).
SCAN_INDEX = 3


def test_the_shipped_weights_match_their_card() -> None:
    assert DEFAULT_WEIGHTS.is_file(), "no default model in enhancer/weights/"
    card = json.loads(card_path(DEFAULT_WEIGHTS).read_text(encoding="utf-8"))
    assert card["sha256"] == file_sha256(DEFAULT_WEIGHTS)
    assert card["size"] == "small"
    assert set(card["profiles"]) == {"fast", "cascade"}
    assert card["training_data"] and card["metrics"]
    loaded = load_checkpoint(DEFAULT_WEIGHTS)
    assert loaded.card.sha256 == card["sha256"]
    assert (DEFAULT_WEIGHTS.parent / "EVALUATION.md").is_file()


@pytest.mark.parametrize("profile", ["fast", "cascade"])
def test_the_default_model_brings_a_rapid_scan_closer_to_the_truth(profile: str) -> None:
    scan = held_out_scan(DEFAULT_SEED, SCAN_INDEX)
    result = Enhancer.default(device="cpu", profile=profile).enhance_with_qc(scan.rapid)
    enhanced = result.counts
    assert enhanced.shape == scan.rapid.shape and enhanced.dtype == np.uint16
    # On the scale of a standard-speed scan, counts kept: the node would send it.
    assert result.qc.passed, result.qc.reason
    for view in range(2):
        truth = scan.truth[view]
        peak = float(truth.max())
        rapid_psnr = psnr(2.0 * scan.rapid[view], truth, peak=peak)
        enhanced_psnr = psnr(enhanced[view].astype(np.float64), truth, peak=peak)
        assert enhanced_psnr > rapid_psnr + 3.0, (profile, view, rapid_psnr, enhanced_psnr)


def test_pacs_node_enhance_uses_the_default_model_without_a_checkpoint(tmp_path: Path) -> None:
    [scan] = write_synthetic_scans(tmp_path / "in", count=1, seed=5, speed_cm_min=40)
    done = subprocess.run(
        [sys.executable, "-m", "pacs_node.cli", "enhance", str(scan), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    [written] = list((tmp_path / "out").rglob("*.dcm"))
    ds = dcmread(written)
    card = json.loads(card_path(DEFAULT_WEIGHTS).read_text(encoding="utf-8"))
    assert card["version"] in ds.SeriesDescription
    assert ds.pixel_array.shape[-2:] == dcmread(scan).pixel_array.shape[-2:]


def test_a_build_without_the_default_model_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("enhancer.runtime.DEFAULT_WEIGHTS", tmp_path / "default.safetensors")
    with pytest.raises(FileNotFoundError, match="no default model is shipped in this build"):
        Enhancer.default(device="cpu")
