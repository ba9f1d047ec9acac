"""The restoration stages, SPI, SKD, SCM, the cascade, the registry and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from models import randomise, tiny_cascade

from enhancer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from enhancer.modeling.cascade import CascadeModel, Profile
from enhancer.modeling.consistency import SemanticConsistencyLoss
from enhancer.modeling.distillation import SemanticKnowledgeDistillation
from enhancer.modeling.registry import (
    build_cascade_small,
    cascade_configs,
    cascade_model_registry,
)
from enhancer.modeling.restoration import GatedConvBlock, RestorationUNet
from enhancer.modeling.spi import SemanticPriorIntegration
from enhancer.vst import anscombe, inverse_anscombe_unbiased


def test_unbiased_inverse_anscombe_recovers_poisson_means_where_the_algebraic_one_fails() -> None:
    means = torch.tensor([0.5, 1.0, 2.0, 5.0, 20.0, 100.0])
    samples = torch.poisson(means.repeat(200_000, 1), generator=torch.Generator().manual_seed(1))
    expected_vst = anscombe(samples).mean(dim=0)
    unbiased = inverse_anscombe_unbiased(expected_vst)
    algebraic = (expected_vst / 2) ** 2 - 0.375
    assert torch.allclose(unbiased, means, rtol=0.03, atol=0.03)
    # The plain inverse is >10 % low at small means: the reason for the unbiased one.
    assert ((means[:3] - algebraic[:3]) / means[:3]).min() > 0.1


def test_a_fresh_gated_block_is_the_identity_and_a_trained_one_is_not() -> None:
    block = GatedConvBlock(8)
    x = torch.randn(2, 8, 16, 12)
    assert torch.equal(block(x), x)
    randomise(block, 0)
    assert block(x).shape == x.shape
    assert not torch.allclose(block(x), x)


def test_unet_shapes_features_and_multiple() -> None:
    net = RestorationUNet(
        in_channels=2, width=8, encoder_blocks=(1, 1, 1), middle_blocks=1, decoder_blocks=(1, 1, 1)
    )
    x = torch.randn(3, 2, 64, 24)
    out = net(x, base=x[:, :1])
    assert out.image.shape == (3, 1, 64, 24)
    assert [f.shape[1:] for f in out.features] == [
        (64, 8, 3),
        (32, 16, 6),
        (16, 32, 12),
        (8, 64, 24),
    ]
    assert net.feature_channels == [64, 32, 16, 8]
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.randn(1, 2, 60, 24), base=torch.randn(1, 1, 60, 24))


def test_spi_starts_as_the_identity_and_modulates_once_trained() -> None:
    net = RestorationUNet(
        in_channels=1, width=8, encoder_blocks=(1, 1), middle_blocks=1, decoder_blocks=(1, 1)
    )
    randomise(net, 0)
    spi = SemanticPriorIntegration(embedding_channels=16, feature_channels=net.feature_channels)
    embedding, mask = torch.randn(2, 16, 4, 2), torch.randn(2, 1, 64, 32)
    sizes = [(16, 8), (32, 16), (64, 32)]
    x = torch.randn(2, 1, 64, 32)
    modulation = spi(embedding, mask, sizes=sizes)
    assert [tuple(s.shape) for s, _ in modulation] == [
        (2, 32, 16, 8),
        (2, 16, 32, 16),
        (2, 8, 64, 32),
    ]
    assert torch.equal(net(x, base=x, modulation=modulation).image, net(x, base=x).image)
    randomise(spi, seed=3)
    modulated = net(x, base=x, modulation=spi(embedding, mask, sizes=sizes)).image
    assert not torch.allclose(modulated, net(x, base=x).image)


@pytest.fixture
def tiny() -> CascadeModel:
    return tiny_cascade()


def test_skd_and_scm_gradients_reach_both_stages_while_sam_stays_frozen(tiny: CascadeModel) -> None:
    tiny.train()
    x = anscombe(torch.poisson(torch.full((2, 1, 64, 32), 20.0)))
    target = anscombe(torch.poisson(torch.full((2, 1, 64, 32), 20.0)))
    out = tiny(x, profile=Profile.CASCADE)
    assert out.stage2 is not None
    skd = SemanticKnowledgeDistillation(
        student_channels=tiny.stage1.feature_channels, teacher_channels=tiny.stage2.feature_channels
    )
    scm = SemanticConsistencyLoss(tiny.prior)
    for name, loss in (
        ("skd", skd(out.features1, out.features2, out.stage1, out.stage2)),
        ("scm", scm(out.stage1, out.stage2, target)),
    ):
        tiny.zero_grad()
        loss.backward(retain_graph=True)
        stage1_grad = sum(
            p.grad.abs().sum() for p in tiny.stage1.parameters() if p.grad is not None
        )
        assert stage1_grad > 0, name
        assert all(not p.requires_grad for p in tiny.prior.parameters()), name
        assert all(p.grad is None for p in tiny.prior.parameters()), name
        if name == "scm":
            stage2_grad = sum(
                p.grad.abs().sum() for p in tiny.stage2.parameters() if p.grad is not None
            )
            assert stage2_grad > 0
        else:
            # The teacher is detached: distillation never moves f_IR2.
            assert all(p.grad is None or not p.grad.any() for p in tiny.stage2.parameters())


def test_both_profiles_run_from_one_checkpoint(tiny: CascadeModel, tmp_path: Path) -> None:
    weights = tmp_path / "tiny.safetensors"
    card = save_checkpoint(tiny, cascade_configs["tiny"], weights, name="tiny-test", version="0.1")
    assert json.loads((tmp_path / "tiny.json").read_text())["sha256"] == card.sha256
    loaded = load_checkpoint(weights)
    x = anscombe(torch.rand(1, 1, 64, 32) * 30)
    with torch.no_grad():
        fast = loaded.model(x, profile=Profile.FAST)
        cascade = loaded.model(x, profile="cascade")  # type: ignore[arg-type]
        reference = tiny.eval()(x, profile=Profile.CASCADE)
    assert fast.stage2 is None and cascade.stage2 is not None
    assert torch.equal(fast.stage1, cascade.stage1)
    torch.testing.assert_close(cascade.final, reference.final)
    assert not torch.allclose(cascade.final, fast.final)
    assert isinstance(cascade_model_registry["tiny"](weights), CascadeModel)


def test_a_fast_only_checkpoint_has_no_sam_and_refuses_the_cascade(
    tiny: CascadeModel, tmp_path: Path
) -> None:
    weights = tmp_path / "fast.safetensors"
    save_checkpoint(
        tiny, cascade_configs["tiny"], weights, name="f", version="1", profiles=(Profile.FAST,)
    )
    load_checkpoint(weights, profile=Profile.FAST)
    with pytest.raises(CheckpointError, match="serves profiles \\['fast'\\], not 'cascade'"):
        load_checkpoint(weights, profile=Profile.CASCADE)


def test_sha256_mismatch_is_refused_naming_the_file(tiny: CascadeModel, tmp_path: Path) -> None:
    weights = tmp_path / "m.safetensors"
    save_checkpoint(tiny, cascade_configs["tiny"], weights, name="m", version="1")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"m\.safetensors: sha256 is [0-9a-f]{64} but"):
        load_checkpoint(weights)


def test_wrong_size_and_wrong_shapes_are_refused(tiny: CascadeModel, tmp_path: Path) -> None:
    weights = tmp_path / "m.safetensors"
    save_checkpoint(tiny, cascade_configs["tiny"], weights, name="m", version="1")
    with pytest.raises(CheckpointError, match="holds a 'tiny' cascade, not 'small'"):
        build_cascade_small(weights)
    # A card that claims the small size for tiny weights: shapes cannot match.
    card_file = tmp_path / "m.json"
    card = json.loads(card_file.read_text())
    card["size"], card["sam_variant"] = "small", "small"
    card["architecture"] = cascade_configs["small"].to_dict()
    card_file.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"m\.safetensors: .*has shape \(\d+, .* expects"):
        load_checkpoint(weights)
    # An architecture in the card that the registry's size does not have.
    card["architecture"] = {**cascade_configs["tiny"].to_dict(), "size": "small"}
    card["size"], card["sam_variant"] = "small", "small"
    card_file.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="in the card but"):
        load_checkpoint(weights)


def test_missing_card_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.safetensors")
    (tmp_path / "lonely.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="model card not found"):
        load_checkpoint(tmp_path / "lonely.safetensors")


def test_our_layer_norm_matches_segment_anythings_in_either_memory_format() -> None:
    from segment_anything.modeling.common import LayerNorm2d as SamLayerNorm2d

    from enhancer.modeling.restoration import LayerNorm2d

    ours, theirs = LayerNorm2d(6), SamLayerNorm2d(6)
    randomise(theirs, 4)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 6, 10, 7) * 3 + 1
    torch.testing.assert_close(ours(x), theirs(x))
    channels_last = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(channels_last), theirs(x))
