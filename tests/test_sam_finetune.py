"""SAM fine-tuning for skeleton segmentation: LoRA adapters, the phantom data, the CLI runs."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from segment_anything.modeling import Sam

from enhancer.modeling.sam_checkpoint import SAM_SPECS, build_sam, load_sam_weights
from enhancer.modeling.sam_prior import SamPrior
from enhancer.vst import anscombe
from training.lora import LoRALinear, apply_lora, lora_state_dict, merge_lora
from training.sam_finetune import (
    SkeletonFrames,
    build_trainable_sam,
    load_options,
    main,
    segmentation_loss,
)

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ROOT / "training" / "options"
TINY_OPTIONS = OPTIONS / "sam_tiny.yaml"


def tiny_sam(seed: int) -> Sam:
    """A tiny SAM whose zero-initialised position tables are random, so that they matter."""
    torch.manual_seed(seed)
    sam = build_sam(SAM_SPECS["tiny"])
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
                param.normal_(0.0, 0.5)
    return sam


def body_frames(batch: int = 2, height: int = 128, width: int = 32) -> torch.Tensor:
    """Anscombe-domain frames: a bright body with a brighter spine on a low background."""
    g = torch.Generator().manual_seed(0)
    rate = torch.full((batch, 1, height, width), 0.5)
    rate[:, :, height // 8 : -height // 8, width // 4 : -width // 4] = 30.0
    rate[:, :, height // 8 : -height // 8, width // 2 - 2 : width // 2 + 2] = 120.0
    return anscombe(torch.poisson(rate, generator=g))


def randomise_lora(module: torch.nn.Module, seed: int) -> None:
    """Trained adapters have B != 0; fresh ones change nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("lora_b"):
                param.copy_(torch.randn(param.shape, generator=g) * 0.2)


# --- LoRA -------------------------------------------------------------------------------


def test_lora_linear_starts_as_its_base_and_merges_exactly() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 20)
    x = torch.randn(3, 5, 12)
    expected = base(x)
    layer = LoRALinear(base, rank=4, alpha=8.0)
    assert torch.equal(layer(x), expected)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_a", "lora_b"]
    randomise_lora(layer, 1)
    assert not torch.allclose(layer(x), expected)
    merged = layer.merged()
    assert type(merged) is torch.nn.Linear
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 0, "alpha": 1.0}, "rank 0"),
        ({"rank": 13, "alpha": 1.0}, "rank 13"),
        ({"rank": 2, "alpha": 0.0}, "alpha 0.0"),
        ({"rank": 2, "alpha": 1.0, "dropout": 1.0}, "dropout 1.0"),
    ],
)
def test_lora_linear_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoRALinear(torch.nn.Linear(12, 20), **kwargs)


def test_apply_lora_wraps_every_projection_and_only_adapters_train() -> None:
    sam = tiny_sam(0)
    sam.requires_grad_(False)
    wrapped = apply_lora(sam.image_encoder, rank=2, alpha=4.0)
    depth = SAM_SPECS["tiny"].encoder_depth
    assert wrapped == [f"blocks.{i}.attn.{t}" for i in range(depth) for t in ("qkv", "proj")]
    trainable = [n for n, p in sam.named_parameters() if p.requires_grad]
    assert trainable and all(n.rsplit(".", 1)[-1] in ("lora_a", "lora_b") for n in trainable)
    assert len(trainable) == 2 * len(wrapped)
    assert sorted(lora_state_dict(sam)) == sorted(trainable)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        apply_lora(sam.image_encoder, rank=2, alpha=4.0)
    with pytest.raises(ValueError, match="targets"):
        apply_lora(tiny_sam(0).image_encoder, rank=2, alpha=4.0, targets=("mlp",))


def test_lora_sam_starts_as_the_base_sam() -> None:
    sam = tiny_sam(1)
    vst = body_frames()
    with torch.inference_mode():
        before = SamPrior(sam)(vst)
    apply_lora(sam.image_encoder, rank=2, alpha=4.0)
    with torch.inference_mode():
        after = SamPrior(sam)(vst)
    assert torch.equal(after.embedding, before.embedding)
    assert torch.equal(after.mask_logits, before.mask_logits)


