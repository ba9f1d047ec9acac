"""Fine-tune SAM to segment the skeleton in bone-scan frames, prompted by the body box.

``python -m training finetune-sam -opt training/options/sam_small.yaml`` (or
``python -m training.sam_finetune -opt ...``). With ``sam_checkpoint`` (official SAM or MedSAM)
and a ``lora`` block, low-rank adapters on the encoder's attention projections train with the
mask decoder (:mod:`training.lora`); without a checkpoint the whole ``small`` or ``tiny`` SAM
trains from scratch. The model is the cascade's own :class:`~enhancer.modeling.sam_prior.SamPrior`
(frame token grid, automatic box prompt), so it is trained exactly as it will be used.

Data are rendered on the fly (:class:`pacs_node.synth.BonePhantom`): whole-body frames with
their skeleton masks, the posterior mirrored like its view. In the cascade the prior reads
f_IR1's output, which sits between a clean and a standard-speed scan, so the input is the
Anscombe transform of, per frame, the expected counts (``clean``), a 20 cm/min Poisson draw
(``standard``) or a rapid draw scaled by the dose (``rapid``). Loss: BCE plus soft Dice on the
mask logits. Output in ``out_dir``: ``sam.safetensors`` (official state-dict layout, adapters
merged; loads with :func:`~enhancer.modeling.sam_checkpoint.load_sam_weights`), its card
``sam.json`` and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from segment_anything.modeling import Sam
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from enhancer.modeling.sam_checkpoint import (
    IMAGE_SIZE,
    SAM_SPECS,
    SamCheckpointError,
    build_sam,
    load_sam_weights,
)
from enhancer.modeling.sam_prior import PriorNormalisation, SamPrior
from enhancer.vst import anscombe
from pacs_node.synth import BonePhantom, PhantomRender, synthetic_patient
from pacs_node.synth.phantom import FRAME_ROWS
from training.config import OptionsError, add_option_arguments, read_options
from training.lora import LORA_TARGETS, apply_lora, merge_lora

__all__ = [
    "FinetuneOptions",
    "FinetuneResult",
    "OptionsError",
    "SkeletonFrames",
    "build_parser",
    "build_trainable_sam",
    "finetune",
    "load_options",
    "main",
    "segmentation_loss",
]

logger = logging.getLogger(__name__)

EXIT_USAGE = 2
STANDARD_SPEED_CM_MIN = 20.0
InputKind = Literal["clean", "standard", "rapid"]
INPUT_KINDS: tuple[InputKind, ...] = ("clean", "standard", "rapid")
# synth's stream for the phantom's variation is 1 (its _PHANTOM), so scan j here renders as
# synthetic_scan_counts(seed, j) does; 4 is a stream synth does not use: this module's draws.
_PHANTOM_STREAM, _DRAW_STREAM = 1, 4
_Loader = Iterable[tuple[Tensor, Tensor, Tensor]]
_NO_DECAY = ("pos_embed", "rel_pos_h", "rel_pos_w")  # position tables: decay would flatten them


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraOptions(_Frozen):
    """Adapters on the encoder's attention projections (only with ``sam_checkpoint``)."""

    rank: int = Field(gt=0)
    alpha: float = Field(gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: tuple[Literal["qkv", "proj"], ...] = Field(LORA_TARGETS, min_length=1)


class DataOptions(_Frozen):
    """Phantom frames: ``train_scans`` renders cycled with fresh noise, fixed validation set."""

    seed: int = Field(0, ge=0)
    train_scans: int = Field(gt=0)
    val_seed: int = Field(90001, ge=0)
    val_scans: int = Field(gt=0)
    inputs: tuple[InputKind, ...] = Field(INPUT_KINDS, min_length=1)
    rapid_speed_cm_min: float = Field(40.0, gt=STANDARD_SPEED_CM_MIN)
    #: (rows, cols) crops centred on the body; null trains on whole 1024×256 frames, the size
    #: the prior sees in the cascade (a crop is resized to 1024 rows, i.e. magnified).
    crop: (
        tuple[Annotated[int, Field(gt=0, le=1024)], Annotated[int, Field(gt=0, le=256)]] | None
    ) = None
    #: True encodes a crop at its whole frame's scale instead (a 1024-row frame fills SAM's
    #: canvas, so a 256x128 crop stays 256x128): the anatomy's size in the cascade, and a
    #: sixteenth of the cost of a magnified crop.
    native_scale: bool = False
    num_workers: int = Field(0, ge=0)

    @property
    def encoder_scale(self) -> float | None:
        """SAM pixels per frame pixel for :meth:`SamPrior.forward` (None: fill the canvas)."""
        return IMAGE_SIZE / FRAME_ROWS if self.native_scale else None


class TrainOptions(_Frozen):
    """AdamW with linear warm-up and cosine decay."""

    iterations: int = Field(gt=0)
    batch_size: int = Field(2, gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_iterations: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    dice_weight: float = Field(1.0, ge=0)
    seed: int = 0
    log_every: int = Field(10, gt=0)
    val_every: int = Field(500, gt=0)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU


class FinetuneOptions(_Frozen):
    """One fine-tuning run."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    sam_variant: Literal["tiny", "small", "vit_b", "vit_l", "vit_h"]
    sam_checkpoint: Path | None = None
    normalisation: PriorNormalisation = PriorNormalisation.SAM
    lora: LoraOptions | None = None
    data: DataOptions
    train: TrainOptions
    out_dir: Path


def load_options(path: Path, *, overrides: dict[str, Any] | None = None) -> FinetuneOptions:
    """Read and validate an option file; ``overrides`` maps dotted keys to values.

    Raises
    ------
    OptionsError
        One line naming the file and each bad key, or the missing checkpoint file.
    """
    options = read_options(path, FinetuneOptions, overrides=overrides)
    if options.data.seed == options.data.val_seed:
        raise OptionsError(f"{path}: data.val_seed: equals data.seed; validation must be held out")
    if options.lora is not None and options.sam_checkpoint is None:
        raise OptionsError(
            f"{path}: lora: needs sam_checkpoint; without one the whole {options.sam_variant} "
            "SAM trains from scratch, so drop the lora block"
        )
    ckpt = options.sam_checkpoint
    if ckpt is not None and not ckpt.is_file():
        raise OptionsError(
            f"{path}: sam_checkpoint {ckpt} does not exist; "
            "download the official checkpoint and set the path"
        )
    return options


class SkeletonFrames(Dataset[tuple[Tensor, Tensor, int]]):
    """Phantom frames and skeleton masks; item ``k`` depends only on ``(seed, k)``.

    Item ``k`` is view ``k % 2`` (anterior, posterior) of scan ``(k // 2) % scans``; scan
    ``j`` is patient ``synthetic_patient(seed, j)`` rendered as ``synthetic_scan_counts`` does.
    Noise, input kind and crop come from a stream of ``k``, so a scan met again brings new
    noise, and workers do not change the data.

    Returns
    -------
    tuple
        ``vst`` (1, H, W) float32 Anscombe domain; ``mask`` (1, H, W) float32 in {0, 1};
        the input kind's index in :data:`INPUT_KINDS`.
    """

    def __init__(self, data: DataOptions, *, seed: int, scans: int, length: int) -> None:
        self.data, self.seed, self.scans, self.length = data, seed, scans, length

    def __len__(self) -> int:
        return self.length

    def render(self, scan: int) -> PhantomRender:
        """The phantom of scan ``scan`` (rendering costs ~40 ms, a Poisson draw ~5 ms)."""
        body = synthetic_patient(self.seed, scan).body
        return BonePhantom(body).render(np.random.default_rng([self.seed, scan, _PHANTOM_STREAM]))

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor, int]:
        view = k % 2
        render = self.render((k // 2) % self.scans)
        draw = np.random.default_rng([self.seed, k, _DRAW_STREAM])
        lam = render.views.posterior if view else render.views.anterior
        mask = render.skeleton_mask[view]
        if self.data.crop is not None:
            window = _body_window(render.body_mask[view], self.data.crop, draw)
            lam, mask = lam[window], mask[window]
        kind = self.data.inputs[int(draw.integers(len(self.data.inputs)))]
        counts: np.ndarray[Any, Any] = lam  # "clean": the expected counts
        if kind == "standard":
            counts = draw.poisson(lam)
        elif kind == "rapid":  # thinning a Poisson draw gives a Poisson draw at the lower rate
            dose = self.data.rapid_speed_cm_min / STANDARD_SPEED_CM_MIN
            counts = draw.poisson(lam / dose) * dose
        vst = anscombe(torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float32)))
        target = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
        return vst[None], target[None], INPUT_KINDS.index(kind)


def _body_window(
    body: np.ndarray[Any, Any], crop: tuple[int, int], draw: np.random.Generator
) -> tuple[slice, slice]:
    """A crop window centred on a random body pixel (uniform in the frame if none)."""
    rows, cols = body.shape
    inside = np.flatnonzero(body)
    centre = (
        int(inside[draw.integers(inside.size)]) if inside.size else int(draw.integers(body.size))
    )
    top = min(max(centre // cols - crop[0] // 2, 0), rows - crop[0])
    left = min(max(centre % cols - crop[1] // 2, 0), cols - crop[1])
    return slice(top, top + crop[0]), slice(left, left + crop[1])


def build_trainable_sam(options: FinetuneOptions) -> tuple[Sam, list[str]]:
    """The SAM to train, with ``requires_grad`` set; also the names of LoRA-wrapped layers.

    From a checkpoint the prompt encoder stays frozen (its box embedding is already learnt);
    with ``lora`` only the adapters and the mask decoder train, without it the image encoder
    and the mask decoder. From scratch everything trains.
    """
    sam = build_sam(SAM_SPECS[options.sam_variant])
    if options.sam_checkpoint is None:
        sam.requires_grad_(True)
        return sam, []
    load_sam_weights(sam, options.sam_checkpoint, variant_name=options.sam_variant)
    sam.requires_grad_(False)
    wrapped: list[str] = []
    if options.lora is None:
        sam.image_encoder.requires_grad_(True)
    else:
        wrapped = apply_lora(sam.image_encoder, **options.lora.model_dump())
    sam.mask_decoder.requires_grad_(True)
    return sam, wrapped


def segmentation_loss(logits: Tensor, target: Tensor, *, dice_weight: float = 1.0) -> Tensor:
    """BCE with logits plus ``dice_weight`` times the soft Dice loss; (B, 1, H, W) each."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    soft = (2 * (prob * flat).sum(1) + 1.0) / (prob.sum(1) + flat.sum(1) + 1.0)
    return bce + dice_weight * (1.0 - soft).mean()


def dice_scores(logits: Tensor, target: Tensor) -> Tensor:
    """(B,) hard Dice of ``logits > 0`` against the mask; 1 where both are empty."""
    pred, truth = (logits > 0).flatten(1).float(), (target > 0.5).flatten(1).float()
    union = pred.sum(1) + truth.sum(1)
    return torch.where(union > 0, 2 * (pred * truth).sum(1) / union.clamp(min=1), 1.0)


@dataclass(frozen=True)
class FinetuneResult:
    """What a run wrote and measured."""

    weights: Path
    card: Path
    metrics: Path
    sha256: str
    val_dice: float


def finetune(options: FinetuneOptions, *, progress: bool = True) -> FinetuneResult:
    """Train as ``options`` say, validate, merge adapters and save; see the module doc."""
    train, data = options.train, options.data
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if train.device == "auto" else train.device)
    amp = train.amp and device.type == "cuda"
    torch.manual_seed(train.seed)
    sam, wrapped = build_trainable_sam(options)
    prior = SamPrior(sam, normalisation=options.normalisation, frozen=False).to(device)
    optimiser, params = _optimiser(prior, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _warmup_cosine(train))
    counts = (sum(p.numel() for p in params), sum(p.numel() for p in prior.parameters()))
    logger.info("%s: %d of %d parameters train, on %s", options.name, *counts, device)
    length = train.iterations * train.batch_size
    frames = SkeletonFrames(data, seed=data.seed, scans=data.train_scans, length=length)
    loader = DataLoader(frames, train.batch_size, num_workers=data.num_workers, drop_last=True)
    val_frames = SkeletonFrames(
        data, seed=data.val_seed, scans=data.val_scans, length=2 * data.val_scans
    )
    val_loader = DataLoader(val_frames, train.batch_size, num_workers=data.num_workers)
    log: list[dict[str, float]] = []
    history: list[dict[str, Any]] = []
    window: list[tuple[float, float]] = []
    seconds, started = 0.0, time.perf_counter()
    prior.train()
    with logging_redirect_tqdm():
        bar = tqdm(loader, total=train.iterations, desc=options.name, disable=not progress)
        for iteration, (vst_cpu, target_cpu, _) in enumerate(bar, start=1):
            vst, target = vst_cpu.to(device), target_cpu.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = prior(vst, scale=data.encoder_scale).mask_logits.float()
            loss = segmentation_loss(logits, target, dice_weight=train.dice_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
            optimiser.step()
            scheduler.step()
            window.append((loss.item(), dice_scores(logits.detach(), target).mean().item()))
            if iteration % train.log_every == 0 or iteration == train.iterations:
                mean_loss, mean_dice = (float(x) for x in np.mean(window, axis=0))
                lr = float(optimiser.param_groups[0]["lr"])
                log.append({"iteration": iteration, "loss": mean_loss, "dice": mean_dice, "lr": lr})
                window.clear()
                logger.info(
                    "iter %d loss %.4f dice %.3f lr %.2e", iteration, mean_loss, mean_dice, lr
                )
            if iteration % train.val_every == 0 and iteration < train.iterations:
                seconds += time.perf_counter() - started
                history.append(
                    {
                        "iteration": iteration,
                        **_validate(prior, val_loader, amp, data.encoder_scale),
                    }
                )
                logger.info("iter %d val Dice %.3f", iteration, history[-1]["dice"])
                prior.train()
                started = time.perf_counter()
    seconds += time.perf_counter() - started
    # Merge before the last validation, so that the Dice reported is the saved model's.
    merge_diff = _merge_checked(prior, val_loader, data.encoder_scale) if wrapped else None
    history.append(
        {"iteration": train.iterations, **_validate(prior, val_loader, amp, data.encoder_scale)}
    )
    metrics = {
        "val_dice": history[-1]["dice"],
        "val": history,
        "train": log,
        "seconds_per_iteration": seconds / train.iterations,  # training only, data included
        "lora_merge_max_abs_diff": merge_diff,
        "options": options.model_dump(mode="json"),
    }
    return _save(options, sam, metrics)


def _optimiser(
    prior: SamPrior, train: TrainOptions
) -> tuple[torch.optim.AdamW, list[torch.nn.Parameter]]:
    """AdamW over the trainable parameters; no decay on biases, norms and position tables."""
    named = [(n, p) for n, p in prior.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and not n.endswith(_NO_DECAY)]
    keep = [p for n, p in named if not (p.ndim >= 2 and not n.endswith(_NO_DECAY))]
    groups: list[dict[str, Any]] = [{"params": decay}, {"params": keep, "weight_decay": 0.0}]
    optimiser = torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)
    return optimiser, [p for _, p in named]


def _warmup_cosine(train: TrainOptions) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``warmup_iterations``, then cosine down to 0."""

    def factor(step: int) -> float:
        if step < train.warmup_iterations:
            return (step + 1) / train.warmup_iterations
        span = max(1, train.iterations - train.warmup_iterations)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - train.warmup_iterations) / span)))

    return factor


@torch.inference_mode()
def _validate(
    prior: SamPrior, loader: _Loader, amp: bool, scale: float | None = None
) -> dict[str, Any]:
    """Mean hard Dice and loss (BCE + soft Dice) over the validation frames; Dice per input."""
    prior.eval()
    device = prior.sam.pixel_mean.device
    scores, kinds, losses = [], [], []
    for vst, target, kind in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = prior(vst.to(device), scale=scale).mask_logits.float()
        scores.append(dice_scores(logits, target.to(device)).cpu())
        losses.append(segmentation_loss(logits, target.to(device)).item())
        kinds.append(kind)
    dice, kind_of = torch.cat(scores), torch.cat(kinds)
    by_input = {k: float(dice[kind_of == i].mean()) for i, k in enumerate(INPUT_KINDS)}
    by_input = {k: v for k, v in by_input.items() if not math.isnan(v)}  # kinds not drawn
    return {"dice": float(dice.mean()), "loss": float(np.mean(losses)), "dice_by_input": by_input}


@torch.inference_mode()
def _merge_checked(prior: SamPrior, loader: _Loader, scale: float | None = None) -> float:
    """Merge the adapters; return how far one validation batch's float32 logits moved."""
    prior.eval()
    vst = next(iter(loader))[0].to(prior.sam.pixel_mean.device)
    before = prior(vst, scale=scale).mask_logits
    merge_lora(prior.sam)
    diff = float((prior(vst, scale=scale).mask_logits - before).abs().max())
    logger.info("merged the LoRA adapters; mask logits moved by at most %.2e", diff)
    return diff


def _save(options: FinetuneOptions, sam: Sam, metrics: dict[str, Any]) -> FinetuneResult:
    """Write ``sam.safetensors`` (official layout), its card ``sam.json`` and metrics."""
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "sam.safetensors"
    state = {k: v.detach().to("cpu", torch.float32) for k, v in sam.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    weights.chmod(0o644)  # safetensors creates it 0600; other users load it
    sha256, ckpt, final = _sha256(weights), options.sam_checkpoint, metrics["val"][-1]
    card = {
        "name": options.name,
        "kind": "sam-skeleton-segmentation",
        "file": weights.name,
        "sha256": sha256,
        "sam_variant": options.sam_variant,
        "normalisation": options.normalisation.value,
        "prompt": "automatic body box (enhancer.modeling.sam_prior.body_box)",
        "base_checkpoint": ckpt and {"file": ckpt.name, "sha256": _sha256(ckpt)},
        "lora_merged": options.lora and options.lora.model_dump(mode="json"),
        "iterations": options.train.iterations,
        "training_data": {"generator": "BonePhantom", **options.data.model_dump(mode="json")},
        "metrics": {"val_dice": final["dice"], "val_loss": final["loss"]}
        | {f"val_dice_{k}": v for k, v in final["dice_by_input"].items()},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    card_file, metrics_file = out / "sam.json", out / "metrics.json"
    card_file.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    metrics_file.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s (sha256 %s), val Dice %.3f", weights, sha256[:16], final["dice"])
    return FinetuneResult(weights, card_file, metrics_file, sha256, final["dice"])


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m training finetune-sam``."""
    parser = argparse.ArgumentParser(
        prog="python -m training finetune-sam",
        description="Fine-tune SAM for skeleton segmentation on bone-scan phantoms.",
    )
    add_option_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, 2 with a one-line message on a bad option or checkpoint."""
    args = build_parser().parse_args(argv)
    try:
        options = load_options(args.options, overrides=dict(args.set))
        result = finetune(options, progress=not args.quiet)
    except (OptionsError, SamCheckpointError) as exc:
        print(f"finetune-sam: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {result.weights} (sha256 {result.sha256[:16]})")
    print(f"val Dice = {result.val_dice:.3f}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(main())
