"""The sample every training dataset yields, and the epoch that reseeds its noise.

A sample is one view (frame) of one scan::

    "rapid"        1×H×W float32  counts of the rapid scan
    "standard"     1×H×W float32  counts of the standard-speed scan
    "target_vst"   1×H×W float32  the regression target in VST units: E[it] = E[anscombe(S)] for a
                                  standard scan S ~ Poisson(λ), with noise independent of the
                                  rapid scan's (``training.data.targets``)
    "truth"        1×H×W float32  expected standard-speed counts λ (phantoms only)
    "skeleton"     1×H×W float32  0/1 ground-truth skeleton mask (phantoms only)
    "dose_factor"  float          standard scan time / rapid scan time (1 / p)
    "frame_long_side" float       long side of the whole frame a crop came from (pixels), so
                                  the SAM prior can see a crop at its whole frame's scale
    "source"       str            where it came from; never a patient name or ID

Samples of one dataset have the same keys, so ``torch.utils.data.default_collate`` stacks them
whenever their frames have one size (fix it with a crop).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

__all__ = ["EpochDataset", "Sample", "make_sample"]

Sample = dict[str, torch.Tensor | float | str]


def _plane(image: npt.NDArray[np.generic]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]


def make_sample(
    *,
    rapid: npt.NDArray[np.generic],
    standard: npt.NDArray[np.generic],
    target_vst: npt.NDArray[np.generic],
    dose_factor: float,
    source: str,
    truth: npt.NDArray[np.generic] | None = None,
    skeleton: npt.NDArray[np.generic] | None = None,
    frame_shape: tuple[int, ...] | None = None,
) -> Sample:
    """Pack H×W arrays as a :data:`Sample` (1×H×W float32 tensors).

    Parameters
    ----------
    rapid, standard : ndarray, shape (H, W)
        Counts of the rapid and the standard-speed scan.
    target_vst : ndarray, shape (H, W)
        The training target in VST units, from :mod:`training.data.targets`.
    dose_factor : float
        Standard scan time over rapid scan time, > 0.
    source : str
        Provenance without patient data.
    truth, skeleton : ndarray, shape (H, W), optional
        Expected standard-speed counts and the 0/1 skeleton mask (phantoms).
    frame_shape : tuple of int, optional
        (H, W) of the whole frame when the arrays are a crop of it.

    Returns
    -------
    Sample
    """
    if rapid.shape != standard.shape:
        raise ValueError(f"rapid {rapid.shape!r} and standard {standard.shape!r} differ in shape")
    if target_vst.shape != rapid.shape:
        raise ValueError(f"target {target_vst.shape!r} and rapid {rapid.shape!r} differ in shape")
    if not dose_factor > 0:
        raise ValueError(f"dose factor {dose_factor!r} is not positive")
    sample: Sample = {
        "rapid": _plane(rapid),
        "standard": _plane(standard),
        "target_vst": _plane(target_vst),
    }
    if truth is not None:
        sample["truth"] = _plane(truth)
    if skeleton is not None:
        sample["skeleton"] = _plane(skeleton)
    sample["dose_factor"] = float(dose_factor)
    sample["frame_long_side"] = float(max(frame_shape or rapid.shape))
    sample["source"] = source
    return sample


class EpochDataset(Dataset[Sample]):
    """A dataset whose random draws (noise, crop position) depend on the epoch.

    Item ``i`` is a pure function of the dataset's seed, ``i`` and :attr:`epoch`: evaluation
    keeps epoch 0 and sees the same samples every time; training calls :meth:`set_epoch` at
    the start of each epoch (as with ``DistributedSampler``) and sees fresh noise. DataLoader
    workers hold copies of the dataset, so set the epoch before the loader's iterator is made
    (``persistent_workers=False``, the default).
    """

    _epoch: int = 0

    @property
    def epoch(self) -> int:
        """The epoch whose draws :meth:`__getitem__` returns."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh noise for ``epoch`` (>= 0)."""
        if epoch < 0:
            raise ValueError(f"epoch {epoch!r} is negative")
        self._epoch = int(epoch)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        length = len(self)
        if not -length <= index < length:
            raise IndexError(f"index {index!r} is outside a dataset of {length} samples")
        return index % length
