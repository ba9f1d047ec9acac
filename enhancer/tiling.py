"""Tiled inference that equals a whole-frame pass.

Each tile's core is run with a margin of real neighbouring pixels at least as wide as
the network's receptive field, and only the core is kept, so no output pixel ever sees a
tile edge: there are no seams, and the result equals a whole-frame pass (to float
rounding). Tile corners sit on multiples of the U-Net's ``2 ** levels`` so its
down-sampling grid is the same in a tile as in the whole frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

__all__ = ["Window", "receptive_radius", "run_tiled", "windows"]

Window = tuple[slice, slice, slice, slice]  # crop (rows, cols), then core within the crop

# Runs a stage on cropped inputs; the offsets say where the crop starts in the frame.
TileFunction = Callable[[Sequence[torch.Tensor], tuple[int, int]], torch.Tensor]


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _spans(length: int, core: int, margin: int) -> Iterator[tuple[int, int, int, int]]:
    for start in range(0, length, core):
        stop = min(start + core, length)
        yield max(0, start - margin), min(length, stop + margin), start, stop


def windows(size: tuple[int, int], *, core: int, margin: int, multiple: int) -> list[Window]:
    """Crop and core slices covering an H×W frame.

    ``core`` and ``margin`` are rounded up to ``multiple``; H and W must be multiples of
    it already (the caller pads).
    """
    h, w = size
    if h % multiple or w % multiple:
        raise ValueError(f"frame {h}x{w} is not a multiple of {multiple} on each side")
    core = _ceil_to(max(core, multiple), multiple)
    margin = _ceil_to(margin, multiple)
    result: list[Window] = []
    for r0, r1, c_r0, c_r1 in _spans(h, core, margin):
        for q0, q1, c_q0, c_q1 in _spans(w, core, margin):
            result.append(
                (
                    slice(r0, r1),
                    slice(q0, q1),
                    slice(c_r0 - r0, c_r1 - r0),
                    slice(c_q0 - q0, c_q1 - q0),
                )
            )
    return result


def run_tiled(
    fn: TileFunction,
    inputs: Sequence[torch.Tensor],
    *,
    core: int,
    margin: int,
    multiple: int,
) -> torch.Tensor:
    """Apply ``fn`` tile by tile to B×C×H×W inputs and stitch the B×C'×H×W result."""
    h, w = inputs[0].shape[-2:]
    output: torch.Tensor | None = None
    for rows, cols, core_rows, core_cols in windows(
        (h, w), core=core, margin=margin, multiple=multiple
    ):
        piece = fn([t[..., rows, cols] for t in inputs], (rows.start, cols.start))
        if output is None:
            output = piece.new_empty((*piece.shape[:-2], h, w))
        output[
            ...,
            rows.start + core_rows.start : rows.start + core_rows.stop,
            cols.start + core_cols.start : cols.start + core_cols.stop,
        ] = piece[..., core_rows, core_cols]
    assert output is not None  # windows() always yields at least one tile
    return output


def receptive_radius(
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    in_channels: int,
    probe: int = 256,
    multiple: int = 1,
) -> int:
    """How far (in pixels) the output of ``fn`` at one pixel reaches into its input.

    Measured, not derived: the gradient of the probe's centre output pixel with respect
    to a random input is non-zero exactly where that output depends on the input (a
    difference of two outputs would miss weak, far dependences lost to float rounding).
    A radius that reaches the probe's edge means the probe was too small; it doubles.
    """
    generator = torch.Generator().manual_seed(0)
    size = _ceil_to(probe, max(multiple, 1))
    while True:
        centre = size // 2
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.rand((1, in_channels, size, size), generator=generator, requires_grad=True)
            out = fn(x)
            (grad,) = torch.autograd.grad(out[..., centre, centre].sum(), x)
        rows, cols = torch.nonzero(grad.abs().amax(dim=(0, 1)) > 0, as_tuple=True)
        if rows.numel() == 0:
            return 0
        radius = int(
            max(
                (rows - centre).abs().max().item(),
                (cols - centre).abs().max().item(),
            )
        )
        if radius < centre - 1:
            return radius
        size *= 2


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without any)."""
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")
