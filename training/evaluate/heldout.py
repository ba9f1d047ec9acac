"""Held-out phantom scans: truth λ, standard and rapid counts of one (seed, index).

The scans are drawn with the random streams ``pacs_node.synth`` uses, so scan ``i`` of seed
``S`` here is the scan ``pacs-node synth --seed S`` writes with index ``i``: truth λ (the
phantom's expected 20 cm/min counts), standard = Poisson(λ), rapid = binomial thinning of the
standard counts with p = 20 / speed (White & Lawson 2015; DOMAIN.md section 4). Evaluation uses
a seed that training does not (training's option files use 1 and 9001).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pacs_node.synth import (
    BonePhantom,
    Lesion,
    LesionModel,
    sample_counts,
    synthetic_patient,
    thin_counts,
)

__all__ = [
    "AGE_BANDS",
    "DEFAULT_SEED",
    "STANDARD_SPEED",
    "VIEWS",
    "HeldOutScan",
    "age_band",
    "held_out_scan",
]

DEFAULT_SEED = 4242
STANDARD_SPEED = 20
VIEWS = ("anterior", "posterior")
# pacs_node.synth draws a scan from these streams of (seed, index) (see synth._scan); using
# the same makes the held-out scans the synth command's scans.
_PHANTOM_STREAM, _COUNTS_STREAM, _THINNING_STREAM = 1, 2, 3

#: Body-size groups by age: (name, lowest age, age the next group starts), in years.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("infant <2", 0.0, 2.0),
    ("child 2-11", 2.0, 12.0),
    ("adolescent 12-17", 12.0, 18.0),
    ("adult 18+", 18.0, math.inf),
)


def age_band(age_years: float) -> str:
    """The body-size group of an age (see :data:`AGE_BANDS`)."""
    for name, low, high in AGE_BANDS:
        if low <= age_years < high:
            return name
    raise ValueError(f"age {age_years!r} is negative")


@dataclass(frozen=True)
class HeldOutScan:
    """One held-out phantom scan: truth, standard and rapid counts, and what evaluation needs."""

    index: int
    age_years: float
    truth: npt.NDArray[np.float64]  # (2, H, W) expected 20 cm/min counts
    standard: npt.NDArray[np.uint16]  # (2, H, W) Poisson draw of the truth
    rapid: npt.NDArray[np.uint16]  # (2, H, W) thinned standard counts
    body_mask: npt.NDArray[np.bool_]  # (2, H, W)
    lesions: tuple[Lesion, ...]
    scanned_rows: int
    pixel_spacing_mm: float


def held_out_scan(
    seed: int, index: int, speed_cm_min: int = 40, *, lesions: LesionModel | None = None
) -> HeldOutScan:
    """Draw one held-out scan (identical to ``pacs_node.synth``'s with default lesions).

    Parameters
    ----------
    seed, index : int
        Non-negative.
    speed_cm_min : {40, 60}
        Speed of the rapid scan (thinning p = 20 / speed).
    lesions : LesionModel, optional
        Lesions to draw; the phantom's default (30 % of scans) when absent.
    """
    if speed_cm_min <= STANDARD_SPEED:
        raise ValueError(f"rapid speed {speed_cm_min!r} cm/min is not above {STANDARD_SPEED}")
    patient = synthetic_patient(seed, index)
    phantom = (
        BonePhantom(patient.body) if lesions is None else BonePhantom(patient.body, lesions=lesions)
    )
    render = phantom.render(np.random.default_rng([seed, index, _PHANTOM_STREAM]))
    views = render.views
    standard = sample_counts(views, np.random.default_rng([seed, index, _COUNTS_STREAM]))
    thinning = np.random.default_rng([seed, index, _THINNING_STREAM])
    rapid = thin_counts(standard, thinning, STANDARD_SPEED / speed_cm_min)
    return HeldOutScan(
        index=index,
        age_years=patient.body.age_years,
        truth=np.stack([views.anterior, views.posterior]),
        standard=standard,
        rapid=rapid,
        body_mask=render.body_mask,
        lesions=render.lesions,
        scanned_rows=views.scanned_rows,
        pixel_spacing_mm=phantom.pixel_spacing_mm,
    )
