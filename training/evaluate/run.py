"""``python -m training evaluate``: every method on held-out phantoms, one report.

``main(argv)`` parses the options, loads the checkpoints (``--model NAME=PATH[:profile]``,
repeatable) and any pretrained perceptual weights given by path, runs
:func:`training.evaluate.evaluation.evaluate` and writes the report with
:func:`training.evaluate.report.write_report`. Exit status 0 on success, 2 on a bad option or
an unusable file (one line on stderr says which).

Example::

    python -m training evaluate --out eval/ --count 20 \\
        --model cascade=ckpt.safetensors:cascade --model fast=ckpt.safetensors:fast \\
        --model no-prior=noprior.safetensors:fast --bm3d-frames 8
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from enhancer.checkpoint import CheckpointError
from enhancer.modeling.cascade import Profile
from enhancer.runtime import resolve_device
from training.evaluate.baselines import BM3D_PROFILES, ModelEstimator, parse_model_spec
from training.evaluate.evaluation import EXPECTED_MODELS, EvaluationSettings, evaluate
from training.evaluate.heldout import DEFAULT_SEED
from training.evaluate.perceptual import (
    AlexLpips,
    InceptionFeatures,
    PerceptualWeightsError,
    SamFeatures,
)
from training.evaluate.report import write_report

__all__ = ["add_arguments", "build_parser", "main", "run"]

logger = logging.getLogger(__name__)

# Names of the rows that are not checkpoints.
_RESERVED = frozenset({"standard", "truth", "rapid", "gaussian", "bm3d"})


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the evaluation options to ``parser`` (for ``python -m training evaluate``)."""
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md etc.")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="held-out phantom seed")
    parser.add_argument("--count", type=int, default=20, help="held-out scans (2 views each)")
    parser.add_argument("--first-index", type=int, default=1, help="index of the first scan")
    parser.add_argument("--speed", type=int, choices=(40, 60), default=40, help="rapid cm/min")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH[:profile]",
        help="a checkpoint to evaluate; repeatable (names: " + ", ".join(EXPECTED_MODELS) + ")",
    )
    parser.add_argument("--primary", default="cascade", help="model the targets are checked on")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--gaussian-sigma", type=float, help="fix sigma (px) instead of tuning it")
    parser.add_argument("--tune-count", type=int, default=2, help="scans to tune sigma on")
    parser.add_argument(
        "--bm3d-frames", type=int, help="run BM3D on at most this many frames (0: skip it)"
    )
    parser.add_argument("--bm3d-profile", choices=BM3D_PROFILES, default="np")
    parser.add_argument("--examples", type=int, default=2, help="example scans in the figures")
    parser.add_argument("--lesion-probability", type=float, help="share of scans with lesions")
    parser.add_argument("--fd-model", help="model whose SAM encoder FD-SAM uses")
    parser.add_argument("--no-fd-sam", action="store_true", help="skip FD-SAM")
    parser.add_argument("--inception-weights", type=Path, help="Inception-v3 state dict (FID)")
    parser.add_argument("--alexnet-weights", type=Path, help="AlexNet state dict (LPIPS)")
    parser.add_argument("--lpips-weights", type=Path, help="LPIPS linear layers (alex.pth)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.evaluate``."""
    parser = argparse.ArgumentParser(
        prog="python -m training evaluate",
        description="Evaluate baselines and checkpoints on held-out phantoms; write a report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    return add_arguments(parser)


def _settings(args: argparse.Namespace) -> EvaluationSettings:
    if args.count < 1 or args.first_index < 0 or args.seed < 0:
        raise ValueError(
            f"--count {args.count!r} must be >= 1, --first-index {args.first_index!r} and "
            f"--seed {args.seed!r} >= 0"
        )
    if args.bm3d_frames is not None and args.bm3d_frames < 0:
        raise ValueError(f"--bm3d-frames {args.bm3d_frames!r} is negative")
    if args.lesion_probability is not None and not 0 <= args.lesion_probability <= 1:
        raise ValueError(f"--lesion-probability {args.lesion_probability!r} is outside 0-1")
    if args.gaussian_sigma is not None and not args.gaussian_sigma > 0:
        raise ValueError(f"--gaussian-sigma {args.gaussian_sigma!r} must be positive")
    return EvaluationSettings(
        seed=args.seed,
        count=args.count,
        first_index=args.first_index,
        speed_cm_min=args.speed,
        tune_count=max(args.tune_count, 0),
        gaussian_sigma=args.gaussian_sigma,
        bm3d_frames=args.bm3d_frames,
        bm3d_profile=args.bm3d_profile,
        examples=args.examples,
        lesion_probability=args.lesion_probability,
        device=str(resolve_device(args.device)),
    )


def _load_models(args: argparse.Namespace, device: str) -> list[ModelEstimator]:
    specs = [parse_model_spec(text) for text in args.model]
    names = [spec.name for spec in specs]
    for name in names:
        if name in _RESERVED:
            raise ValueError(f"model name {name!r} is taken by a baseline or reference")
        if names.count(name) > 1:
            raise ValueError(f"model name {name!r} is given more than once")
    return [
        ModelEstimator.load(spec, device=device, description=EXPECTED_MODELS.get(spec.name, ""))
        for spec in specs
    ]


def _sam_features(args: argparse.Namespace, models: list[ModelEstimator]) -> SamFeatures | None:
    if args.no_fd_sam:
        return None
    with_prior = [m for m in models if Profile.CASCADE.value in m.enhancer.card.profiles]
    if args.fd_model is not None:
        with_prior = [m for m in with_prior if m.name == args.fd_model]
        if not with_prior:
            raise ValueError(f"--fd-model {args.fd_model!r} names no model with a SAM prior")
    if not with_prior:
        return None
    chosen = with_prior[0]
    card = chosen.enhancer.card
    source = f"{chosen.name} ({card.name} {card.version}, sha256 {card.sha256[:12]})"
    return SamFeatures(chosen.enhancer.model.prior, source=source)


def run(args: argparse.Namespace) -> int:
    """Evaluate as ``args`` say; 0 on success, 2 on a bad option or unusable file."""
    try:
        settings = _settings(args)
        device = resolve_device(settings.device)
        models = _load_models(args, settings.device)
        sam = _sam_features(args, models)
        inception = (
            InceptionFeatures.from_file(args.inception_weights, device=device)
            if args.inception_weights is not None
            else None
        )
        if (args.alexnet_weights is None) != (args.lpips_weights is None):
            raise ValueError("LPIPS needs both --alexnet-weights and --lpips-weights")
        lpips = (
            AlexLpips.from_files(args.alexnet_weights, args.lpips_weights, device=device)
            if args.lpips_weights is not None
            else None
        )
    except (CheckpointError, PerceptualWeightsError, ValueError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    names = [m.name for m in models]
    primary = args.primary if args.primary in names else (names[0] if names else None)
    if primary != args.primary:
        logger.warning("primary model %r not given; targets use %s", args.primary, primary)
    started = time.perf_counter()
    result = evaluate(settings, models, primary=primary, sam=sam, inception=inception, lpips=lpips)
    result.settings["wall_seconds"] = round(time.perf_counter() - started, 1)
    report = write_report(result, args.out)
    print(f"wrote {report} ({result.settings['wall_seconds']:.1f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training evaluate ...``; returns the exit status."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    return run(args)


if __name__ == "__main__":  # pragma: no cover - python -m training.evaluate.run
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
