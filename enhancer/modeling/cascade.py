"""The cascade: f_IR1 → SAM prior → f_IR2 with SPI; SKD and SCM train it.

Data flow, all in the Anscombe (VST) domain of counts::

    x = anscombe(dose_factor · rapid)        rescaled rapid scan, noise SD ≈ sqrt(dose_factor)
    v1 = f_IR1(x)                            SAM-free estimate   ── profile "fast"
    prior = SAM(v1)                          embedding + skeleton mask, automatic box prompt
    v2 = f_IR2([v1, x], SPI(prior))          prior-aware refinement ── profile "cascade"

SAM looks at f_IR1's output rather than the rapid scan because a cleaner image gives a
cleaner prior. Both stages predict a residual on their base image in units of
``vst_scale`` so that their activations stay near one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

import torch
from torch import nn

from enhancer.modeling.restoration import Modulation, RestorationUNet
from enhancer.modeling.sam_prior import SamPrior, SemanticPrior
from enhancer.modeling.spi import SemanticPriorIntegration
from enhancer.vst import anscombe

__all__ = ["CascadeModel", "CascadeOutput", "Profile"]


class Profile(StrEnum):
    """Which part of one checkpoint runs at inference."""

    FAST = "fast"  # f_IR1 alone: no SAM, runs on CPU
    CASCADE = "cascade"  # f_IR1, the SAM prior and f_IR2: for GPU workers


class CascadeOutput(NamedTuple):
    """Stage outputs in VST units (B×1×H×W) with the features the losses need."""

    stage1: torch.Tensor
    features1: tuple[torch.Tensor, ...]
    stage2: torch.Tensor | None = None
    features2: tuple[torch.Tensor, ...] = ()
    prior: SemanticPrior | None = None

    @property
    def final(self) -> torch.Tensor:
        """The output of the profile that ran."""
        return self.stage1 if self.stage2 is None else self.stage2


class CascadeModel(nn.Module):
    """Two restoration stages joined by a frozen SAM prior.

    Parameters
    ----------
    stage1 : RestorationUNet
        f_IR1, one input channel.
    stage2 : RestorationUNet
        f_IR2, two input channels (f_IR1's output and the rapid scan).
    prior : SamPrior
        The SAM prior; frozen here (fine-tuning it is a separate training step).
    spi : SemanticPriorIntegration
        Maps the prior to f_IR2's decoder features.
    dose_factor : float
        Standard-speed scan time over rapid scan time (2.0 for 40 vs 20 cm/min).
    vst_scale : float
        VST units per network unit.
    """

    def __init__(
        self,
        *,
        stage1: RestorationUNet,
        stage2: RestorationUNet,
        prior: SamPrior,
        spi: SemanticPriorIntegration,
        dose_factor: float,
        vst_scale: float = 16.0,
    ) -> None:
        super().__init__()
        if not dose_factor > 0:
            raise ValueError(f"dose_factor {dose_factor!r} must be positive")
        if stage1.multiple != stage2.multiple:
            raise ValueError(
                f"stages need frame multiples {stage1.multiple} and {stage2.multiple}; "
                "give them the same number of levels"
            )
        self.stage1 = stage1
        self.stage2 = stage2
        self.prior = prior
        self.spi = spi
        self.dose_factor = float(dose_factor)
        self.vst_scale = float(vst_scale)
        self.prior.requires_grad_(False)

    @property
    def multiple(self) -> int:
        """Frame sides given to :meth:`forward` must be multiples of this."""
        return self.stage1.multiple

    def model_input(self, rapid_counts: torch.Tensor) -> torch.Tensor:
        """``anscombe(dose_factor · counts)``: B×1×H×W float counts → VST units."""
        return anscombe(rapid_counts * self.dose_factor)

    def run_stage1(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """f_IR1 on VST input ``x``; returns its VST output and decoder features."""
        z = x / self.vst_scale
        out = self.stage1(z, base=z)
        return out.image * self.vst_scale, out.features

    def prior_modulation(
        self, stage1: torch.Tensor, *, prior_scale: float | None = None
    ) -> tuple[SemanticPrior, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The SAM prior of f_IR1's output and SPI's modulation for the whole frame.

        ``prior_scale`` is the SAM encoder's pixels per frame pixel; training crops pass their
        whole frame's (see :meth:`SamPrior.forward`).
        """
        prior = self.prior(stage1.detach(), scale=prior_scale)
        h, w = stage1.shape[-2:]
        levels = self.stage2.levels
        sizes = [(h >> (levels - i), w >> (levels - i)) for i in range(levels + 1)]
        return prior, self.spi(prior.embedding, prior.mask_logits, sizes=sizes)

    def run_stage2(
        self, stage1: torch.Tensor, x: torch.Tensor, modulation: Modulation
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """f_IR2 on f_IR1's output and the input, modulated by the prior."""
        z1 = stage1 / self.vst_scale
        z = torch.cat([z1, x / self.vst_scale], dim=1)
        out = self.stage2(z, base=z1, modulation=modulation)
        return out.image * self.vst_scale, out.features

    def forward(
        self,
        x: torch.Tensor,
        *,
        profile: Profile = Profile.CASCADE,
        prior_scale: float | None = None,
    ) -> CascadeOutput:
        """Run one profile.

        Parameters
        ----------
        x : torch.Tensor
            B×1×H×W float, :meth:`model_input` of the rapid counts; H and W multiples of
            :attr:`multiple`.
        profile : Profile
            ``fast`` stops after f_IR1.
        prior_scale : float, optional
            Passed to :meth:`prior_modulation`.

        Returns
        -------
        CascadeOutput
            Estimates of ``E[anscombe(standard-speed counts)]``.
        """
        stage1, features1 = self.run_stage1(x)
        if Profile(profile) is Profile.FAST:
            return CascadeOutput(stage1=stage1, features1=features1)
        prior, modulation = self.prior_modulation(stage1, prior_scale=prior_scale)
        stage2, features2 = self.run_stage2(stage1, x, modulation)
        return CascadeOutput(
            stage1=stage1, features1=features1, stage2=stage2, features2=features2, prior=prior
        )
