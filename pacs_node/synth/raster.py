"""Project 3-D shapes of uptake onto the two detectors of a whole-body sweep.

A :class:`Scene` collects shapes given in image pixels ``(row, col)`` of the anterior frame
(patient's right on the image's left), each with a depth: a fraction of the local
anterior-posterior body thickness (0 at the front surface, 1 at the back) and that thickness
in cm. A shape deposits ``concentration x chord length`` (cm of it along the line of sight)
into each view, attenuated by ``exp(-mu d)`` where ``d`` is its distance from that detector,
so what lies near the back is brighter in the posterior view. Deposits are split between a
*near* and a *far* layer in proportion to ``d``; the phantom blurs the far layer with a wider
Gaussian, because a parallel-hole collimator's resolution worsens roughly linearly with
distance. Bone is kept apart from everything else so lesions can scale bone uptake alone, and
a boolean map records which pixels bone covers (the ground-truth skeleton mask).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Point = tuple[float, float]
F32 = npt.NDArray[np.float32]
_Array = npt.NDArray[np.floating[Any]]
_Region = tuple[slice, slice]

#: Effective (broad-beam, scatter in the window) attenuation of 140 keV photons in soft
#: tissue, cm^-1; narrow-beam water is about 0.15 (NIST XCOM), buildup lowers it to ~0.12.
MU_PER_CM = 0.12
#: Distance from the detector (cm) at which a deposit lies wholly in the far layer.
FAR_DEPTH_CM = 20.0


class Scene:
    """Near and far layers of both views, bone apart, plus bone and soft-tissue maps.

    Parameters
    ----------
    rows, cols : int
        Size of the drawn field in pixels.
    pixel_mm : float
        Square pixel size, to turn chords in pixels into cm.
    mu_per_cm : float
        Linear attenuation coefficient of soft tissue.

    Attributes
    ----------
    bone, other : ndarray of float32, shape (2, 2, rows, cols)
        ``[view, layer]`` deposits: view 0 anterior, 1 posterior (still in anterior
        coordinates), layer 0 near, 1 far.
    bone_mask : ndarray of bool, shape (rows, cols)
        Pixels whose centre lies inside a bone.
    tissue_cm : ndarray of float32, shape (rows, cols)
        Anterior-posterior soft-tissue thickness along each line of sight, cm.
    """

    def __init__(self, rows: int, cols: int, *, pixel_mm: float, mu_per_cm: float = MU_PER_CM):
        self.bone: F32 = np.zeros((2, 2, rows, cols), dtype=np.float32)
        self.other: F32 = np.zeros((2, 2, rows, cols), dtype=np.float32)
        self.bone_mask = np.zeros((rows, cols), dtype=bool)
        self.tissue_cm: F32 = np.zeros((rows, cols), dtype=np.float32)
        self._px_cm = pixel_mm / 10.0
        self._mu = mu_per_cm

    def path(
        self,
        points: Sequence[Point],
        radius: float | Sequence[float],
        conc: float | Sequence[float],
        depth: float | Sequence[float],
        thickness_cm: float,
        *,
        beam: float = 1.0,
        bone: bool = True,
    ) -> None:
        """A tube along a polyline: a rod for two points, a rib or a mandible for more.

        Parameters
        ----------
        points : sequence of (row, col)
            Vertices of the centre line, pixels.
        radius, conc, depth : float or one per vertex
            In-plane radius (pixels), concentration relative to soft tissue, and depth as a
            fraction of ``thickness_cm``; per-vertex values are interpolated along the line.
        thickness_cm : float
            Local anterior-posterior thickness of the body part.
        beam : float
            Semi-axis along the line of sight over the in-plane radius (1 for a round
            cross-section, less for a flattened one).
        bone : bool
            Bone (counts towards the skeleton mask, scaled by lesions) or an organ.
        """
        geometry = self._along(points, radius)
        if geometry is None:
            return
        region, dist, rad, seg, frac = geometry
        inside = dist <= np.maximum(rad, 0.5)
        chord = (2.0 * beam * self._px_cm) * np.sqrt(np.maximum(rad * rad - dist * dist, 0.0))
        chord = np.where(inside & (chord == 0.0), beam * self._px_cm, chord)  # sub-pixel bones
        amount = chord * _lerp(conc, len(points), seg, frac)
        self._deposit(region, amount, _lerp(depth, len(points), seg, frac), thickness_cm, bone)
        if bone:
            self.bone_mask[region] |= inside

    def ellipsoid(
        self,
        centre: Point,
        axes: Point,
        conc: float,
        depth: float,
        thickness_cm: float,
        *,
        angle: float = 0.0,
        beam: float = 1.0,
        wall: float = 0.0,
        bone: bool = True,
    ) -> None:
        """A solid ellipsoid, or a shell ``wall`` pixels thick (calvarium, iliac wing).

        Parameters
        ----------
        centre : (row, col)
            Pixels.
        axes : (row, col)
            In-plane semi-axes in pixels before rotation by ``angle`` (radians, counter-
            clockwise on the image).
        conc, depth, thickness_cm, bone
            As for :meth:`path`.
        beam : float
            Semi-axis along the line of sight over the column semi-axis.
        wall : float
            Shell thickness in pixels; 0 for a solid ellipsoid.
        """
        win = self._window(centre, centre, max(axes))
        if win is None:
            return
        region, rr, cc = win
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = (
            (rr - centre[0]) * cos + (cc - centre[1]) * sin,
            (cc - centre[1]) * cos - (rr - centre[0]) * sin,
        )
        semi_beam = beam * axes[1] * self._px_cm
        outer = (u / axes[0]) ** 2 + (v / axes[1]) ** 2
        chord = 2.0 * semi_beam * np.sqrt(np.maximum(1.0 - outer, 0.0))
        if wall > 0.0:
            inner_axes = (max(axes[0] - wall, 0.1), max(axes[1] - wall, 0.1))
            inner = (u / inner_axes[0]) ** 2 + (v / inner_axes[1]) ** 2
            inner_beam = max(semi_beam - wall * self._px_cm, 0.0)
            chord -= 2.0 * inner_beam * np.sqrt(np.maximum(1.0 - inner, 0.0))
        inside = outer <= max(1.0, (0.5 / min(axes)) ** 2)
        self._deposit(region, conc * np.maximum(chord, 0.0), depth, thickness_cm, bone)
        if bone:
            self.bone_mask[region] |= inside

    def tissue(self, points: Sequence[Point], radius: Sequence[float], thickness_cm: float) -> None:
        """Merge a soft-tissue limb or trunk along a polyline into the thickness map.

        The cross-section is an ellipse: ``thickness_cm`` deep on the centre line, tapering to
        zero at ``radius`` pixels (one per vertex) from it. Overlaps keep the thicker part.
        """
        geometry = self._along(points, radius)
        if geometry is not None:
            region, dist, rad, _, _ = geometry
            depth = thickness_cm * np.sqrt(np.maximum(1.0 - (dist / rad) ** 2, 0.0))
            np.maximum(self.tissue_cm[region], depth, out=self.tissue_cm[region])

    def _along(
        self, points: Sequence[Point], radius: float | Sequence[float]
    ) -> tuple[_Region, _Array, _Array, npt.NDArray[np.intp], _Array] | None:
        """Distance to a tapered polyline, its radius there, and where along it (segment
        index and fraction) each pixel of the bounding window is nearest.

        Where segments overlap, a pixel belongs to the one it lies deepest inside, so joints
        of a bent tube are not counted twice.
        """
        pts = np.asarray(points, dtype=np.float32)
        radii = np.broadcast_to(np.asarray(radius, dtype=np.float32), (len(pts),))
        reach = float(radii.max())
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        win = self._window((float(lo[0]), float(lo[1])), (float(hi[0]), float(hi[1])), reach)
        if win is None:
            return None
        region, rr, cc = win
        best: tuple[_Array, _Array, npt.NDArray[np.intp], _Array] | None = None
        for k in range(max(len(pts) - 1, 1)):
            a, b = pts[k], pts[min(k + 1, len(pts) - 1)]
            dr, dc = float(b[0] - a[0]), float(b[1] - a[1])
            norm = max(dr * dr + dc * dc, 1e-9)
            t = np.clip(((rr - a[0]) * dr + (cc - a[1]) * dc) / norm, 0.0, 1.0)
            dist = np.hypot(rr - a[0] - t * dr, cc - a[1] - t * dc)
            rad = radii[k] + t * (radii[min(k + 1, len(pts) - 1)] - radii[k])
            if best is None:
                best = (dist, rad, np.zeros(dist.shape, dtype=np.intp), t)
                continue
            better = rad - dist > best[1] - best[0]
            best = (
                np.where(better, dist, best[0]),
                np.where(better, rad, best[1]),
                np.where(better, k, best[2]),
                np.where(better, t, best[3]),
            )
        assert best is not None
        return region, *best

    def _deposit(
        self,
        region: _Region,
        amount: _Array,
        depth: float | _Array,
        thickness_cm: float,
        bone: bool,
    ) -> None:
        target = self.bone if bone else self.other
        for view, distance in enumerate((depth * thickness_cm, (1.0 - depth) * thickness_cm)):
            seen = amount * np.exp(-self._mu * distance)
            far = seen * np.clip(np.asarray(distance) / FAR_DEPTH_CM, 0.0, 1.0)
            target[view, 0][region] += seen - far
            target[view, 1][region] += far

    def _window(self, lo: Point, hi: Point, reach: float) -> tuple[_Region, _Array, _Array] | None:
        """Pixel box around ``lo``-``hi`` grown by ``reach`` and a pixel."""
        rows, cols = self.bone_mask.shape
        grow = reach + 1.5
        rmin, rmax = max(math.floor(lo[0] - grow), 0), min(math.ceil(hi[0] + grow) + 1, rows)
        cmin, cmax = max(math.floor(lo[1] - grow), 0), min(math.ceil(hi[1] + grow) + 1, cols)
        if rmin >= rmax or cmin >= cmax:
            return None
        rr = np.arange(rmin, rmax, dtype=np.float32)[:, None]
        cc = np.arange(cmin, cmax, dtype=np.float32)[None, :]
        return (slice(rmin, rmax), slice(cmin, cmax)), rr, cc


def _lerp(
    value: float | Sequence[float], count: int, seg: npt.NDArray[np.intp], frac: _Array
) -> float | _Array:
    """Interpolate per-vertex ``value`` at segment ``seg``, fraction ``frac``; a scalar
    stays a scalar."""
    if isinstance(value, int | float):
        return float(value)
    vals = np.asarray(value, dtype=np.float32)
    if len(vals) != count:
        raise ValueError(f"{len(vals)} values for a path of {count} points")
    nxt = np.minimum(seg + 1, count - 1)
    result: _Array = vals[seg] + frac * (vals[nxt] - vals[seg])
    return result


def gaussian_blur(image: _Array, sigma_px: float) -> F32:
    """Separable Gaussian blur, zero outside the image (numpy only).

    Parameters
    ----------
    image : ndarray, shape (rows, cols)
    sigma_px : float
        Standard deviation in pixels; FWHM = 2.355 sigma.

    Returns
    -------
    ndarray of float32, same shape
        Same sum as ``image`` except what the kernel spreads past the border.
    """
    if sigma_px <= 0:
        return image.astype(np.float32)
    half = max(1, math.ceil(3.0 * sigma_px))
    taps = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma_px) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = image.astype(np.float32)
    for axis in (0, 1):
        src = out
        out = taps[half] * src
        n = src.shape[axis]
        for shift in range(1, min(half, n - 1) + 1):
            lead = [slice(None), slice(None)]
            lag = [slice(None), slice(None)]
            lead[axis], lag[axis] = slice(shift, None), slice(None, n - shift)
            out[tuple(lead)] += taps[half + shift] * src[tuple(lag)]
            out[tuple(lag)] += taps[half - shift] * src[tuple(lead)]
    return out
