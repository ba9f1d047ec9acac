"""Feature extractors behind the distribution and perceptual metrics.

``FD-SAM``
    Our own SAM encoder's embeddings (the prior of a cascade checkpoint), mean-pooled per
    frame, compared with :func:`~training.evaluate.metrics.frechet_distance`. It is *not* FID:
    the encoder is ours and its values are comparable only within one run.
``FID``
    Needs pretrained Inception-v3 weights, which no package here ships. With
    ``--inception-weights`` (torchvision's ``inception_v3_google-*.pth``) this module
    builds torchvision's Inception-v3 and takes its 2048-wide pooled features. Those weights
    differ from the TF-Inception port of pytorch-fid, so the numbers are not comparable with
    published FIDs; the report says so.
``LPIPS``
    Zhang et al. 2018 with the AlexNet trunk: needs torchvision's pretrained AlexNet
    (``alexnet-owt-*.pth``) and the LPIPS linear-layer weights (the ``lpips`` package's
    ``weights/v0.1/alex.pth``), both from paths; nothing is downloaded.

Count images become network images through the Anscombe transform divided by a white point
(the 99.5th percentile of a frame's transform, as the SAM prior's preprocessing does),
clipped to [0, 1].
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from enhancer.modeling.sam_prior import SamPrior
from enhancer.vst import anscombe

__all__ = [
    "AlexLpips",
    "InceptionFeatures",
    "PerceptualWeightsError",
    "SamFeatures",
    "unit_image",
    "white_point",
]

FloatArray = npt.NDArray[np.float64]

_WHITE_QUANTILE = 0.995
# Inception-v3's input side, and ImageNet's channel statistics its torchvision weights expect.
_INCEPTION_SIDE = 299
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# LPIPS v0.1's input scaling layer (Zhang et al. 2018, lpips/lpips.py ScalingLayer).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
# AlexNet feature indices after which LPIPS taps relu1..relu5, and their channel counts.
_ALEX_TAPS = (1, 4, 7, 9, 11)
_ALEX_CHANNELS = (64, 192, 384, 256, 256)
_LIN_KEY = re.compile(r"(?:^|\.)lin(\d)\.model\.\d+\.weight$")


class PerceptualWeightsError(ValueError):
    """Pretrained weights that cannot be used; the message names the file and why."""


def _frames_tensor(counts: npt.ArrayLike, device: torch.device) -> torch.Tensor:
    array = np.asarray(counts, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    return torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(1).to(device)


def white_point(vst: torch.Tensor) -> torch.Tensor:
    """The 99.5th percentile of each frame's transform: B×1×H×W → B×1×1×1 (at least 1)."""
    flat = vst.flatten(1)
    k = max(1, int(np.ceil(_WHITE_QUANTILE * flat.shape[1])))
    return flat.kthvalue(k, dim=1).values.clamp(min=1.0).view(-1, 1, 1, 1)


def unit_image(counts: torch.Tensor, white: torch.Tensor | None = None) -> torch.Tensor:
    """Counts (B×1×H×W) → Anscombe transform / white point, clipped to [0, 1].

    Parameters
    ----------
    counts : torch.Tensor
        Float counts.
    white : torch.Tensor, optional
        B×1×1×1 white points in transform units; each frame's own when absent.
    """
    vst = anscombe(counts)
    white = white_point(vst) if white is None else white
    return (vst / white).clamp(0.0, 1.0)


def _torchvision_models() -> Any:
    """``torchvision.models``, imported only when pretrained weights are given (slow import)."""
    import torchvision.models  # type: ignore[import-untyped]

    return torchvision.models


