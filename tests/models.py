"""Tiny cascades with non-trivial weights, built in code for tests."""

from __future__ import annotations

from pathlib import Path

import torch

from enhancer.checkpoint import save_checkpoint
from enhancer.modeling.cascade import CascadeModel
from enhancer.modeling.registry import build_cascade_tiny, cascade_configs


def randomise(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Fresh blocks are the identity (zero residual scales); give every weight a value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def tiny_cascade(scale: float = 0.1) -> CascadeModel:
    """A tiny cascade whose stages and SPI all change their input."""
    model = build_cascade_tiny()
    randomise(model.stage1, 1, scale)
    randomise(model.stage2, 2, scale)
    randomise(model.spi, 3, scale)
    return model


def write_tiny_checkpoint(weights: Path, *, scale: float = 0.05) -> Path:
    """Save :func:`tiny_cascade` with its model card; return the weights path."""
    save_checkpoint(
        tiny_cascade(scale), cascade_configs["tiny"], weights, name="tiny-test", version="0.1"
    )
    return weights
