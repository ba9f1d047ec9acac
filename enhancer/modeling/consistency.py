"""Semantic Consistency Module (SCM): the stages' outputs must read alike to SAM.

A loss over SAM image-encoder features of f_IR1's output, f_IR2's output and the
standard-speed target: each output's features are pulled towards the target's, and the
two stages' features towards each other, so the semantic content stays consistent
across the cascade. SAM is frozen (its parameters take no gradient), but gradients flow
through it into the restoration stages.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SemanticConsistencyLoss", "SemanticEncoder"]


class SemanticEncoder(Protocol):
    """Anything that maps B×1×H×W VST images to B×C×h×w semantic features."""

    def encode(self, vst: torch.Tensor, *, scale: float | None = None) -> torch.Tensor: ...


class SemanticConsistencyLoss(nn.Module):
    """L1 distance between semantic features of stage outputs and the target.

    Parameters
    ----------
    encoder : SemanticEncoder
        The frozen SAM prior (its ``encode`` method); held by reference, not registered
        as a sub-module, so it is not trained or saved twice.
    stage_weights : (float, float)
        Weights of f_IR1's and f_IR2's distance to the target.
    cross_weight : float
        Weight of the distance between the two stages' features.
    """

    def __init__(
        self,
        encoder: SemanticEncoder,
        *,
        stage_weights: tuple[float, float] = (0.5, 1.0),
        cross_weight: float = 0.5,
    ) -> None:
        super().__init__()
        self._encoder = encoder
        self.stage_weights = stage_weights
        self.cross_weight = cross_weight

    def forward(
        self,
        stage1: torch.Tensor,
        stage2: torch.Tensor,
        target: torch.Tensor,
        *,
        scale: float | None = None,
    ) -> torch.Tensor:
        """The SCM loss, a scalar.

        Parameters
        ----------
        stage1, stage2, target : torch.Tensor
            B×1×H×W images in VST units (counts after the Anscombe transform).
        scale : float, optional
            The encoder's pixels per image pixel (crops pass their whole frame's).
        """
        with torch.no_grad():
            target_features = self._encoder.encode(target, scale=scale)
        features1 = self._encoder.encode(stage1, scale=scale)
        features2 = self._encoder.encode(stage2, scale=scale)
        w1, w2 = self.stage_weights
        return (
            w1 * F.l1_loss(features1, target_features)
            + w2 * F.l1_loss(features2, target_features)
            + self.cross_weight * F.l1_loss(features1, features2)
        )
