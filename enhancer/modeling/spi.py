"""Semantic Prior Integration (SPI): SAM's prior modulates f_IR2's decoder features.

The prior is SAM's image embedding on the frame's token grid (1/16 of the resized
frame) and the skeleton-mask logits on the frame grid. A shared 1×1 projection brings
the embedding down to a few channels; at every decoder scale the projected embedding
and the mask probability are resampled to that scale and turned into a per-pixel scale
and shift (spatial feature transform, Wang et al., CVPR 2018, as used for SAM priors by
Zhang et al., CVPR 2024). The last convolution of each head starts at zero, so an
untrained SPI leaves f_IR2 unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SemanticPriorIntegration"]


def resample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of B×C×h×w maps onto an H×W grid covering the same field."""
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False, antialias=True)


class _ModulationHead(nn.Module):
    def __init__(self, prior_channels: int, hidden: int, feature_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(prior_channels, hidden, 3, padding=1),
            nn.GELU(),
        )
        self.to_scale_shift = nn.Conv2d(hidden, 2 * feature_channels, 1)
        nn.init.zeros_(self.to_scale_shift.weight)
        if self.to_scale_shift.bias is not None:
            nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.to_scale_shift(self.body(prior)).chunk(2, dim=1)
        return scale, shift


class SemanticPriorIntegration(nn.Module):
    """Turn a semantic prior into per-scale feature modulation.

    Parameters
    ----------
    embedding_channels : int
        Channels of SAM's embedding (256 for official SAM).
    feature_channels : sequence of int
        Channels of each modulated decoder feature, coarse to fine
        (``RestorationUNet.feature_channels``).
    hidden : int
        Channels of the projected prior.
    """

    def __init__(
        self, *, embedding_channels: int, feature_channels: Sequence[int], hidden: int = 32
    ) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(embedding_channels, hidden, 1), nn.GELU())
        # The mask probability rides along as one more channel.
        self.heads = nn.ModuleList(
            _ModulationHead(hidden + 1, hidden, channels) for channels in feature_channels
        )

    def forward(
        self,
        embedding: torch.Tensor,
        mask_logits: torch.Tensor,
        *,
        sizes: Sequence[tuple[int, int]],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Modulation for each decoder scale.

        Parameters
        ----------
        embedding : torch.Tensor
            B×C×h×w SAM embedding on the token grid of the (padded) frame.
        mask_logits : torch.Tensor
            B×1×H×W skeleton-mask logits on the (padded) frame grid.
        sizes : sequence of (int, int)
            Spatial size of each decoder feature, coarse to fine.

        Returns
        -------
        list of (scale, shift)
            Each B×C_level×H_level×W_level float, one pair per size.
        """
        if len(sizes) != len(self.heads):
            raise ValueError(f"{len(sizes)} sizes for {len(self.heads)} modulated levels")
        projected = self.project(embedding)
        mask = torch.sigmoid(mask_logits)
        modulation = []
        for head, size in zip(self.heads, sizes, strict=True):
            prior = torch.cat([resample(projected, size), resample(mask, size)], dim=1)
            modulation.append(head(prior))
        return modulation
