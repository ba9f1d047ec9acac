"""Inference runtime: rapid-scan counts in, standard-speed counts and a QC verdict out.

``Enhancer.from_checkpoint(path, device="auto", profile="fast")`` loads a model once per
process (later calls with the same file, device and profile return the same object) and
``enhance(frames)`` runs it on a uint16 [frames, H, W] array of counts. Frames of any
size are reflect-padded to the U-Net's multiple; frames above ``max_tile_pixels`` are
run in tiles with margins of the measured receptive field, which gives the same result
as a whole-frame pass.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from enhancer.checkpoint import ModelCard, load_checkpoint
from enhancer.modeling.cascade import CascadeModel, Profile
from enhancer.modeling.restoration import RestorationUNet
from enhancer.qc import QcReport, check_count_fidelity
from enhancer.tiling import receptive_radius, run_tiled
from enhancer.vst import inverse_anscombe_unbiased

__all__ = [
    "EnhancementResult",
    "Enhancer",
    "EnhancerInputError",
    "resolve_device",
    "round_counts",
    "tune_cpu_allocator",
]

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).with_name("weights") / "default.safetensors"
_UINT16_MAX = float(np.iinfo(np.uint16).max)
_MIN_SIDE = 16
_cache: dict[tuple[str, str, str, bool], Enhancer] = {}
_cache_lock = threading.Lock()


class EnhancerInputError(ValueError):
    """Frames the enhancer cannot take; the message says which and why."""


@dataclass(frozen=True)
class EnhancementResult:
    """Enhanced counts with their QC report and provenance."""

    counts: np.ndarray  # uint16 [frames, H, W], standard-speed scale
    qc: QcReport
    seconds: float
    profile: Profile
    device: str
    model_name: str
    model_version: str
    model_sha256: str


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; anything else is checked."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here")
    return resolved


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in the process instead of returning them to the kernel.

    With glibc's defaults every large activation is a fresh ``mmap`` whose pages the
    kernel must clear on each call; measured on 2 cores this cost more than the
    convolutions (``small`` fast: about 2 s per study instead of 0.2-1 s). Raising the
    mmap and trim thresholds makes freed activations reusable at the price of a higher
    resident size. Process-wide and idempotent; returns whether glibc took the settings.
    """
    global _allocator_tuned  # noqa: PLW0603 - one process-wide switch, set once
    if _allocator_tuned:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc: nothing to tune
    mmap_set = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30))
    ok = mmap_set and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    _allocator_tuned = ok
    return ok


