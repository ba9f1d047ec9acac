"""Semantic Knowledge Distillation (SKD): f_IR1 learns what SAM taught f_IR2.

f_IR2 sees SAM's prior through SPI; f_IR1 never does, so that it can run without SAM
(the ``fast`` profile). During training, light 1×1 adapters map f_IR1's decoder features
onto f_IR2's prior-modulated ones, and an L1 loss pulls them together (feature
distillation as in Zhang et al., CVPR 2024). The teacher's features are detached: the
loss moves the student, never the teacher. An output term pulls f_IR1's image towards
f_IR2's. The adapters are used in training only; inference does not run them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SemanticKnowledgeDistillation"]


def _standardise(feature: torch.Tensor) -> torch.Tensor:
    # Per-sample, per-channel standardisation keeps the loss comparable across levels
    # whose activations differ in scale by orders of magnitude.
    mean = feature.mean(dim=(-2, -1), keepdim=True)
    std = feature.std(dim=(-2, -1), keepdim=True)
    return (feature - mean) / (std + 1e-6)


class SemanticKnowledgeDistillation(nn.Module):
    """Feature and output distillation from f_IR2 (teacher) into f_IR1 (student).

    Parameters
    ----------
    student_channels, teacher_channels : sequence of int
        Decoder feature channels of each stage, coarse to fine, one entry per level.
    output_weight : float
        Weight of the image term relative to the mean feature term.
    """

    def __init__(
        self,
        *,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        output_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(
                f"student levels {tuple(student_channels)!r} and teacher levels "
                f"{tuple(teacher_channels)!r} differ in number"
            )
        self.adapters = nn.ModuleList(
            nn.Conv2d(s, t, 1) for s, t in zip(student_channels, teacher_channels, strict=True)
        )
        self.output_weight = output_weight

    def forward(
        self,
        student_features: Sequence[torch.Tensor],
        teacher_features: Sequence[torch.Tensor],
        student_image: torch.Tensor,
        teacher_image: torch.Tensor,
    ) -> torch.Tensor:
        """The SKD loss, a scalar.

        Parameters
        ----------
        student_features, teacher_features : sequence of torch.Tensor
            B×C×H×W decoder features per level, coarse to fine, same spatial sizes.
        student_image, teacher_image : torch.Tensor
            B×1×H×W stage outputs in normalised VST units.
        """
        if len(student_features) != len(self.adapters) or len(teacher_features) != len(
            self.adapters
        ):
            raise ValueError(
                f"expected {len(self.adapters)} feature levels per stage, got "
                f"{len(student_features)} and {len(teacher_features)}"
            )
        feature_loss = torch.stack(
            [
                F.l1_loss(_standardise(adapter(s)), _standardise(t.detach()))
                for adapter, s, t in zip(
                    self.adapters, student_features, teacher_features, strict=True
                )
            ]
        ).mean()
        output_loss = F.l1_loss(student_image, teacher_image.detach())
        return feature_loss + self.output_weight * output_loss