def test_merged_sam_equals_the_lora_sam_and_loads_as_an_official_checkpoint(
    tmp_path: Path,
) -> None:
    sam = tiny_sam(2)
    official_keys = set(sam.state_dict())
    apply_lora(sam.image_encoder, rank=2, alpha=4.0, targets=("qkv", "proj"))
    randomise_lora(sam, 3)
    vst = body_frames()
    with torch.inference_mode():
        adapted = SamPrior(sam)(vst)
    merged_names = merge_lora(sam)
    assert len(merged_names) == 2 * SAM_SPECS["tiny"].encoder_depth
    assert not any(isinstance(m, LoRALinear) for m in sam.modules())
    assert set(sam.state_dict()) == official_keys
    with torch.inference_mode():
        merged = SamPrior(sam)(vst)
    torch.testing.assert_close(merged.embedding, adapted.embedding, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(merged.mask_logits, adapted.mask_logits, rtol=1e-4, atol=1e-4)
    weights = tmp_path / "merged.safetensors"
    save_file(sam.state_dict(), str(weights))
    fresh = build_sam(SAM_SPECS["tiny"])
    load_sam_weights(fresh, weights, variant_name="tiny")
    with torch.inference_mode():
        reloaded = SamPrior(fresh)(vst)
    torch.testing.assert_close(reloaded.mask_logits, merged.mask_logits)


# --- data and loss ----------------------------------------------------------------------


def test_skeleton_frames_are_deterministic_and_match_the_phantom() -> None:
    options = load_options(TINY_OPTIONS, overrides={"data.crop": None})
    frames = SkeletonFrames(options.data, seed=5, scans=3, length=12)
    vst, mask, kind = frames[3]  # posterior view of scan 1
    again = frames[3]
    assert vst.shape == mask.shape == (1, 1024, 256) and vst.dtype == torch.float32
    assert torch.equal(vst, again[0]) and torch.equal(mask, again[1]) and kind == again[2]
    render = frames.render(1)
    assert np.array_equal(mask[0].numpy().astype(bool), render.skeleton_mask[1])
    # The mirrored posterior mask lies on the posterior view's bones: brighter than the
    # rest of the body in the noise-free view.
    clean = anscombe(torch.from_numpy(render.views.posterior.copy()))
    body = torch.from_numpy(render.body_mask[1].copy())
    bone = mask[0].bool()
    assert clean[bone].mean() > clean[body & ~bone].mean() + 1.0


def test_segmentation_loss_is_lowest_for_the_right_mask() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 3:5] = 1.0
    right = segmentation_loss((target * 2 - 1) * 10, target)
    wrong = segmentation_loss((1 - target * 2) * 10, target)
    assert right < 0.01 < 1.0 < wrong


# --- runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The shipped tiny option file run through the CLI (about 10 s on CPU); out_dir, stdout."""
    out = tmp_path_factory.mktemp("sam_tiny")
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert main(["-opt", str(TINY_OPTIONS), "--set", f"out_dir={out}", "--quiet"]) == 0
    return out, stdout.getvalue()


def test_tiny_finetune_lowers_the_loss_and_reports_dice(tiny_run: tuple[Path, str]) -> None:
    out, stdout = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["train"]
    # Each logged loss is already the mean over log_every (5) steps.
    assert train[-1]["loss"] < 0.9 * train[0]["loss"]
    assert 0.0 <= metrics["val_dice"] <= 1.0
    assert metrics["val"][-1]["iteration"] == 30 and metrics["seconds_per_iteration"] > 0
    assert metrics["lora_merge_max_abs_diff"] is None
    assert stdout.splitlines()[-1] == f"val Dice = {metrics['val_dice']:.3f}"


