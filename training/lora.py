"""Low-rank adapters (LoRA) on the attention projections of SAM's image encoder.

Fine-tuning all of an official SAM encoder (about 90 M parameters for vit_b) on a few
thousand phantom frames would overfit and needs the optimiser state of every weight. LoRA
(Hu et al., ICLR 2022; on SAM for medical images, Zhang & Liu 2023 "SAMed", and for bone
scans Liang et al., arXiv 2503.06976) freezes a linear layer ``y = W x + b`` and learns a
rank-r update::

    y = W x + b + (alpha / r) · B A x        A: r × in (Kaiming), B: out × r (zeros)

so an adapter starts as the identity change and trains a few hundred thousand parameters.
:func:`merge_lora` folds ``(alpha / r) · B A`` into ``W`` and puts the plain ``nn.Linear``
back, which gives the official segment-anything state-dict layout: the fine-tuned SAM loads
through :func:`enhancer.modeling.sam_checkpoint.load_sam_weights` like any other checkpoint,
and inference pays nothing for the adapters.

The frame-grid encoder (:mod:`enhancer.modeling.frame_encoder`) calls ``attn.qkv(x)`` and
``attn.proj(x)`` as modules, so the wrappers take part there as in segment-anything's own
``Attention.forward``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from torch import Tensor, nn

__all__ = ["LORA_TARGETS", "LoRALinear", "apply_lora", "lora_state_dict", "merge_lora"]

#: The attention projections an adapter may wrap in each encoder block.
LORA_TARGETS: Final = ("qkv", "proj")
# Parameter names that mark adapter weights in a state dict.
_LORA_PARAMETERS: Final = ("lora_a", "lora_b")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update.

    Parameters
    ----------
    base : nn.Linear
        The layer to adapt; its parameters are frozen here (``requires_grad=False``).
    rank : int
        r, the update's rank; at most ``min(in_features, out_features)``.
    alpha : float
        Scale numerator: the update is multiplied by ``alpha / rank``, so that changing the
        rank does not change the size of the initial steps (Hu et al., section 4.1).
    dropout : float
        Dropout on the adapter's input only, in [0, 1).

    Notes
    -----
    Input (..., in_features) float, output (..., out_features), as ``base``.
    """

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0 < rank <= min(base.in_features, base.out_features):
            raise ValueError(
                f"LoRA rank {rank!r} is not in 1..{min(base.in_features, base.out_features)} "
                f"for a {base.in_features}->{base.out_features} layer"
            )
        if not alpha > 0:
            raise ValueError(f"LoRA alpha {alpha!r} is not positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout {dropout!r} is not in [0, 1)")
        self.base = base
        base.requires_grad_(False)
        self.rank = rank
        self.alpha = float(alpha)
        self.scale = self.alpha / rank
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=dtype))
        # B = 0 makes the wrapped layer equal the base layer until B has trained.
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=dtype))
        # As nn.Linear initialises its weight (and the LoRA reference implementation, A).
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> Tensor:
        """The frozen base weight (out_features, in_features), without the update."""
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        """The frozen base bias (out_features,), if any."""
        return self.base.bias

    @property
    def in_features(self) -> int:
        """Input width, as the base layer's."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """Output width, as the base layer's."""
        return self.base.out_features

    def delta_weight(self) -> Tensor:
        """The update ``(alpha / r) · B A``, (out_features, in_features)."""
        return torch.mm(self.lora_b, self.lora_a) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        """``base(x) + (alpha / r) · B A dropout(x)``."""
        out: Tensor = self.base(x)
        return out + F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` whose weight includes the update (requires_grad as A's)."""
        layer = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        layer.weight.copy_(self.weight + self.delta_weight())
        if self.bias is not None:
            layer.bias.copy_(self.bias)
        layer.requires_grad_(self.lora_a.requires_grad)
        return layer

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def apply_lora(
    encoder: ImageEncoderViT,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: Sequence[str] = LORA_TARGETS,
) -> list[str]:
    """Wrap the attention projections of every encoder block in :class:`LoRALinear`.

    Only the wrapped layers' own weights are frozen here; freeze the rest of the model
    yourself (``sam.requires_grad_(False)`` before this call leaves only the adapters
    trainable).

    Parameters
    ----------
    encoder : segment_anything.modeling.ImageEncoderViT
        SAM's image encoder, changed in place.
    rank, alpha, dropout
        See :class:`LoRALinear`.
    targets : sequence of {"qkv", "proj"}
        Which projections of ``block.attn`` to wrap.

    Returns
    -------
    list of str
        Names of the wrapped layers relative to ``encoder``, e.g. ``"blocks.0.attn.qkv"``.

    Raises
    ------
    ValueError
        An unknown target, a block that already has adapters, or a bad rank or alpha.
    """
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        raise ValueError(
            f"LoRA targets {list(targets)!r} are not a non-empty subset of {list(LORA_TARGETS)}"
        )
    wrapped = []
    for index, block in enumerate(encoder.blocks):
        attn = block.attn
        for target in dict.fromkeys(targets):
            layer = getattr(attn, target)
            name = f"blocks.{index}.attn.{target}"
            if isinstance(layer, LoRALinear):
                raise ValueError(f"{name} already has a LoRA adapter")
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"{name} is a {type(layer).__name__}, not an nn.Linear")
            setattr(attn, target, LoRALinear(layer, rank=rank, alpha=alpha, dropout=dropout))
            wrapped.append(name)
    return wrapped


def lora_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """The adapters' parameters only (``...qkv.lora_a``, ``...qkv.lora_b``), detached.

    Parameters
    ----------
    module : nn.Module
        Any module holding :class:`LoRALinear` layers (a ``Sam``, its encoder, ...).

    Returns
    -------
    dict of str to Tensor
        Keys as in ``module.state_dict()``; empty when there are no adapters.
    """
    return {
        key: value.detach()
        for key, value in module.state_dict().items()
        if key.rsplit(".", 1)[-1] in _LORA_PARAMETERS
    }


def merge_lora(module: nn.Module) -> list[str]:
    """Fold every adapter into its base weight and put the plain ``nn.Linear`` back.

    Afterwards ``module.state_dict()`` has the layout it had before :func:`apply_lora`
    (for SAM: the official segment-anything keys) and the same outputs as the adapted model.

    Parameters
    ----------
    module : nn.Module
        Changed in place.

    Returns
    -------
    list of str
        Names of the merged layers relative to ``module``.
    """
    adapted = [
        (name, layer) for name, layer in module.named_modules() if isinstance(layer, LoRALinear)
    ]
    for name, layer in adapted:
        if not name:
            raise ValueError("merge_lora needs the module that holds the adapter, not the adapter")
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.merged())
    return [name for name, _ in adapted]
