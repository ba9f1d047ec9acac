"""Training targets in VST units whose noise is independent of the rapid scan's.

The cascade regresses ``E[anscombe(S)]`` for a standard-speed scan ``S ~ Poisson(λ)``, which
:func:`~enhancer.vst.inverse_anscombe_unbiased` maps back to λ. A rapid scan made by thinning
``S`` is part of ``S``: ``S = rapid + remainder``. Regressing ``anscombe(S)`` itself would
teach the network ``E[S | rapid] = rapid + (1 - p) λ``, that is to keep a share of the rapid
scan's noise, so no dataset may use the ``S`` it thinned as its target. Each kind of data
has its own unbiased target instead:

- :func:`expected_target`: a phantom's truth λ, noise-free.
- :func:`independent_target`: a standard scan acquired apart from the rapid one (a site's
  true pairs); its noise is independent of the rapid scan's.
- :func:`held_out_target`: a thinned hospital scan's remainder ``S - rapid``, which is
  Poisson(``(1 - p) λ``) and independent of the rapid part (DOMAIN.md §4).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from enhancer.vst import anscombe, expected_anscombe

__all__ = ["expected_target", "held_out_target", "independent_target"]


def _vst(values: torch.Tensor) -> npt.NDArray[np.float32]:
    return values.numpy().astype(np.float32)


def expected_target(truth: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """``E[anscombe(Poisson(truth))]``, for data with a noise-free truth."""
    return _vst(expected_anscombe(torch.from_numpy(np.asarray(truth, dtype=np.float64))))


def independent_target(standard: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """``anscombe(standard)``, for a standard scan acquired apart from the rapid scan."""
    return _vst(anscombe(torch.from_numpy(np.asarray(standard, dtype=np.float64))))


def held_out_target(
    standard: npt.NDArray[np.generic],
    rapid: npt.NDArray[np.generic],
    dose_factor: float,
) -> npt.NDArray[np.float32]:
    """The VST target of the counts that thinning ``standard`` left out of ``rapid``.

    The remainder ``R = standard - rapid`` is Poisson(``(1 - p) λ``) with ``p = 1 /
    dose_factor``; ``Z = R / (1 - p)`` has mean λ but variance ``λ / (1 - p)``, above the
    standard scan's λ, and ``E[anscombe(Z)]`` falls below ``E[anscombe(S)]`` by about
    ``(var - λ) / (4 (λ + 3/8)^{3/2})`` (second-order delta method). That term is added back
    with λ estimated by ``Z``, which leaves a bias of a few hundredths of a VST unit only
    below a few counts per pixel.

    Parameters
    ----------
    standard, rapid : ndarray, shape (H, W)
        The standard scan and its thinning (``rapid <= standard``).
    dose_factor : float
        ``1 / p``, above 1.
    """
    if not dose_factor > 1:
        raise ValueError(f"dose factor {dose_factor!r} leaves no counts to hold out")
    p = 1.0 / dose_factor
    remainder = np.asarray(standard, dtype=np.float64) - np.asarray(rapid, dtype=np.float64)
    if (remainder < 0).any():
        raise ValueError("the rapid scan holds more counts than the scan it was thinned from")
    z = torch.from_numpy(remainder / (1.0 - p))
    excess_variance = z * (p / (1.0 - p))
    correction = excess_variance / (4.0 * (z + 0.375) ** 1.5)
    return _vst(anscombe(z) + correction)
