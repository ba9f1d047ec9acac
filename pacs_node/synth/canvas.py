"""Soft-edged drawing primitives for the phantom: rods and ellipses on count maps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

FloatImage = npt.NDArray[np.float64]
Point = tuple[float, float]
_Array = npt.NDArray[np.floating[Any]]
_Region = tuple[slice, slice]


class Canvas:
    """Anterior, posterior and soft-tissue maps drawn with soft-edged primitives.

    Each primitive is evaluated only inside its bounding box (float32), so a whole body
    costs a few milliseconds. Points are ``(row, col)`` in pixels; weights ramp from 0 to 1
    over ``edge`` pixels, a stand-in for the camera's resolution. ``tissue=True`` merges a
    shape into the soft-tissue outline (maximum) instead of adding uptake.
    """

    def __init__(self, rows: int, cols: int, *, tissue: float = 0.6, edge: float = 2.0) -> None:
        self._ant: _Array = np.zeros((rows, cols), dtype=np.float32)
        self._post: _Array = np.zeros((rows, cols), dtype=np.float32)
        self._tissue: _Array = np.zeros((rows, cols), dtype=np.float32)
        self._tissue_level = tissue
        self._edge = edge

    def anterior(self) -> _Array:
        """Relative activity seen from the front."""
        return self._tissue_level * self._tissue + self._ant

    def posterior(self) -> _Array:
        """Relative activity seen from behind, still in anterior (unmirrored) coordinates."""
        return self._tissue_level * self._tissue + self._post

    def capsule(
        self,
        p0: Point,
        p1: Point,
        radius: float,
        ant: float = 0.0,
        post: float = 0.0,
        *,
        stripes: int = 0,
        tissue: bool = False,
    ) -> None:
        """Draw a rod of ``radius`` from ``p0`` to ``p1``; ``stripes`` ripples it (vertebrae)."""
        lo, hi = (min(p0[0], p1[0]), min(p0[1], p1[1])), (max(p0[0], p1[0]), max(p0[1], p1[1]))
        win = self._window(lo, hi, (radius, radius))
        if win is None:
            return
        region, rr, cc = win
        dr, dc = p1[0] - p0[0], p1[1] - p0[1]
        t = np.clip(((rr - p0[0]) * dr + (cc - p0[1]) * dc) / max(dr * dr + dc * dc, 1e-9), 0, 1)
        weight = self._soft(radius - np.hypot(rr - p0[0] - t * dr, cc - p0[1] - t * dc))
        if stripes:
            weight *= 0.8 + 0.2 * np.cos(2.0 * np.pi * stripes * t)
        self._put(region, weight, ant, post, tissue)

    def ellipse(
        self,
        centre: Point,
        axes: Point,
        ant: float = 0.0,
        post: float = 0.0,
        *,
        angle: float = 0.0,
        shell: float | None = None,
        tissue: bool = False,
    ) -> None:
        """Draw a filled ellipse (row, col semi-axes), or a rim ``shell`` pixels thick."""
        reach = max(axes) + (shell or 0.0)
        win = self._window(centre, centre, (reach, reach))
        if win is None:
            return
        region, rr, cc = win
        cos, sin = math.cos(angle), math.sin(angle)
        u = (rr - centre[0]) * cos + (cc - centre[1]) * sin
        v = (cc - centre[1]) * cos - (rr - centre[0]) * sin
        d = np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2)
        radius = math.sqrt(axes[0] * axes[1])
        depth = (1.0 - d) * radius if shell is None else shell / 2.0 - np.abs(d - 1.0) * radius
        self._put(region, self._soft(depth), ant, post, tissue)

    def trunk(self, rows: list[float], half_widths: list[float], cx: float) -> None:
        """Merge a trunk whose half-width is interpolated between landmark rows."""
        win = self._window((rows[0], cx), (rows[-1], cx), (0.0, max(half_widths)))
        if win is not None:
            region, rr, cc = win
            hw = np.interp(rr, rows, half_widths).astype(np.float32)
            ends = self._soft(np.minimum(rr - rows[0], rows[-1] - rr))
            self._put(region, self._soft(hw - np.abs(cc - cx)) * ends, 0.0, 0.0, True)

    def ribs(self, first: Point, last_row: float, size: Point, ant: Point, post: Point) -> None:
        """Add 12 rib pairs as curved bands from the ``first`` (row, col of the spine) down
        to ``last_row``; ``size`` is (thickness, half-width of the cage), ``ant`` and ``post``
        are (slope, value): how many rib spacings a rib drops to the lateral wall, and uptake.
        """
        (top, cx), (thickness, half_width), count = first, size, 12
        spacing = (last_row - top) / (count - 1)
        drop = max(ant[0], post[0]) * spacing + thickness
        win = self._window((top - thickness, cx), (last_row + drop, cx), (0.0, half_width))
        if win is None:
            return
        region, rr, cc = win
        xn = np.abs(cc - cx) / half_width
        envelope = self._soft((1.0 - xn) * half_width) * self._soft((xn - 0.2) * half_width)
        for (slope, value), target in ((ant, self._ant), (post, self._post)):
            phase = (rr - top - slope * spacing * xn**2) / spacing
            dist = np.abs(phase - np.clip(np.rint(phase), 0, count - 1)) * spacing
            target[region] += value * envelope * self._soft(thickness / 2.0 - dist)

    def _soft(self, depth: _Array) -> _Array:
        weight: _Array = np.clip(depth / self._edge + 0.5, 0.0, 1.0)
        return weight

    def _window(self, lo: Point, hi: Point, reach: Point) -> tuple[_Region, _Array, _Array] | None:
        """Pixel box around ``lo``-``hi`` grown by ``reach`` (rows, cols) and the edge."""
        pr, pc = reach[0] + self._edge + 1.0, reach[1] + self._edge + 1.0
        rows, cols = self._ant.shape
        rmin, rmax = max(math.floor(lo[0] - pr), 0), min(math.ceil(hi[0] + pr) + 1, rows)
        cmin, cmax = max(math.floor(lo[1] - pc), 0), min(math.ceil(hi[1] + pc) + 1, cols)
        if rmin >= rmax or cmin >= cmax:
            return None
        rr = np.arange(rmin, rmax, dtype=np.float32)[:, None]
        cc = np.arange(cmin, cmax, dtype=np.float32)[None, :]
        return (slice(rmin, rmax), slice(cmin, cmax)), rr, cc

    def _put(self, region: _Region, weight: _Array, ant: float, post: float, tissue: bool) -> None:
        if tissue:
            np.maximum(self._tissue[region], weight, out=self._tissue[region])
        else:
            self._ant[region] += ant * weight
            self._post[region] += post * weight
