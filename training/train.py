"""Cascade training: ``python -m training train -opt FILE``.

Each step: ``x = anscombe(dose · rapid)``, target the sample's ``target_vst``; the cascade
runs f_IR1 → SAM prior → f_IR2 and the loss is a weighted sum of

- reconstruction: mean squared error of f_IR2 (and, weighted apart, f_IR1) against the
  target in VST units. Squared error makes the output the conditional *mean* of the
  transformed standard scan, which the unbiased inverse maps back to expected counts.
  Phantoms give that mean itself (``E[anscombe(Poisson(λ))]``); hospital scans without a
  noise-free truth give a target whose noise is independent of the rapid scan's, and by
  Noise2Noise's argument train towards the same mean (``training.data.targets`` says why
  the scan the rapid one was thinned from cannot be that target);
- SKD (:class:`~enhancer.modeling.distillation.SemanticKnowledgeDistillation`);
- SCM (:class:`~enhancer.modeling.consistency.SemanticConsistencyLoss`).

AdamW with linear warm-up and cosine decay, gradient clipping, an EMA of the trainable
weights (the shipped weights), seeds for everything, a training state saved atomically
every ``checkpoint_every`` steps and resumed exactly (data order included), a CSV and a
PNG of the curves, and a final checkpoint with its model card.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from enhancer.checkpoint import ModelCard, save_checkpoint
from enhancer.modeling.cascade import CascadeModel, Profile
from enhancer.modeling.consistency import SemanticConsistencyLoss
from enhancer.modeling.distillation import SemanticKnowledgeDistillation
from enhancer.modeling.registry import build_cascade, cascade_configs
from enhancer.modeling.sam_checkpoint import IMAGE_SIZE, load_sam_weights
from enhancer.runtime import resolve_device
from enhancer.vst import anscombe, inverse_anscombe_unbiased
from training.config import TrainingOptions
from training.curves import CurveLog
from training.data_registry import build_dataset
from training.ema import ExponentialMovingAverage

__all__ = ["TrainResult", "build_model", "prior_scale", "seed_everything", "train", "validate"]

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run left its outputs."""

    weights: Path
    card: ModelCard
    curves: Path
    metrics: dict[str, float]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's global and torch's generators (a run's first step)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(options: TrainingOptions) -> CascadeModel:
    """The cascade a run trains: its size, SAM weights, and frozen parts per ablation."""
    config = cascade_configs[options.model.size]
    model = build_cascade(config)
    if options.model.sam_weights is not None:
        load_sam_weights(
            model.prior.sam, options.model.sam_weights, variant_name=config.sam_variant
        )
    model.prior.requires_grad_(False)
    if not options.model.spi:
        model.spi.requires_grad_(False)  # identity modulation: the no-SPI ablation
    if not options.losses.cascade:
        for module in (model.stage2, model.spi):
            module.requires_grad_(False)
    return model


def _schedule(options: TrainingOptions) -> Any:
    warmup, total = options.train.warmup_iterations, options.train.iterations

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class _Batches:
    """Endless batches in an order fixed by (seed, epoch), so a resume replays it exactly."""

    def __init__(self, dataset: Dataset[Any], options: TrainingOptions) -> None:
        self.dataset = dataset
        self.options = options
        self.per_epoch = len(dataset) // options.train.batch_size  # type: ignore[arg-type]
        if self.per_epoch == 0:
            raise ValueError(
                f"the training set has {len(dataset)} samples, fewer than one batch of "  # type: ignore[arg-type]
                f"{options.train.batch_size}"
            )

    def from_iteration(self, iteration: int) -> Any:
        epoch, skip = divmod(iteration, self.per_epoch)
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            generator = torch.Generator().manual_seed(self.options.train.seed * 100_003 + epoch)
            loader = DataLoader(
                self.dataset,
                batch_size=self.options.train.batch_size,
                shuffle=True,
                drop_last=True,
                generator=generator,
                num_workers=self.options.train.num_workers,
            )
            for index, batch in enumerate(loader):
                if index >= skip:
                    yield batch
            epoch, skip = epoch + 1, 0


def prior_scale(frame_long_side: torch.Tensor | float) -> float:
    """SAM encoder pixels per frame pixel for crops of frames with this long side.

    The prior of a crop then sees anatomy at the size the whole frame shows it at inference
    (a 1024-row frame fills SAM's canvas at scale 1), and a small crop costs little instead
    of being magnified to 1024 pixels. A batch mixing frame sizes uses their mean.
    """
    return IMAGE_SIZE / float(torch.as_tensor(frame_long_side, dtype=torch.float64).mean())


def _pixel_weights(target_vst: torch.Tensor, count_reference: float | None) -> torch.Tensor | None:
    """``1 + λ / count_reference`` per pixel, λ the target's counts (see ``LossWeights``).

    λ is the algebraic inverse of the target's Anscombe value: a weight needs its size, not
    an unbiased estimate, and it is fixed (no gradient).
    """
    if count_reference is None:
        return None
    counts = (target_vst.detach() / 2.0) ** 2 - 0.375
    return 1.0 + counts.clamp(min=0.0) / count_reference


def _losses(
    model: CascadeModel,
    skd: SemanticKnowledgeDistillation,
    scm: SemanticConsistencyLoss,
    options: TrainingOptions,
    batch: dict[str, Any],
    *,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    rapid = batch["rapid"].to(device)
    x = anscombe(rapid * batch["dose_factor"].to(device).view(-1, 1, 1, 1).float())
    target = batch["target_vst"].to(device)
    weights = options.losses
    vst_scale = model.vst_scale
    profile = Profile.CASCADE if weights.cascade else Profile.FAST
    scale = prior_scale(batch["frame_long_side"])
    out = model(x, profile=profile, prior_scale=scale)
    weight = _pixel_weights(target, weights.count_reference)

    def reconstruction(estimate: torch.Tensor) -> torch.Tensor:
        if weight is None:
            return F.mse_loss(estimate / vst_scale, target / vst_scale)
        squared: torch.Tensor = ((estimate - target) / vst_scale) ** 2
        return (weight * squared).mean()

    terms = {"stage1": reconstruction(out.stage1)}
    if not weights.cascade:
        terms["total"] = terms["stage1"]
        return terms
    assert out.stage2 is not None
    terms["reconstruction"] = reconstruction(out.stage2)
    total = weights.reconstruction * terms["reconstruction"] + weights.stage1 * terms["stage1"]
    if weights.skd > 0:
        terms["skd"] = skd(out.features1, out.features2, out.stage1, out.stage2)
        total = total + weights.skd * terms["skd"]
    if weights.scm > 0:
        terms["scm"] = scm(out.stage1, out.stage2, target, scale=scale)
        total = total + weights.scm * terms["scm"]
    terms["total"] = total
    return terms


def _pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pad_h, pad_w = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x


@torch.no_grad()
def validate(
    model: CascadeModel, dataset: Dataset[Any], device: torch.device, *, cascade: bool
) -> dict[str, float]:
    """Mean PSNR (dB) of expected counts against the truth, or the standard scan without one.

    The peak of each reference frame is its data range. ``rapid`` is the rescaled input.
    """
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    for index in range(len(dataset)):  # type: ignore[arg-type]
        sample = dataset[index]
        rapid = sample["rapid"].unsqueeze(0).to(device)
        dose = float(sample["dose_factor"])
        reference = sample.get("truth", sample["standard"]).unsqueeze(0).to(device)
        h, w = rapid.shape[-2:]
        x = _pad(anscombe(rapid * dose), model.multiple)
        out = model(
            x,
            profile=Profile.CASCADE if cascade else Profile.FAST,
            prior_scale=prior_scale(float(sample["frame_long_side"])),
        )
        estimates = {"rapid": rapid * dose, "fast": inverse_anscombe_unbiased(out.stage1)}
        if out.stage2 is not None:
            estimates["cascade"] = inverse_anscombe_unbiased(out.stage2)
        peak = float(reference.max()) or 1.0
        for name, estimate in estimates.items():
            mse = float(F.mse_loss(estimate[..., :h, :w], reference))
            psnr = 10.0 * math.log10(peak**2 / mse) if mse > 0 else float("inf")
            sums[f"val_psnr_{name}"] = sums.get(f"val_psnr_{name}", 0.0) + psnr
        count += 1
    model.train()
    return {key: value / max(count, 1) for key, value in sums.items()}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    # Write then rename: a run killed while saving keeps its previous state.
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def train(
    options: TrainingOptions,
    *,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult | None:
    """Run (or resume) one training run; see the module docstring.

    Parameters
    ----------
    options : TrainingOptions
        The run.
    resume : bool
        Continue from the run's saved state when there is one.
    progress : bool
        Show a progress bar.
    stop_after : int, optional
        Save the state and return ``None`` once this many iterations are done (short of
        ``train.iterations``), as an interrupted run would; the next call resumes.
    """
    seed_everything(options.train.seed)
    device = resolve_device(options.train.device)
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(options).to(device).train()
    model.prior.eval()
    skd = SemanticKnowledgeDistillation(
        student_channels=model.stage1.feature_channels,
        teacher_channels=model.stage2.feature_channels,
    ).to(device)
    scm = SemanticConsistencyLoss(model.prior)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if options.losses.cascade and options.losses.skd > 0:
        trainable += list(skd.parameters())
    optimizer = torch.optim.AdamW(
        trainable, lr=options.train.lr, weight_decay=options.train.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(options))
    ema = ExponentialMovingAverage(model, decay=options.train.ema_decay)
    train_set = build_dataset(options.data.train, where="data.train")
    val_set = (
        build_dataset(options.data.val, where="data.val") if options.data.val is not None else None
    )
    state_path = out_dir / STATE_FILE
    iteration, rows = 0, []
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        skd.load_state_dict(state["skd"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ema.load_state_dict(state["ema"])
        iteration, rows = int(state["iteration"]), state["curves"]
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed %s at iteration %d", options.name, iteration)
    curves = CurveLog(out_dir / "curves.csv", rows)
    batches = _Batches(train_set, options).from_iteration(iteration)
    bar = tqdm(total=options.train.iterations, initial=iteration, disable=not progress, unit="it")
    end = (
        options.train.iterations
        if stop_after is None
        else min(stop_after, options.train.iterations)
    )
    while iteration < end:
        terms = _losses(model, skd, scm, options, next(batches), device=device)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(trainable, options.train.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update(model)
        iteration += 1
        bar.update(1)
        if iteration % options.train.log_every == 0 or iteration == options.train.iterations:
            row = {"iteration": float(iteration), "lr": float(scheduler.get_last_lr()[0])}
            row |= {f"loss_{k}": float(v.detach()) for k, v in terms.items()}
            curves.append(row)
            bar.set_postfix(loss=f"{row['loss_total']:.4g}")
        last = iteration == options.train.iterations
        if val_set is not None and (iteration % options.train.val_every == 0 or last):
            curves.append(
                {"iteration": float(iteration)}
                | _ema_validate(model, ema, val_set, device, options)
            )
        if iteration % options.train.checkpoint_every == 0 or iteration == end:
            _save_state(
                state_path,
                {
                    "model": model.state_dict(),
                    "skd": skd.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict(),
                    "iteration": iteration,
                    "curves": curves.rows,
                    "torch_rng": torch.get_rng_state(),
                },
            )
    bar.close()
    if iteration < options.train.iterations:
        logger.info("stopped %s at iteration %d; the next run resumes", options.name, iteration)
        return None
    return _finish(model, ema, val_set, device=device, options=options, curves=curves)


def _ema_validate(
    model: CascadeModel,
    ema: ExponentialMovingAverage,
    dataset: Dataset[Any],
    device: torch.device,
    options: TrainingOptions,
) -> dict[str, float]:
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.state_dict_of(model))
    try:
        return validate(model, dataset, device, cascade=options.losses.cascade)
    finally:
        model.load_state_dict(trained)


def _finish(
    model: CascadeModel,
    ema: ExponentialMovingAverage,
    val_set: Dataset[Any] | None,
    *,
    device: torch.device,
    options: TrainingOptions,
    curves: CurveLog,
) -> TrainResult:
    model.load_state_dict(ema.state_dict_of(model))
    metrics = validate(model, val_set, device, cascade=options.losses.cascade) if val_set else {}
    profiles = (Profile.FAST, Profile.CASCADE) if options.losses.cascade else (Profile.FAST,)
    weights = options.out_dir / f"{options.name}.safetensors"
    card = save_checkpoint(
        model,
        cascade_configs[options.model.size],
        weights,
        name=options.name,
        version=options.version,
        profiles=profiles,
        training_data=_describe(options),
        metrics=metrics,
    )
    plot = curves.plot(options.out_dir / "curves.png")
    logger.info("wrote %s (sha256 %s) and %s", weights, card.sha256[:12], plot)
    return TrainResult(weights=weights, card=card, curves=plot, metrics=metrics)


def _describe(options: TrainingOptions) -> str:
    parts = [f"train: {options.data.train}"]
    if options.data.val is not None:
        parts.append(f"val: {options.data.val}")
    parts.append(f"{options.train.iterations} iterations of {options.train.batch_size}")
    parts.append(f"losses: {options.losses.model_dump()}")
    # Cards before 0.2.0 trained on the standard scan the rapid one was thinned from.
    parts.append("targets: noise independent of the rapid scan's (training.data.targets)")
    if options.model.sam_weights is not None:
        parts.append(f"SAM prior: {Path(options.model.sam_weights).name}")
    return "; ".join(parts)
