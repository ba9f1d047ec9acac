"""Cascade training options: a YAML file validated into one typed, frozen object.

BasicSR's idea without its filename scans or ``exec``: data sets are YAML blocks
``{type: Name, **kwargs}`` resolved through the explicit registry in
:mod:`training.data_registry`; everything else is a typed field. Unknown keys are errors, and
every error names the file and the key::

    name: cascade_tiny
    model: {size: tiny}
    data:
      train: {type: PhantomPairs, seed: 1, length: 64, crop: [128, 64]}
      val: {type: PhantomPairs, seed: 9001, length: 4}
    losses: {reconstruction: 1.0, stage1: 0.5, skd: 0.1, scm: 0.05}
    train: {iterations: 40, batch_size: 4, lr: 2.0e-3}
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "DataOptions",
    "LossWeights",
    "ModelOptions",
    "OptionsError",
    "TrainOptions",
    "TrainingOptions",
    "add_option_arguments",
    "load_options",
    "read_options",
]


OptionsT = TypeVar("OptionsT", bound=BaseModel)


class OptionsError(ValueError):
    """An option file that cannot be used; one line per problem, each naming the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelOptions(_Frozen):
    """Which cascade to train, and from what."""

    size: Literal["tiny", "small", "base"] = "small"
    #: Fine-tuned SAM weights (``finetune-sam`` output, or an official checkpoint) for the
    #: prior; without them the prior keeps its initial weights (tests and smoke runs only).
    sam_weights: Path | None = None
    #: False trains the no-SPI ablation: SPI stays at its identity initialisation, frozen.
    spi: bool = True


class LossWeights(_Frozen):
    """Weights of the loss terms; 0 switches a term off (the SKD and SCM ablations)."""

    reconstruction: float = Field(1.0, ge=0)  # f_IR2 vs the standard scan, VST domain
    stage1: float = Field(0.5, ge=0)  # f_IR1 vs the standard scan, VST domain
    skd: float = Field(0.1, ge=0)
    scm: float = Field(0.05, ge=0)
    #: Counts at which a pixel's squared error in the VST domain weighs twice as much: each
    #: pixel's weight is ``1 + λ / count_reference`` (λ: the target's expected standard
    #: counts), a blend of the VST-domain error, even across count levels, and the count-
    #: domain error (``λ`` times the VST one) that PSNR on counts measures. Without it a few
    #: hot pixels (injection site, bladder) carry almost no weight and come out flattened.
    #: None: plain VST-domain squared error.
    count_reference: float | None = Field(None, gt=0)
    #: False trains f_IR1 alone (the no-prior network): no SAM, no f_IR2.
    cascade: bool = True


class DataOptions(_Frozen):
    """``{type: Name, **kwargs}`` blocks for the training and validation sets."""

    train: dict[str, Any]
    val: dict[str, Any] | None = None

    @field_validator("train", "val")
    @classmethod
    def _has_type(cls, block: dict[str, Any] | None) -> dict[str, Any] | None:
        if block is not None and not isinstance(block.get("type"), str):
            raise ValueError("needs a 'type' naming a data set")
        return block


class TrainOptions(_Frozen):
    """The optimisation."""

    iterations: int = Field(gt=0)
    batch_size: int = Field(4, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_iterations: int = Field(0, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    log_every: int = Field(10, gt=0)
    val_every: int = Field(500, gt=0)
    checkpoint_every: int = Field(500, gt=0)
    num_workers: int = Field(0, ge=0)
    device: str = "auto"


class TrainingOptions(_Frozen):
    """One training run."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = "0.1.0"
    model: ModelOptions = ModelOptions()
    data: DataOptions
    losses: LossWeights = LossWeights()
    train: TrainOptions
    #: Where checkpoints, curves and the final model go (relative paths: to the working
    #: directory, as every other path here).
    out_dir: Path = Path("runs")


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """``-opt FILE`` and repeatable ``--set KEY=VALUE`` (a YAML value) for a command."""
    parser.add_argument("-opt", "--options", type=Path, required=True, help="YAML option file")
    parser.add_argument(
        "--set",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an option, e.g. --set train.iterations=10",
    )


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {text!r} is not KEY=VALUE")
    return key, yaml.safe_load(value)


def _problem(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    return f"{where}: " + ("unknown option" if error["type"] == "extra_forbidden" else error["msg"])


def read_options(
    path: Path, model: type[OptionsT], *, overrides: dict[str, Any] | None = None
) -> OptionsT:
    """Read a YAML option file, apply dotted overrides and validate it into ``model``.

    Shared by every ``python -m training`` command.

    Raises
    ------
    OptionsError
        One line naming the file and every bad key.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionsError(f"{path}: no such option file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise OptionsError(f"{path}: not readable YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise OptionsError(f"{path}: the top level must be a mapping of options")
    for dotted, value in (overrides or {}).items():
        target = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise OptionsError(f"{path}: --set {dotted}: {key} is not a mapping")
        target[leaf] = value
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise OptionsError(f"{path}: {problems}") from None


def load_options(path: Path, *, overrides: dict[str, Any] | None = None) -> TrainingOptions:
    """Read and validate an option file.

    Parameters
    ----------
    path : Path
        The YAML file.
    overrides : dict, optional
        Dotted keys replacing values from the file (``{"train.iterations": 10}``).

    Raises
    ------
    OptionsError
        Naming the file and every bad key.
    """
    return read_options(path, TrainingOptions, overrides=overrides)
