"""Variance-stabilising transform for Poisson counts and its unbiased inverse.

The restoration networks work on Anscombe-transformed counts, where Poisson noise is
close to Gaussian with unit variance whatever the count level (DOMAIN.md §4). The plain
algebraic inverse ``(v / 2) ** 2 - 3 / 8`` is biased at low counts; the closed-form
approximation of the exact unbiased inverse (Mäkitalo & Foi 2011, IEEE TIP 20:2697) maps
the expected value of the transform back to the Poisson mean. :func:`expected_anscombe` is
the forward map, that expected value, which a network trained on a noise-free truth regresses.
"""

from __future__ import annotations

import math
from functools import cache

import torch

__all__ = ["anscombe", "expected_anscombe", "inverse_anscombe_unbiased"]

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


# E[anscombe(X)] is summed exactly over the Poisson law on a grid of means up to this one,
# and taken from its asymptotic series above it (there the series' error is below 1e-6).
_TABLE_MAX_MEAN = 200.0
_TABLE_STEP = 1.0 / 64.0


@cache
def _expected_anscombe_table() -> torch.Tensor:
    means = torch.arange(0.0, _TABLE_MAX_MEAN + _TABLE_STEP / 2, _TABLE_STEP, dtype=torch.float64)
    # Past mean + 12 SD + 30 the Poisson tail holds less than 1e-20 of the mass.
    k = torch.arange(
        0, int(_TABLE_MAX_MEAN + 12 * math.sqrt(_TABLE_MAX_MEAN) + 30), dtype=torch.float64
    )
    log_mean = torch.log(means.clamp(min=1e-300))[:, None]
    log_pmf = k * log_mean - means[:, None] - torch.lgamma(k + 1)
    log_pmf[0, 1:] = -math.inf  # mean 0: all mass at k = 0
    log_pmf[0, 0] = 0.0
    return (torch.exp(log_pmf) * (2.0 * torch.sqrt(k + 0.375))).sum(dim=1)


def _expected_anscombe_series(mean: torch.Tensor) -> torch.Tensor:
    # 2 sqrt(s + D), s = mean + 3/8, D = X - mean, expanded to the sixth central moment of
    # the Poisson law (mu2 = m, mu3 = m, mu4 = 3m^2 + m, mu5 = 10m^2 + m, mu6 = 15m^3 + 25m^2 + m).
    m = mean
    s = m + 0.375
    terms = (
        1.0
        - m / (8.0 * s**2)
        + m / (16.0 * s**3)
        - 5.0 * (3.0 * m**2 + m) / (128.0 * s**4)
        + 7.0 * (10.0 * m**2 + m) / (256.0 * s**5)
        - 21.0 * (15.0 * m**3 + 25.0 * m**2 + m) / (1024.0 * s**6)
    )
    return 2.0 * torch.sqrt(s) * terms


def expected_anscombe(mean: torch.Tensor) -> torch.Tensor:
    """``E[anscombe(X)]`` for ``X ~ Poisson(mean)``: the VST value of noise-free counts.

    A network whose squared-error target is this value learns what it would learn from
    independent Poisson draws of ``mean``, without their noise, and
    :func:`inverse_anscombe_unbiased` maps it back to ``mean``.

    Parameters
    ----------
    mean : torch.Tensor
        Non-negative expected counts, any shape, floating point.

    Returns
    -------
    torch.Tensor
        Same shape and dtype; about 1.22 at zero, ``2 sqrt(mean + 1/8)`` for large means.
    """
    m = mean.detach().to(torch.float64).clamp(min=0.0)
    table = _expected_anscombe_table().to(m.device)
    position = m.clamp(max=_TABLE_MAX_MEAN) / _TABLE_STEP
    lower = position.floor().long().clamp(max=table.numel() - 2)
    fraction = position - lower
    tabulated = table[lower] * (1.0 - fraction) + table[lower + 1] * fraction
    result = torch.where(m > _TABLE_MAX_MEAN, _expected_anscombe_series(m), tabulated)
    return result.to(mean.dtype)
