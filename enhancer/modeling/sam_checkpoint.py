"""SAM architecture specs, the factory that builds them and the checkpoint loader.

The official ``vit_b``, ``vit_l`` and ``vit_h`` specs are segment-anything's own
(``segment_anything/build_sam.py``); MedSAM's checkpoint is a ``vit_b`` with the same keys.
``small`` is a narrower, shallower encoder we train ourselves, and ``tiny`` exists for tests.
Checkpoints are plain state dicts (``torch.save(sam.state_dict())``), optionally wrapped as
``{"model": ...}`` or ``{"state_dict": ...}``, or ``.safetensors`` files.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Final

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

__all__ = [
    "SAM_SPECS",
    "SamCheckpointError",
    "SamSpec",
    "build_sam",
    "load_sam",
    "load_sam_weights",
]

logger = logging.getLogger(__name__)

IMAGE_SIZE: Final = 1024
PATCH_SIZE: Final = 16
PIXEL_MEAN: Final = (123.675, 116.28, 103.53)
PIXEL_STD: Final = (58.395, 57.12, 57.375)
# How many offending keys an error message quotes before it only counts the rest.
_QUOTED_KEYS: Final = 5
_WRAPPER_KEYS: Final = ("model", "state_dict")
_DDP_PREFIX: Final = "module."


@dataclass(frozen=True)
class SamSpec:
    """Hyper-parameters of one SAM variant; everything else is fixed by :func:`build_sam`.

    Attributes
    ----------
    encoder_embed_dim, encoder_depth, encoder_num_heads : int
        Width, number of blocks and attention heads of the ViT image encoder.
    encoder_global_attn_indexes : tuple of int
        Blocks that attend globally; the others attend within ``window_size`` windows.
    window_size : int
        Side of the windows, in tokens.
    prompt_embed_dim : int
        Channels of the image embedding, the prompt tokens and the mask decoder.
    decoder_depth, decoder_mlp_dim, decoder_num_heads : int
        The mask decoder's two-way transformer.
    iou_head_hidden_dim : int
        Hidden width of the mask-quality head.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256

    def __post_init__(self) -> None:
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not a multiple of "
                f"encoder_num_heads {self.encoder_num_heads}"
            )
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(
                f"encoder_global_attn_indexes {bad} lie outside the {self.encoder_depth} blocks"
            )


SAM_SPECS: Final[Mapping[str, SamSpec]] = MappingProxyType(
    {
        "vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11)),
        "vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23)),
        "vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31)),
        "small": SamSpec(256, 6, 4, (2, 5), decoder_mlp_dim=1024),
        "tiny": SamSpec(
            32,
            2,
            2,
            (1,),
            prompt_embed_dim=32,
            decoder_mlp_dim=64,
            decoder_num_heads=2,
            iou_head_hidden_dim=32,
        ),
    }
)


class SamCheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model it is loaded into."""


def build_sam(spec: SamSpec) -> Sam:
    """Build an untrained SAM exactly as ``segment_anything.build_sam._build_sam`` does.

    Parameters
    ----------
    spec : SamSpec
        The variant, e.g. ``SAM_SPECS["vit_b"]``.

    Returns
    -------
    segment_anything.modeling.Sam
        In eval mode; 1024x1024 canvas, 16-pixel patches, 64x64 token grid.
    """
    embedding_size = IMAGE_SIZE // PATCH_SIZE
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder_depth,
            embed_dim=spec.encoder_embed_dim,
            img_size=IMAGE_SIZE,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.encoder_global_attn_indexes,
            window_size=spec.window_size,
            out_chans=spec.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=spec.decoder_depth,
                embedding_dim=spec.prompt_embed_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    sam.eval()
    return sam


def load_sam(variant: str, checkpoint: str | os.PathLike[str]) -> Sam:
    """Build ``SAM_SPECS[variant]`` and load ``checkpoint`` into it strictly.

    See :func:`load_sam_weights` for the formats accepted and the errors raised.
    """
    if variant not in SAM_SPECS:
        raise ValueError(f"SAM variant {variant!r} is not one of {sorted(SAM_SPECS)}")
    sam = build_sam(SAM_SPECS[variant])
    load_sam_weights(sam, checkpoint, variant_name=variant)
    return sam


def load_sam_weights(sam: Sam, path: str | os.PathLike[str], *, variant_name: str) -> None:
    """Load an official SAM, MedSAM or own checkpoint into ``sam``, strictly.

    Parameters
    ----------
    sam : segment_anything.modeling.Sam
        The model, built for the checkpoint's variant.
    path : str or os.PathLike
        A ``torch.save`` file (plain state dict, or one under ``"model"`` / ``"state_dict"``;
        a ``module.`` prefix from DistributedDataParallel is dropped) or a ``.safetensors`` file.
    variant_name : str
        The name ``sam`` was built as; error messages quote it.

    Raises
    ------
    SamCheckpointError
        The file is missing or unreadable, holds no state dict, or its keys or tensor shapes
        differ from ``sam``'s. The message names the file and the first offending keys.
    """
    state_dict = read_state_dict(path)
    check_state_dict(sam, state_dict, path=path, variant_name=variant_name)
    sam.load_state_dict(state_dict, strict=True)
    logger.info("loaded %s weights from %s (%d tensors)", variant_name, path, len(state_dict))


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``torch.save`` or ``.safetensors`` file onto the CPU.

    Raises
    ------
    SamCheckpointError
        The file is missing, cannot be read, or does not hold a mapping of names to tensors.
    """
    file = Path(path)
    if not file.is_file():
        raise SamCheckpointError(f"{path}: no such checkpoint file")
    try:
        if file.suffix == ".safetensors":
            loaded: object = load_file(file, device="cpu")
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise SamCheckpointError(f"{path}: cannot be read as a checkpoint: {exc}") from exc
    if isinstance(loaded, Mapping):
        for wrapper in _WRAPPER_KEYS:
            if isinstance(loaded.get(wrapper), Mapping):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, Mapping):
        raise SamCheckpointError(
            f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors"
        )
    if not loaded:
        raise SamCheckpointError(f"{path}: holds an empty mapping, not a state dict")
    not_tensors = [str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise SamCheckpointError(
            f"{path}: not a state dict of tensors: {_quote(not_tensors)} hold other objects"
        )
    state_dict = {str(k): v for k, v in loaded.items()}
    if all(k.startswith(_DDP_PREFIX) for k in state_dict):
        state_dict = {k.removeprefix(_DDP_PREFIX): v for k, v in state_dict.items()}
    return state_dict


def check_state_dict(
    sam: Sam,
    state_dict: Mapping[str, torch.Tensor],
    *,
    path: str | os.PathLike[str],
    variant_name: str,
) -> None:
    """Raise :class:`SamCheckpointError` unless ``state_dict`` fits ``sam`` key for key."""
    expected: dict[str, torch.Tensor] = sam.state_dict()
    mismatched = [
        k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    problems = []
    if mismatched:
        key = mismatched[0]
        got, want = tuple(state_dict[key].shape), tuple(expected[key].shape)
        problem = f"{key} has shape {got} but {variant_name} expects {want}"
        if len(mismatched) > 1:
            problem += f" ({len(mismatched) - 1} more tensors differ in shape)"
        problems.append(problem)
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_quote(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_quote(unexpected)}")
    if problems:
        guesses = [name for name in guess_variants(state_dict) if name != variant_name]
        hint = f"; is this a {' or '.join(guesses)} checkpoint?" if guesses else ""
        raise SamCheckpointError(f"{path}: {'; '.join(problems)}{hint}")


def guess_variants(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the specs whose encoder width and depth match the checkpoint's, if any."""
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    if patch is None or patch.ndim != 4:
        return []
    blocks = [k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")]
    depth = 1 + max((int(b) for b in blocks if b.isdigit()), default=-1)
    return [
        name
        for name, spec in SAM_SPECS.items()
        if spec.encoder_embed_dim == patch.shape[0] and spec.encoder_depth == depth
    ]


def _quote(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_QUOTED_KEYS])
    return shown + (", ..." if len(keys) > _QUOTED_KEYS else "")