def _validate(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise EnhancerInputError(f"frames must be a numpy array, not {type(frames).__name__}")
    if frames.ndim != 3:
        raise EnhancerInputError(
            f"frames must be 3-D [frames, rows, columns]; got shape {frames.shape}"
        )
    count, rows, cols = frames.shape
    if count == 0:
        raise EnhancerInputError("frames holds no frame")
    if rows < _MIN_SIDE or cols < _MIN_SIDE:
        raise EnhancerInputError(
            f"frames of {rows}x{cols} are too small; each side needs at least {_MIN_SIDE}"
        )
    if frames.dtype.kind == "u":
        pass
    elif frames.dtype.kind == "f":
        for index, frame in enumerate(frames):
            if np.isnan(frame).any():
                raise EnhancerInputError(f"frame {index} contains NaN")
            if not np.isfinite(frame).all():
                raise EnhancerInputError(f"frame {index} contains infinite values")
            if (frame < 0).any():
                raise EnhancerInputError(f"frame {index} contains negative counts")
    else:
        raise EnhancerInputError(
            f"frames must hold counts as unsigned integers (uint16) or floats; got {frames.dtype}"
        )
    for index, frame in enumerate(frames):
        if not frame.any():
            raise EnhancerInputError(f"frame {index} has no counts (all zero)")
    return frames


def round_counts(values: np.ndarray) -> np.ndarray:
    """Expected counts → uint16 counts with the same expected total.

    Rounding to nearest loses a few per cent of a scan's total in its low-count
    background (values under 0.5 all become 0); rounding up with a probability equal to
    the fraction keeps every pixel's expectation. The fixed seed keeps runs repeatable.
    """
    clipped = np.clip(values, 0.0, _UINT16_MAX)
    floor = np.floor(clipped)
    generator = np.random.default_rng(0)
    round_up = generator.random(clipped.shape, dtype=np.float32) < (clipped - floor)
    rounded: np.ndarray = np.minimum(floor + round_up, _UINT16_MAX).astype(np.uint16)
    return rounded


class Enhancer:
    """A loaded cascade and how to run it.

    Parameters
    ----------
    model : CascadeModel
        In eval mode.
    card : ModelCard
        Its model card (name, version and sha256 go into every result).
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    profile : Profile
        ``fast`` or ``cascade``; the checkpoint must serve it.
    deterministic : bool
        Deterministic kernels only (process-wide, as torch allows no other scope).
    batch_size : int
        Frames run together.
    max_tile_pixels : int
        Frames with more pixels run in tiles of ``tile`` × ``tile``.
    tune_allocator : bool
        On the CPU, call :func:`tune_cpu_allocator` (process-wide).
    """

    def __init__(
        self,
        model: CascadeModel,
        card: ModelCard,
        *,
        device: str | torch.device = "auto",
        profile: Profile | str = Profile.FAST,
        deterministic: bool = False,
        batch_size: int = 4,
        max_tile_pixels: int = 1024 * 512,
        tile: int = 512,
        tune_allocator: bool = True,
    ) -> None:
        self.profile = Profile(profile)
        if self.profile.value not in card.profiles:
            raise ValueError(
                f"model {card.name!r} serves profiles {list(card.profiles)}, "
                f"not {self.profile.value!r}"
            )
        if batch_size < 1 or tile < 16 or max_tile_pixels < 1:
            raise ValueError(
                f"batch_size {batch_size!r}, tile {tile!r} and max_tile_pixels "
                f"{max_tile_pixels!r} must be positive (tile at least 16)"
            )
        self.device = resolve_device(device)
        self.card = card
        self.batch_size = batch_size
        self.max_tile_pixels = max_tile_pixels
        self.tile = tile
        self.deterministic = deterministic
        if deterministic:
            # cuBLAS needs this before its first call to be deterministic.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            # oneDNN convolutions run about twice as fast on channels-last tensors.
            self.model = self.model.to(memory_format=torch.channels_last)
            if tune_allocator:
                tune_cpu_allocator()
        self.margin = self._measure_margin()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "auto",
        profile: Profile | str = Profile.FAST,
        deterministic: bool = False,
    ) -> Enhancer:
        """Load once per process: the same file, device and profile give the same object."""
        resolved = resolve_device(device)
        profile = Profile(profile)
        key = (str(Path(path).resolve()), str(resolved), profile.value, deterministic)
        with _cache_lock:
            if key not in _cache:
                loaded = load_checkpoint(Path(path), profile=profile)
                _cache[key] = cls(
                    loaded.model,
                    loaded.card,
                    device=resolved,
                    profile=profile,
                    deterministic=deterministic,
                )
                logger.info(
                    "loaded model %s %s (%s) on %s, profile %s",
                    loaded.card.name,
                    loaded.card.version,
                    loaded.card.sha256[:12],
                    resolved,
                    profile.value,
                )
            return _cache[key]

    @classmethod
    def default(
        cls, *, device: str | torch.device = "auto", profile: Profile | str = Profile.FAST
    ) -> Enhancer:
        """The model shipped inside the package (``enhancer/weights/default.safetensors``).

        Raises
        ------
        FileNotFoundError
            This build ships no default model; pass a checkpoint instead.
        """
        if not DEFAULT_WEIGHTS.is_file():
            raise FileNotFoundError(
                f"no default model is shipped in this build ({DEFAULT_WEIGHTS} is absent); "
                "pass --checkpoint with a trained .safetensors file"
            )
        return cls.from_checkpoint(DEFAULT_WEIGHTS, device=device, profile=profile)

    def _measure_margin(self) -> int:
        multiple = self.model.multiple
        stages = [self.model.stage1]
        if self.profile is Profile.CASCADE:
            stages.append(self.model.stage2)
        radius = 0
        for stage in stages:

            def probe(x: torch.Tensor, stage: RestorationUNet = stage) -> torch.Tensor:
                x = x.to(self.device)
                out: torch.Tensor = stage(x, base=x[:, :1]).image.float()
                return out

            in_channels = stage.intro.in_channels
            radius = max(
                radius, receptive_radius(probe, in_channels=in_channels, multiple=multiple)
            )
        return -(-radius // multiple) * multiple + multiple

    def _autocast(self) -> torch.autocast:
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def _stage1(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] * x.shape[-2] <= self.max_tile_pixels:
            return self.model.run_stage1(x)[0]
        return run_tiled(
            lambda parts, _: self.model.run_stage1(parts[0])[0],
            [x],
            core=self.tile,
            margin=self.margin,
            multiple=self.model.multiple,
        )

    def _stage2(self, stage1: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _, modulation = self.model.prior_modulation(stage1)
        if x.shape[-1] * x.shape[-2] <= self.max_tile_pixels:
            return self.model.run_stage2(stage1, x, modulation)[0]
        full = x.shape[-2]

        def tile(parts: Sequence[torch.Tensor], origin: tuple[int, int]) -> torch.Tensor:
            (r0, c0), (h, w) = origin, parts[0].shape[-2:]
            cropped = []
            for scale, shift in modulation:
                factor = full // scale.shape[-2]
                rows = slice(r0 // factor, (r0 + h) // factor)
                cols = slice(c0 // factor, (c0 + w) // factor)
                cropped.append((scale[..., rows, cols], shift[..., rows, cols]))
            return self.model.run_stage2(parts[0], parts[1], cropped)[0]

        return run_tiled(
            tile, [stage1, x], core=self.tile, margin=self.margin, multiple=self.model.multiple
        )

    def _run_batch(self, counts: torch.Tensor) -> torch.Tensor:
        h, w = counts.shape[-2:]
        multiple = self.model.multiple
        pad_h, pad_w = (-h) % multiple, (-w) % multiple
        x = self.model.model_input(counts)
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            stage1 = self._stage1(x)
            out = stage1 if self.profile is Profile.FAST else self._stage2(stage1, x)
        vst = out.float()[..., :h, :w]
        return inverse_anscombe_unbiased(vst)

    def enhance(self, frames: np.ndarray) -> np.ndarray:
        """Enhanced counts: uint16 [frames, H, W] on the scale of a standard-speed scan."""
        return self.enhance_with_qc(frames).counts

    def expected_counts(self, frames: np.ndarray) -> np.ndarray:
        """The model's estimate before rounding: float32 [frames, H, W] expected counts.

        :meth:`enhance` stores :func:`round_counts` of it; evaluations score both.
        """
        return self._expected_counts(_validate(frames))

    def _expected_counts(self, frames: np.ndarray) -> np.ndarray:
        """:meth:`expected_counts` of frames :func:`_validate` has passed."""
        outputs = []
        with torch.inference_mode():
            for start in range(0, frames.shape[0], self.batch_size):
                batch = frames[start : start + self.batch_size].astype(np.float32)
                counts = torch.from_numpy(batch).unsqueeze(1).to(self.device)
                outputs.append(self._run_batch(counts).squeeze(1).cpu().numpy())
        return np.concatenate(outputs)

    def enhance_with_qc(self, frames: np.ndarray) -> EnhancementResult:
        """:meth:`enhance` plus the count-fidelity QC report and provenance."""
        frames = _validate(frames)
        started = time.perf_counter()
        enhanced = round_counts(self._expected_counts(frames))
        seconds = time.perf_counter() - started
        qc = check_count_fidelity(frames, enhanced, dose_factor=self.model.dose_factor)
        return EnhancementResult(
            counts=enhanced,
            qc=qc,
            seconds=seconds,
            profile=self.profile,
            device=str(self.device),
            model_name=self.card.name,
            model_version=self.card.version,
            model_sha256=self.card.sha256,
        )
