"""Cascade checkpoints: safetensors weights and a JSON model card beside them.

``model.safetensors`` holds the weights; ``model.json`` says what they are: name,
version, the file's sha256, size, SAM variant, profiles, training data and metrics, and
the architecture. Loading checks the sha256, rebuilds the architecture the card names
(refusing one the registry does not know, or that differs from the registry's size),
and refuses missing, unexpected or wrongly shaped tensors with a message that names the
file and the mismatch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from enhancer.modeling.cascade import CascadeModel, Profile
from enhancer.modeling.registry import CascadeConfig, build_cascade, cascade_configs

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "ModelCard",
    "card_path",
    "file_sha256",
    "load_checkpoint",
    "save_checkpoint",
]

# Parameters each profile needs; a fast-only checkpoint may leave out the rest.
_PROFILE_PREFIXES = {
    Profile.FAST: ("stage1.",),
    Profile.CASCADE: ("stage1.", "stage2.", "prior.", "spi."),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is (written as JSON beside the weights)."""

    name: str
    version: str
    sha256: str
    size: str
    sam_variant: str
    profiles: tuple[str, ...]
    architecture: dict[str, Any]
    training_data: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> str:
        """The card as indented JSON."""
        data = asdict(self)
        data["profiles"] = list(self.profiles)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> ModelCard:
        """Read a card; raises :class:`CheckpointError` naming the file and the field."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: model card not found beside the weights") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: model card is not readable JSON ({exc})") from None
        try:
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                sha256=str(data["sha256"]).lower(),
                size=str(data["size"]),
                sam_variant=str(data["sam_variant"]),
                profiles=tuple(str(p) for p in data["profiles"]),
                architecture=dict(data["architecture"]),
                training_data=str(data.get("training_data", "")),
                metrics={str(k): float(v) for k, v in dict(data.get("metrics", {})).items()},
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: model card lacks or garbles {exc}") from None


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model ready for inference and the card it came with."""

    model: CascadeModel
    card: ModelCard
    path: Path


def card_path(weights: Path) -> Path:
    """``model.safetensors`` → ``model.json``."""
    return weights.with_suffix(".json")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    model: CascadeModel,
    config: CascadeConfig,
    weights: Path,
    *,
    name: str,
    version: str,
    profiles: tuple[Profile, ...] = (Profile.FAST, Profile.CASCADE),
    training_data: str = "",
    metrics: dict[str, float] | None = None,
) -> ModelCard:
    """Write ``weights`` (safetensors) and its model card; return the card.

    Only the parameters the listed profiles need are written, so a fast-only
    checkpoint carries no SAM weights.
    """
    if not profiles:
        raise ValueError("a checkpoint must serve at least one profile")
    prefixes = tuple({p for profile in profiles for p in _PROFILE_PREFIXES[Profile(profile)]})
    state = {
        key: tensor.detach().cpu().contiguous()
        for key, tensor in model.state_dict().items()
        if key.startswith(prefixes)
    }
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights), metadata={"name": name, "version": version})
    # safetensors creates the file 0600; weights are no secret, and a node running as
    # another user (or a package built from them) must read them.
    weights.chmod(0o644)
    card = ModelCard(
        name=name,
        version=version,
        sha256=file_sha256(weights),
        size=config.size,
        sam_variant=config.sam_variant,
        profiles=tuple(Profile(p).value for p in profiles),
        architecture=config.to_dict(),
        training_data=training_data,
        metrics=dict(metrics or {}),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    card_path(weights).write_text(card.to_json(), encoding="utf-8")
    return card


def _architecture(card: ModelCard, weights: Path, size: str | None) -> CascadeConfig:
    if size is not None and card.size != size:
        raise CheckpointError(f"{weights}: holds a {card.size!r} cascade, not {size!r}")
    if card.size not in cascade_configs:
        raise CheckpointError(
            f"{weights}: size {card.size!r} is not one of {sorted(cascade_configs)}"
        )
    try:
        config = CascadeConfig.from_dict(card.architecture)
    except ValueError as exc:
        raise CheckpointError(f"{card_path(weights)}: {exc}") from None
    known = cascade_configs[card.size]
    for field_name in ("size", "sam_variant", "stage1", "stage2", "spi_hidden"):
        if getattr(config, field_name) != getattr(known, field_name):
            raise CheckpointError(
                f"{weights}: {field_name} is {getattr(config, field_name)!r} in the card but "
                f"{getattr(known, field_name)!r} for size {card.size!r}"
            )
    return config


def _check_state(
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    needed: tuple[str, ...],
    weights: Path,
) -> None:
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(k for k in expected if k.startswith(needed) and k not in state)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensors (first: {', '.join(unexpected[:3])})"
        )
    for key in sorted(set(state) & set(expected)):
        if state[key].shape != expected[key].shape:
            problems.append(
                f"{key} has shape {tuple(state[key].shape)} but the model expects "
                f"{tuple(expected[key].shape)}"
            )
    if problems:
        raise CheckpointError(f"{weights}: " + "; ".join(problems))


def load_checkpoint(
    weights: Path,
    *,
    size: str | None = None,
    profile: Profile | None = None,
    map_location: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Load a cascade checkpoint after checking its sha256 and architecture.

    Parameters
    ----------
    weights : Path
        The ``.safetensors`` file; its model card is the ``.json`` beside it.
    size : str, optional
        Refuse a checkpoint of any other size.
    profile : Profile, optional
        Refuse a checkpoint that does not serve this profile. Without it, every profile
        the card lists must be loadable.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: no such checkpoint file")
    card = ModelCard.from_file(card_path(weights))
    actual = file_sha256(weights)
    if actual != card.sha256:
        raise CheckpointError(
            f"{weights}: sha256 is {actual} but its model card says {card.sha256}; "
            "the file is damaged or belongs to another card"
        )
    wanted = [Profile(profile)] if profile is not None else [Profile(p) for p in card.profiles]
    for p in wanted:
        if p.value not in card.profiles:
            raise CheckpointError(
                f"{weights}: serves profiles {list(card.profiles)}, not {p.value!r}"
            )
    config = _architecture(card, weights, size)
    model = build_cascade(config)
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from None
    needed = tuple({prefix for p in wanted for prefix in _PROFILE_PREFIXES[p]})
    _check_state(state, model.state_dict(), needed, weights)
    model.load_state_dict(state, strict=False)
    model.eval()
    return LoadedCheckpoint(model=model, card=card, path=weights)
