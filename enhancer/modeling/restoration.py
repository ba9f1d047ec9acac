"""The restoration stages f_IR1 and f_IR2: a small gated-convolution U-Net.

The backbone follows NAFNet (Chen et al., ECCV 2022): LayerNorm, point-wise and depth-wise
convolutions joined by a multiplicative gate instead of a non-linear activation. It
restores Poisson-noisy images well at a fraction of a transformer's cost, which the CPU
profile needs (about 5 GMACs per 1024×256 frame at width 16). NAFNet's simplified
channel attention pools over the whole image; it is left out so that every output pixel
depends on a bounded neighbourhood, which makes tiled inference exactly equal to a
whole-frame pass when tiles overlap by the receptive field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GatedConvBlock", "Modulation", "RestorationOutput", "RestorationUNet"]

# One (scale, shift) pair per decoder level, coarse to fine, or None for "no prior".
Modulation = Sequence[tuple[torch.Tensor, torch.Tensor]]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of B×C×H×W maps (segment-anything's, with its keys).

    It runs the fused ``layer_norm`` kernel on a channels-last view instead of separate
    mean and variance passes: on the CPU this halves the cost of a block.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def _simple_gate(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=1)
    return first * second


class GatedConvBlock(nn.Module):
    """NAFNet block without global channel attention.

    ``x: B×C×H×W float`` → same shape. The residual scales start at zero, so a fresh block
    is the identity and a deep stack trains from the start.
    """

    def __init__(self, channels: int, *, expansion: int = 2) -> None:
        super().__init__()
        hidden = channels * expansion
        self.norm1 = LayerNorm2d(channels)
        self.expand = nn.Conv2d(channels, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.project = nn.Conv2d(hidden // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.ffn_expand = nn.Conv2d(channels, hidden, 1)
        self.ffn_project = nn.Conv2d(hidden // 2, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.project(_simple_gate(self.depthwise(self.expand(self.norm1(x)))))
        x = x + y * self.beta
        y = self.ffn_project(_simple_gate(self.ffn_expand(self.norm2(x))))
        return x + y * self.gamma


class RestorationOutput(NamedTuple):
    """What a stage returns.

    image: B×1×H×W, the restored image in the stage's normalised VST units.
    features: decoder features, coarse to fine (the middle, then each decoder level),
        after any prior modulation; the distillation loss compares them across stages.
    """

    image: torch.Tensor
    features: tuple[torch.Tensor, ...]


def _blocks(channels: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(GatedConvBlock(channels) for _ in range(count)))


class RestorationUNet(nn.Module):
    """Gated-convolution U-Net that predicts a residual on its base image.

    Parameters
    ----------
    in_channels : int
        Input channels (1 for f_IR1: the rescaled rapid scan; 2 for f_IR2: f_IR1's output
        and the rapid scan).
    width : int
        Channels at full resolution; doubled at each level down.
    encoder_blocks, decoder_blocks : sequence of int
        Blocks per level, fine to coarse for the encoder, coarse to fine for the decoder;
        both have one entry per level.
    middle_blocks : int
        Blocks at the coarsest scale.

    Frames must have H and W divisible by ``2 ** levels`` (:attr:`multiple`); the cascade
    pads them.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        width: int,
        encoder_blocks: Sequence[int],
        middle_blocks: int,
        decoder_blocks: Sequence[int],
    ) -> None:
        super().__init__()
        if len(encoder_blocks) != len(decoder_blocks):
            raise ValueError(
                f"encoder_blocks {tuple(encoder_blocks)!r} and decoder_blocks "
                f"{tuple(decoder_blocks)!r} must have one entry per level each"
            )
        if width < 1:
            raise ValueError(f"width {width!r} must be positive")
        self.levels = len(encoder_blocks)
        self.intro = nn.Conv2d(in_channels, width, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        channels = width
        for count in encoder_blocks:
            self.encoders.append(_blocks(channels, count))
            self.downs.append(nn.Conv2d(channels, channels * 2, 2, stride=2))
            channels *= 2
        self.middle = _blocks(channels, middle_blocks)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.feature_channels: list[int] = [channels]
        for count in decoder_blocks:
            self.ups.append(
                nn.Sequential(nn.Conv2d(channels, channels * 2, 1, bias=False), nn.PixelShuffle(2))
            )
            channels //= 2
            self.decoders.append(_blocks(channels, count))
            self.feature_channels.append(channels)
        self.ending = nn.Conv2d(width, 1, 3, padding=1)

    @property
    def multiple(self) -> int:
        """Frame sides must be multiples of this."""
        return int(2**self.levels)

    def forward(
        self,
        x: torch.Tensor,
        *,
        base: torch.Tensor,
        modulation: Modulation | None = None,
    ) -> RestorationOutput:
        """Restore one batch.

        Parameters
        ----------
        x : torch.Tensor
            B×in_channels×H×W float, normalised VST units (about 0–10, noise SD ≈ 0.06).
        base : torch.Tensor
            B×1×H×W, the image the predicted residual is added to.
        modulation : sequence of (scale, shift), optional
            From :class:`~enhancer.modeling.spi.SemanticPriorIntegration`: one pair per
            decoder feature (``len(feature_channels)``), each broadcastable to that feature.
            Applied as ``f * (1 + scale) + shift`` (spatial feature transform).
        """
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"frame {h}x{w} is not a multiple of {self.multiple} on each side")
        if modulation is not None and len(modulation) != len(self.feature_channels):
            raise ValueError(
                f"{len(modulation)} modulation pairs for {len(self.feature_channels)} levels"
            )
        feature = self.intro(x)
        skips: list[torch.Tensor] = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            feature = encoder(feature)
            skips.append(feature)
            feature = down(feature)
        feature = self.middle(feature)
        features: list[torch.Tensor] = []
        feature = self._modulate(feature, modulation, 0)
        features.append(feature)
        for level, (up, decoder, skip) in enumerate(
            zip(self.ups, self.decoders, reversed(skips), strict=True), start=1
        ):
            feature = decoder(up(feature) + skip)
            feature = self._modulate(feature, modulation, level)
            features.append(feature)
        return RestorationOutput(image=base + self.ending(feature), features=tuple(features))

    @staticmethod
    def _modulate(feature: torch.Tensor, modulation: Modulation | None, level: int) -> torch.Tensor:
        if modulation is None:
            return feature
        scale, shift = modulation[level]
        return feature * (1.0 + scale) + shift
