"""Exponential moving average of the trainable weights (the weights that get shipped).

Only parameters that train are averaged: averaging a frozen SAM every step would cost a
copy of ~90 M parameters per step and change nothing.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """Shadow copies ``s ← decay·s + (1 − decay)·p`` of a module's trainable parameters.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first
    updates, so early shadows are not dominated by the random initialisation.
    """

    def __init__(self, module: nn.Module, *, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay {decay!r} must be in [0, 1)")
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the shadows towards the module's current parameters."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        names = dict(module.named_parameters())
        shadows = list(self.shadow.values())
        current = [names[name].detach() for name in self.shadow]
        torch._foreach_lerp_(shadows, current, 1.0 - decay)

    def state_dict_of(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The module's state dict with the shadows in place of the trained parameters."""
        state = {key: value.detach().clone() for key, value in module.state_dict().items()}
        state.update({name: shadow.clone() for name, shadow in self.shadow.items()})
        return state

    def state_dict(self) -> dict[str, object]:
        """For training checkpoints."""
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore from :meth:`state_dict`."""
        shadow = state["shadow"]
        if not isinstance(shadow, dict) or set(shadow) != set(self.shadow):
            raise ValueError("EMA state does not match the model's trainable parameters")
        for name, tensor in shadow.items():
            self.shadow[name].copy_(tensor)
        self.updates = int(state["updates"])  # type: ignore[call-overload]
