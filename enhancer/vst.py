"""Variance-stabilising transform for Poisson counts and its unbiased inverse.

The restoration networks work on Anscombe-transformed counts, where Poisson noise is
close to Gaussian with unit variance whatever the count level (DOMAIN.md §4). The plain
algebraic inverse ``(v / 2) ** 2 - 3 / 8`` is biased at low counts; the closed-form
approximation of the exact unbiased inverse (Mäkitalo & Foi 2011, IEEE TIP 20:2697) maps
the expected value of the transform back to the Poisson mean.
"""

from __future__ import annotations

import math

import torch

__all__ = ["anscombe", "inverse_anscombe_unbiased"]

_SQRT_3_2 = math.sqrt(1.5)
# Below this, the transform of a Poisson variable has expectation >= about 0.8 for any
# mean; smaller values are clamped so the negative powers stay finite.
_MIN_VST = 0.8


def anscombe(counts: torch.Tensor) -> torch.Tensor:
    """Anscombe transform ``2 * sqrt(x + 3/8)``.

    Parameters
    ----------
    counts : torch.Tensor
        Non-negative counts, any shape, floating point.

    Returns
    -------
    torch.Tensor
        Same shape; about 1.22 at zero counts, noise standard deviation about 1.
    """
    return 2.0 * torch.sqrt(counts.clamp(min=0.0) + 0.375)


def inverse_anscombe_unbiased(vst: torch.Tensor) -> torch.Tensor:
    """Closed-form unbiased inverse of :func:`anscombe` (Mäkitalo & Foi 2011, eq. 11).

    Parameters
    ----------
    vst : torch.Tensor
        Estimates of ``E[anscombe(X)]``, any shape, floating point.

    Returns
    -------
    torch.Tensor
        Estimated Poisson means, non-negative, same shape.
    """
    y = vst.clamp(min=_MIN_VST)
    counts = 0.25 * y**2 + 0.25 * _SQRT_3_2 / y - 1.375 / y**2 + 0.625 * _SQRT_3_2 / y**3 - 0.125
    return counts.clamp(min=0.0)