def _load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PerceptualWeightsError(f"{path}: no such {what} weights file") from None
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise PerceptualWeightsError(f"{path}: not a readable {what} state dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PerceptualWeightsError(f"{path}: holds no {what} state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


class SamFeatures:
    """Mean-pooled SAM-encoder embeddings of count frames (for ``FD-SAM``).

    Parameters
    ----------
    prior : SamPrior
        A trained cascade's prior (its encoder is what gets used).
    source : str
        Which checkpoint it came from, for the report.
    batch_size : int
        Frames encoded together.
    """

    def __init__(self, prior: SamPrior, *, source: str, batch_size: int = 2) -> None:
        self.prior = prior.eval()
        self.source = source
        self.batch_size = batch_size
        self.device = next(prior.parameters()).device

    def __call__(self, counts: npt.ArrayLike) -> FloatArray:
        """Counts (F×H×W) → features (F×C) float64."""
        frames = _frames_tensor(counts, self.device)
        pooled = []
        with torch.inference_mode():
            for start in range(0, frames.shape[0], self.batch_size):
                vst = anscombe(frames[start : start + self.batch_size])
                pooled.append(self.prior.encode(vst).float().mean(dim=(2, 3)).cpu())
        out: FloatArray = torch.cat(pooled).double().numpy()
        return out


class InceptionFeatures:
    """2048-wide pooled features of torchvision's Inception-v3 (for FID)."""

    def __init__(self, network: nn.Module, *, source: str, device: torch.device) -> None:
        self.network = network.to(device).eval()
        self.source = source
        self.device = device
        self._mean = torch.tensor(_IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(_IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @classmethod
    def from_file(cls, path: Path, *, device: torch.device) -> InceptionFeatures:
        """Build torchvision's Inception-v3 and load its pretrained state dict from ``path``.

        Raises
        ------
        PerceptualWeightsError
            The file is missing, unreadable or not an Inception-v3 state dict.
        """
        # transform_input: torchvision's pretrained weights were ported from Google's, which
        # expect inputs in [-1, 1]; the flag converts ImageNet-normalised input to that.
        network = _torchvision_models().inception_v3(
            weights=None, aux_logits=True, init_weights=False
        )
        network.transform_input = True
        state = _load_state(path, "Inception-v3")
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise PerceptualWeightsError(f"{path}: not Inception-v3 weights ({first})") from None
        network.fc = nn.Identity()
        return cls(network, source=str(path), device=device)

    def __call__(self, counts: npt.ArrayLike) -> FloatArray:
        """Counts (F×H×W) → features (F×2048) float64; each frame windowed on its own."""
        frames = _frames_tensor(counts, self.device)
        out = []
        with torch.inference_mode():
            for frame in torch.split(frames, 4):
                x = unit_image(frame).expand(-1, 3, -1, -1)
                x = F.interpolate(
                    x, size=(_INCEPTION_SIDE, _INCEPTION_SIDE), mode="bilinear", antialias=True
                )
                features = self.network((x - self._mean) / self._std)
                out.append(features.float().cpu())
        result: FloatArray = torch.cat(out).double().numpy()
        return result


class AlexLpips(nn.Module):
    """LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018).

    Parameters
    ----------
    features : nn.Sequential
        torchvision AlexNet's ``features`` with pretrained weights.
    lins : sequence of torch.Tensor
        The five non-negative 1×C×1×1 linear-layer weights.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, features: nn.Sequential, lins: list[torch.Tensor], *, source: str) -> None:
        super().__init__()
        if len(lins) != len(_ALEX_TAPS):
            raise ValueError(f"LPIPS needs {len(_ALEX_TAPS)} linear layers, got {len(lins)}")
        self.features = features
        self.source = source
        for index, weight in enumerate(lins):
            self.register_buffer(f"lin{index}", weight.float(), persistent=False)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @classmethod
    def from_files(cls, alexnet: Path, linear: Path, *, device: torch.device) -> AlexLpips:
        """AlexNet trunk from torchvision's state dict, linear layers from the lpips file.

        Raises
        ------
        PerceptualWeightsError
            Either file is missing, unreadable or of the wrong shape.
        """
        trunk = _torchvision_models().alexnet(weights=None).features
        state = _load_state(alexnet, "AlexNet")
        trunk_state = {
            k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
        }
        try:
            trunk.load_state_dict(trunk_state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise PerceptualWeightsError(f"{alexnet}: not AlexNet weights ({first})") from None
        lins: dict[int, torch.Tensor] = {}
        for key, value in _load_state(linear, "LPIPS linear-layer").items():
            match = _LIN_KEY.search(key)
            if match:
                lins[int(match.group(1))] = value
        shapes = [tuple(lins[i].shape) if i in lins else None for i in range(len(_ALEX_TAPS))]
        expected = [(1, c, 1, 1) for c in _ALEX_CHANNELS]
        if shapes != expected:
            raise PerceptualWeightsError(
                f"{linear}: LPIPS AlexNet linear layers should have shapes {expected}, "
                f"found {shapes}"
            )
        model = cls(trunk, [lins[i] for i in range(len(_ALEX_TAPS))], source=str(linear))
        return model.to(device)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _ALEX_TAPS:
                # Unit length along channels, as lpips.normalize_tensor.
                taps.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
            if index == _ALEX_TAPS[-1]:
                break
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distances (B,) between B×3×H×W images in [-1, 1]."""
        total = torch.zeros(a.shape[0], device=a.device)
        taps_a = self._taps((a - self.shift) / self.scale)
        taps_b = self._taps((b - self.shift) / self.scale)
        for index, (fa, fb) in enumerate(zip(taps_a, taps_b, strict=True)):
            weight = cast(torch.Tensor, getattr(self, f"lin{index}"))
            total = total + F.conv2d((fa - fb) ** 2, weight).mean(dim=(1, 2, 3))
        return total

    def distance(self, estimate: npt.ArrayLike, reference: npt.ArrayLike) -> float:
        """LPIPS between two count frames (H×W), windowed on the reference's white point."""
        device = self.shift.device
        est = _frames_tensor(estimate, device)
        ref = _frames_tensor(reference, device)
        with torch.inference_mode():
            white = white_point(anscombe(ref))
            a = unit_image(est, white).expand(-1, 3, -1, -1) * 2.0 - 1.0
            b = unit_image(ref, white).expand(-1, 3, -1, -1) * 2.0 - 1.0
            return float(self(a, b)[0])