def test_tiny_finetune_writes_weights_that_load_as_a_tiny_sam(tiny_run: tuple[Path, str]) -> None:
    out, _ = tiny_run
    card = json.loads((out / "sam.json").read_text())
    weights = out / card["file"]
    assert card["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["sam_variant"] == "tiny" and card["normalisation"] == "sam"
    assert card["base_checkpoint"] is None and card["lora_merged"] is None
    assert card["training_data"]["seed"] == 1 and card["training_data"]["val_seed"] == 90001
    assert 0.0 <= card["metrics"]["val_dice"] <= 1.0
    sam = build_sam(SAM_SPECS["tiny"])
    load_sam_weights(sam, weights, variant_name="tiny")


def test_lora_finetune_trains_only_adapters_and_decoder(tmp_path: Path) -> None:
    base = tiny_sam(4)
    checkpoint = tmp_path / "sam_tiny_official.pth"
    torch.save(base.state_dict(), checkpoint)
    overrides: dict[str, Any] = {
        "name": "sam_tiny_lora",
        "sam_checkpoint": str(checkpoint),
        "lora": {"rank": 2, "alpha": 4.0},
        "train.iterations": 6,
        "train.log_every": 2,
        "train.val_every": 100,
        "data.val_scans": 1,
        "out_dir": str(tmp_path / "run"),
    }
    options = load_options(TINY_OPTIONS, overrides=copy.deepcopy(overrides))
    sam, wrapped = build_trainable_sam(options)
    assert len(wrapped) == 2 * SAM_SPECS["tiny"].encoder_depth
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert all(n.startswith("mask_decoder.") or n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert any(n.startswith("mask_decoder.") for n in trainable)
    assert any(n.endswith("lora_b") for n in trainable)

    args = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    assert (
        main(["-opt", str(TINY_OPTIONS), "--quiet", *[a for s in args for a in ("--set", s)]]) == 0
    )
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["lora_merge_max_abs_diff"] < 1e-4
    card = json.loads((run / "sam.json").read_text())
    assert card["lora_merged"]["rank"] == 2
    assert card["base_checkpoint"]["file"] == checkpoint.name
    saved = load_file(run / "sam.safetensors")
    before = base.state_dict()
    assert set(saved) == set(before)
    changed = {k for k in before if not torch.equal(saved[k], before[k])}
    # Only the merged projection weights and the mask decoder moved; biases, norms, MLPs,
    # the neck and the prompt encoder are the checkpoint's.
    assert changed
    for key in changed:
        assert key.startswith("mask_decoder.") or (
            key.startswith("image_encoder.blocks.") and key.endswith(("qkv.weight", "proj.weight"))
        ), key
    assert any(k.endswith("attn.qkv.weight") for k in changed)
    load_sam_weights(build_sam(SAM_SPECS["tiny"]), run / "sam.safetensors", variant_name="tiny")


# --- bad options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.learning_rate=0.1"], "train.learning_rate: unknown option"),
        (["train.lr=-0.001"], "train.lr: Input should be greater than 0"),
        (["sam_variant=vit_q"], "sam_variant: Input should be"),
        (["data.crop=[2048, 64]"], "data.crop"),
        (["data.val_seed=1"], "data.val_seed"),
        (["lora={rank: 2, alpha: 2}"], "lora: needs sam_checkpoint"),
        (
            ["sam_checkpoint=/nonexistent/sam_vit_b_01ec64.pth"],
            "sam_checkpoint /nonexistent/sam_vit_b_01ec64.pth does not exist; download the "
            "official checkpoint and set the path",
        ),
    ],
)
def test_bad_options_fail_in_one_line_naming_the_key(
    overrides: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["-opt", str(TINY_OPTIONS), *[a for o in overrides for a in ("--set", o)]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_shipped_lora_options_ask_for_the_official_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the placeholder path is relative: make sure it is absent
    assert main(["-opt", str(OPTIONS / "sam_vit_b_lora.yaml")]) == 2
    err = capsys.readouterr().err
    assert "sam_checkpoint checkpoints/sam_vit_b_01ec64.pth does not exist; download" in err
    # With the file in place the options are valid (the file is only read when training).
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth").write_bytes(b"")
    options = load_options(OPTIONS / "sam_vit_b_lora.yaml")
    assert options.lora is not None and options.sam_variant == "vit_b"
    small = load_options(OPTIONS / "sam_small.yaml")
    assert small.sam_variant == "small" and small.sam_checkpoint is None and small.lora is None


def test_a_checkpoint_of_another_variant_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "tiny.pth"
    torch.save(tiny_sam(0).state_dict(), checkpoint)
    argv = ["-opt", str(TINY_OPTIONS), "--set", "sam_variant=small"]
    assert main([*argv, "--set", f"sam_checkpoint={checkpoint}"]) == 2
    err = capsys.readouterr().err
    assert "is this a tiny checkpoint?" in err and err.count("\n") == 1


def test_module_entry_point_reports_bad_options_with_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_OPTIONS.read_text() + "epochs: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "training.sam_finetune", "-opt", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"finetune-sam: {bad}: epochs: unknown option"
