"""Focal bone lesions of the phantom and the record of where they are.

A lesion multiplies the bone uptake (never soft tissue or organs) inside a disc of the
projected image by its contrast: above 1 for a hot lesion (metastasis, fracture,
osteomyelitis: typically 1.5-5 times the local bone), below 1 for a photopenic one (lytic
metastasis, avascular necrosis, Ewing sarcoma: 0.2-0.6). Each :class:`Lesion` keeps its kind,
bone site, centre, radius and contrast so evaluation can measure lesion contrast later.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pacs_node.synth.raster import F32, Point


class LesionKind(enum.Enum):
    """Whether a lesion takes up more or less tracer than the bone around it."""

    HOT = "hot"  #: increased uptake: metastasis, fracture, osteomyelitis
    COLD = "cold"  #: photopenic defect: lytic metastasis, avascular necrosis


@dataclass(frozen=True, slots=True)
class BoneSite:
    """A place on the skeleton where a lesion may sit: a point or a segment of a bone.

    ``start`` and ``end`` are (row, col) pixels of the anterior frame; ``weight`` is the
    relative chance of a lesion here.
    """

    name: str
    start: Point
    end: Point
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Lesion:
    """One lesion as drawn.

    Attributes
    ----------
    kind : LesionKind
    site : str
        The bone site, e.g. ``"L3"``, ``"rib 7 R"``, ``"femur shaft L"``.
    centre : (row, col)
        Pixels of the anterior frame (patient's right on the image's left).
    radius_mm : float
        Radius of the disc the lesion covers.
    contrast : float
        Lesion uptake over the local bone uptake before blur: > 1 hot, < 1 cold.
    """

    kind: LesionKind
    site: str
    centre: Point
    radius_mm: float
    contrast: float

    def centre_in(self, view: Literal["anterior", "posterior"], cols: int) -> Point:
        """Centre in a view's frame; the posterior frame is mirrored (seen from behind)."""
        if view == "anterior":
            return self.centre
        return (self.centre[0], cols - 1 - self.centre[1])


@dataclass(frozen=True, slots=True)
class LesionModel:
    """How often and what lesions to draw.

    Parameters
    ----------
    probability : float
        Chance that a scan has any lesion at all.
    max_count : int
        A scan with lesions has 1 to ``max_count`` of them.
    hot_share : float
        Chance that a lesion is hot rather than cold.
    radius_mm : (float, float)
        Range of radii (1-4 cm diameter).
    hot_contrast, cold_contrast : (float, float)
        Ranges of contrast over local bone.
    """

    probability: float = 0.3
    max_count: int = 4
    hot_share: float = 0.75
    radius_mm: tuple[float, float] = (5.0, 20.0)
    hot_contrast: tuple[float, float] = (1.5, 5.0)
    cold_contrast: tuple[float, float] = (0.2, 0.6)

    def __post_init__(self) -> None:
        for name in ("probability", "hot_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"lesion {name} {value!r} is outside 0-1")
        if self.max_count < 1:
            raise ValueError(f"lesion max_count {self.max_count!r} is less than 1")
        if not 0.0 < self.radius_mm[0] <= self.radius_mm[1]:
            raise ValueError(f"lesion radius range {self.radius_mm!r} mm is not increasing")
        if not 1.0 < self.hot_contrast[0] <= self.hot_contrast[1]:
            raise ValueError(f"hot contrast range {self.hot_contrast!r} is not above 1")
        if not 0.0 <= self.cold_contrast[0] <= self.cold_contrast[1] < 1.0:
            raise ValueError(f"cold contrast range {self.cold_contrast!r} is not in 0-1")

    def sample(self, sites: Sequence[BoneSite], rng: np.random.Generator) -> tuple[Lesion, ...]:
        """Draw the lesions of one scan at bone sites chosen by weight.

        Parameters
        ----------
        sites : sequence of BoneSite
            Candidate places; a lesion sits at a uniform point of its site's segment.
        rng : numpy.random.Generator
            Only this scan's lesion stream, so lesions on or off leave the rest unchanged.

        Returns
        -------
        tuple of Lesion
        """
        if not sites or rng.random() >= self.probability:
            return ()
        weights = np.array([site.weight for site in sites], dtype=np.float64)
        count = int(rng.integers(1, self.max_count + 1))
        chosen = rng.choice(len(sites), size=count, replace=False, p=weights / weights.sum())
        lesions = []
        for index in chosen:
            site, t = sites[int(index)], float(rng.random())
            hot = rng.random() < self.hot_share
            low, high = self.hot_contrast if hot else self.cold_contrast
            lesions.append(
                Lesion(
                    kind=LesionKind.HOT if hot else LesionKind.COLD,
                    site=site.name,
                    centre=(
                        site.start[0] + t * (site.end[0] - site.start[0]),
                        site.start[1] + t * (site.end[1] - site.start[1]),
                    ),
                    radius_mm=float(rng.uniform(*self.radius_mm)),
                    contrast=float(rng.uniform(low, high)),
                )
            )
        return tuple(lesions)


def lesion_gain(shape: tuple[int, int], lesions: Sequence[Lesion], pixel_mm: float) -> F32:
    """Multiplier of bone uptake: the lesions' contrasts on discs with a one-pixel soft edge.

    Parameters
    ----------
    shape : (rows, cols)
    lesions : sequence of Lesion
        Overlapping lesions multiply.
    pixel_mm : float

    Returns
    -------
    ndarray of float32, shape ``shape``
        1 away from lesions.
    """
    gain = np.ones(shape, dtype=np.float32)
    for lesion in lesions:
        radius = lesion.radius_mm / pixel_mm
        (row, col), reach = lesion.centre, radius + 2.0
        r0, r1 = max(math.floor(row - reach), 0), min(math.ceil(row + reach) + 1, shape[0])
        c0, c1 = max(math.floor(col - reach), 0), min(math.ceil(col + reach) + 1, shape[1])
        if r0 >= r1 or c0 >= c1:
            continue
        rr = np.arange(r0, r1, dtype=np.float32)[:, None]
        cc = np.arange(c0, c1, dtype=np.float32)[None, :]
        weight = np.clip(radius + 0.5 - np.hypot(rr - row, cc - col), 0.0, 1.0)
        gain[r0:r1, c0:c1] *= 1.0 + (lesion.contrast - 1.0) * weight
    return gain
