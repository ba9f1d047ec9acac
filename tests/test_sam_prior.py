"""SAM semantic prior: specs, checkpoints, the frame-grid encoder, prompts and gradients."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import Block

from enhancer.modeling.frame_encoder import crop_rel_pos, encode_frame_grid, global_block_forward
from enhancer.modeling.sam_checkpoint import (
    SAM_SPECS,
    SamCheckpointError,
    build_sam,
    load_sam_weights,
)
from enhancer.modeling.sam_prior import (
    PriorNormalisation,
    SamPrior,
    body_box,
    frame_input_size,
    to_frame_grid,
)
from enhancer.vst import anscombe

TINY = SAM_SPECS["tiny"]


def tiny_sam(seed: int) -> Sam:
    """A tiny SAM whose zero-initialised position tables are random, so that they matter."""
    torch.manual_seed(seed)
    sam = build_sam(TINY)
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
                param.normal_(0.0, 0.5)
    return sam


def frames(batch: int, height: int, width: int, *, seed: int = 0) -> torch.Tensor:
    """Anscombe-domain frames: a bright body rectangle with a brighter spine on low counts."""
    g = torch.Generator().manual_seed(seed)
    rate = torch.full((batch, 1, height, width), 0.5)
    rate[:, :, height // 8 : -height // 8, width // 4 : -width // 4] = 30.0
    rate[:, :, height // 8 : -height // 8, width // 2 - 2 : width // 2 + 2] = 120.0
    return anscombe(torch.poisson(rate, generator=g))


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_official_specs_build_segment_anythings_architecture(variant: str) -> None:
    with torch.device("meta"):
        ours = build_sam(SAM_SPECS[variant]).state_dict()
        theirs = sam_model_registry[variant]().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1024, 256), (1024, 256)), ((2048, 512), (1024, 256)), ((128, 64), (1024, 512))],
)
def test_frame_input_size_keeps_aspect_on_the_patch_grid(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert frame_input_size(*size) == expected


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [((256, 128), 1.0, (256, 128)), ((256, 128), 0.5, (128, 64)), ((128, 64), 100.0, (1024, 512))],
)
def test_frame_input_size_at_a_given_scale_never_exceeds_the_canvas(
    size: tuple[int, int], scale: float, expected: tuple[int, int]
) -> None:
    assert frame_input_size(*size, scale=scale) == expected
    with pytest.raises(ValueError, match=r"scale 0\.0 must be positive"):
        frame_input_size(*size, scale=0.0)


def test_a_crop_at_its_frames_scale_is_encoded_on_its_own_token_grid() -> None:
    prior = SamPrior(tiny_sam(0))
    vst = frames(2, 256, 128)
    with torch.inference_mode():
        native = prior(vst, scale=1.0)
        magnified = prior(vst)
    assert native.embedding.shape[-2:] == (16, 8)
    assert magnified.embedding.shape[-2:] == (64, 32)
    assert native.mask_logits.shape == magnified.mask_logits.shape == (2, 1, 256, 128)
    assert prior.encode(vst, scale=1.0).shape == native.embedding.shape


@pytest.mark.parametrize(
    ("height", "width", "tokens"),
    [(1024, 256, (64, 16)), (2048, 512, (64, 16)), (128, 64, (64, 32))],
)
def test_prior_shapes_on_the_frame_grid(height: int, width: int, tokens: tuple[int, int]) -> None:
    prior = SamPrior(tiny_sam(0))
    vst = frames(2, height, width)
    with torch.inference_mode():
        out = prior(vst)
    assert prior.embed_dim == TINY.prompt_embed_dim
    assert out.embedding.shape == (2, TINY.prompt_embed_dim, *tokens)
    assert out.mask_logits.shape == (2, 1, height, width)
    assert out.box.shape == (2, 4)
    for t in out:
        assert t.dtype == torch.float32
        assert torch.isfinite(t).all()


def test_frame_grid_encoder_equals_official_encoder_on_full_canvas() -> None:
    encoder = tiny_sam(1).image_encoder
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = encode_frame_grid(encoder, x)
        theirs = encoder(x)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_global_attention_crops_relative_position_tables() -> None:
    # An official block built for a 40x12 grid uses its tables without interpolation; given
    # the centre crops of the 64x64 tables it must agree with our global block.
    sam = tiny_sam(2)
    index = TINY.encoder_global_attn_indexes[0]
    big = sam.image_encoder.blocks[index]
    small = Block(
        dim=TINY.encoder_embed_dim,
        num_heads=TINY.encoder_num_heads,
        norm_layer=type(big.norm1),
        use_rel_pos=True,
        window_size=0,
        input_size=(40, 12),
    )
    state = big.state_dict()
    state["attn.rel_pos_h"] = crop_rel_pos(state["attn.rel_pos_h"], 40)
    state["attn.rel_pos_w"] = crop_rel_pos(state["attn.rel_pos_w"], 12)
    small.load_state_dict(state)
    small.norm1.eps = small.norm2.eps = big.norm1.eps
    x = torch.randn(2, 40, 12, TINY.encoder_embed_dim)
    with torch.inference_mode():
        ours = global_block_forward(big, x)
        torch.testing.assert_close(ours, small(x), atol=1e-5, rtol=1e-5)
        # segment_anything's own block interpolates its 127-entry tables instead.
        assert not torch.allclose(ours, big(x), atol=1e-3)


def test_batched_frames_decode_as_single_frames() -> None:
    prior = SamPrior(tiny_sam(3))
    vst = torch.cat([frames(1, 512, 128, seed=1), frames(1, 512, 128, seed=2)])
    vst[1, :, :, :40] = anscombe(torch.zeros(1, 512, 40))  # a different box for frame 1
    with torch.inference_mode():
        both = prior(vst)
        alone = [prior(vst[i : i + 1]) for i in range(2)]
    assert not torch.equal(both.box[0], both.box[1])
    for i, single in enumerate(alone):
        torch.testing.assert_close(both.embedding[i : i + 1], single.embedding)
        torch.testing.assert_close(both.mask_logits[i : i + 1], single.mask_logits)


def _save(sam: Sam, path: Path, wrapper: str | None) -> None:
    state: dict[str, torch.Tensor] = sam.state_dict()
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)


@pytest.mark.parametrize(
    ("name", "wrapper"),
    [
        ("sam.pth", None),
        ("medsam.pth", "model"),
        ("ours.pt", "state_dict"),
        ("sam.safetensors", None),
    ],
)
def test_checkpoint_round_trip_gives_identical_outputs(
    tmp_path: Path, name: str, wrapper: str | None
) -> None:
    source = tiny_sam(4)
    path = tmp_path / name
    _save(source, path, wrapper)
    target = tiny_sam(5)
    vst = frames(1, 256, 64)
    with torch.inference_mode():
        expected = SamPrior(source)(vst)
        before = SamPrior(target)(vst)
        load_sam_weights(target, path, variant_name="tiny")
        after = SamPrior(target)(vst)
    assert not torch.equal(before.embedding, expected.embedding)
    for got, want in zip(after, expected, strict=True):
        assert torch.equal(got, want)


def test_checkpoint_of_another_spec_names_file_key_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    _save(tiny_sam(6), path, None)
    wider = build_sam(dataclasses.replace(TINY, encoder_embed_dim=48))
    with pytest.raises(SamCheckpointError) as err:
        load_sam_weights(wider, path, variant_name="wide")
    message = str(err.value)
    assert str(path) in message
    assert (
        "image_encoder.pos_embed has shape (1, 64, 64, 32) but wide expects (1, 64, 64, 48)"
        in message
    )
    assert "is this a tiny checkpoint?" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    state: dict[str, Any] = tiny_sam(7).state_dict()
    dropped = [k for k in state if k.startswith("mask_decoder.iou_prediction_head")]
    for key in dropped:
        del state[key]
    state["image_encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(SamCheckpointError) as err:
        load_sam_weights(build_sam(TINY), path, variant_name="tiny")
    message = str(err.value)
    assert f"missing keys ({len(dropped)}): {', '.join(dropped[:5])}, ...;" in message
    assert "unexpected keys (1): image_encoder.extra.weight" in message


def test_unusable_files_raise_clear_errors(tmp_path: Path) -> None:
    sam = build_sam(TINY)
    with pytest.raises(SamCheckpointError, match=r"nowhere\.pth: no such checkpoint file"):
        load_sam_weights(sam, tmp_path / "nowhere.pth", variant_name="tiny")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(SamCheckpointError, match=r"list\.pth: holds a list, not a state dict"):
        load_sam_weights(sam, listed, variant_name="tiny")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(SamCheckpointError, match=r"garbage\.pth: cannot be read"):
        load_sam_weights(sam, garbage, variant_name="tiny")


def test_body_box_finds_the_body_on_a_low_noisy_background() -> None:
    g = torch.Generator().manual_seed(8)
    rate = torch.full((2, 1, 1024, 256), 0.5)
    rate[0, :, 100:900, 60:200] = 50.0
    rate[1, :, 30:1000, 10:120] = 50.0
    box = body_box(anscombe(torch.poisson(rate, generator=g)))
    expected = torch.tensor([[60.0, 100.0, 199.0, 899.0], [10.0, 30.0, 119.0, 999.0]])
    assert box.dtype == torch.float32
    assert (box - expected).abs().max() <= 4.0


def test_body_box_is_the_whole_frame_when_nothing_stands_out() -> None:
    box = body_box(anscombe(torch.zeros(1, 1, 64, 32)))
    assert box.tolist() == [[0.0, 0.0, 31.0, 63.0]]


def test_gradients_reach_the_input_through_a_frozen_sam() -> None:
    prior = SamPrior(tiny_sam(9))
    vst = frames(1, 1024, 256).requires_grad_(True)
    torch.autograd.backward(prior.encode(vst).square().mean())
    assert all(not p.requires_grad and p.grad is None for p in prior.parameters())
    assert vst.grad is not None
    assert torch.isfinite(vst.grad).all()
    assert vst.grad.abs().sum() > 0


def test_normalisations() -> None:
    sam = tiny_sam(10)
    vst = frames(2, 2048, 512)
    medsam = SamPrior(sam, normalisation=PriorNormalisation.MEDSAM).preprocess(vst)
    assert medsam.shape == (2, 3, 1024, 256)
    assert medsam.min() >= 0.0
    assert medsam.max() <= 1.0
    assert torch.allclose(medsam.amin(dim=(1, 2, 3)), torch.zeros(2))
    assert torch.allclose(medsam.amax(dim=(1, 2, 3)), torch.ones(2))
    standard = SamPrior(sam).preprocess(vst)
    assert standard.shape == (2, 3, 1024, 256)


def test_sam_window_is_robust_to_hot_pixels() -> None:
    sam = tiny_sam(11)
    prior = SamPrior(sam)
    vst = frames(1, 1024, 256)
    white = torch.quantile(vst.flatten(), 0.995, interpolation="higher")
    expected = ((vst / white).clamp(0, 1) * 255 - sam.pixel_mean) / sam.pixel_std
    torch.testing.assert_close(prior.preprocess(vst), expected)
    hot = vst.clone()
    hot[0, 0, 10, 10] = anscombe(torch.tensor(1e6))  # an injection site, say
    changed = (prior.preprocess(hot) != expected).any(dim=1)
    assert changed.nonzero().tolist() == [[0, 10, 10]]


def test_to_frame_grid_resamples_token_maps() -> None:
    maps = torch.arange(8.0).reshape(1, 1, 4, 2)
    out = to_frame_grid(maps, (64, 32))
    assert out.shape == (1, 1, 64, 32)
    assert to_frame_grid(maps, (4, 2)) is maps
    # Each token covers a 16x16 block; the corner pixels see only their corner token.
    assert out[0, 0, 0, 0] == maps[0, 0, 0, 0]
    assert out[0, 0, -1, -1] == maps[0, 0, -1, -1]
    torch.testing.assert_close(out.mean(), maps.mean())
