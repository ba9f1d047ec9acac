"""A simple anatomical phantom: expected counts of a whole-body Tc-99m bone scan.

The phantom is a handful of soft-edged rods and ellipses (skeleton, kidneys, bladder, soft
tissue) placed from age-dependent body proportions. It stands behind the small
:class:`Phantom` protocol so that a realistic phantom can replace it without touching the
DICOM writer. Both views are drawn in anterior coordinates (patient's right on the image's
left); the posterior view is mirrored at the end because detector 2 sees the patient from
behind.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from pacs_node.synth.canvas import Canvas, FloatImage, Point

logger = logging.getLogger(__name__)

FRAME_ROWS = 1024
FRAME_COLS = 256
DEFAULT_PIXEL_SPACING_MM = 2.4
STANDARD_SPEED_CM_MIN = 20.0
#: Mean total counts of one view of a 70 kg adult at 20 cm/min (DOMAIN.md section 4).
ADULT_COUNTS_PER_VIEW = 1.35e6
#: Counts per pixel in the scanned field outside the body (scatter, room background).
BACKGROUND_COUNTS_PER_PIXEL = 0.03

Sex = Literal["M", "F"]

# Growth reference (rounded WHO/CDC medians); ages in years.
_AGES = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 30.0])
_HEIGHT_CM = {
    "M": np.array([50, 68, 76, 88, 103, 116, 128, 139, 150, 164, 174, 176, 177.0]),
    "F": np.array([49, 66, 74, 86, 102, 115, 127, 139, 152, 160, 163, 163, 163.0]),
}
_WEIGHT_KG = {
    "M": np.array([3.5, 7.9, 9.6, 12.2, 16.3, 20.7, 25.6, 31.4, 40.5, 51, 61, 68, 78.0]),
    "F": np.array([3.4, 7.3, 8.9, 11.5, 15.9, 20.2, 25.8, 32.5, 41.5, 50, 54, 57, 65.0]),
}
# Head height and sole-to-crotch length as fractions of stature: infants have big heads and
# short legs.
_HEAD = np.array(
    [0.25, 0.235, 0.22, 0.2, 0.18, 0.165, 0.155, 0.148, 0.142, 0.136, 0.132, 0.13, 0.13]
)
_LEGS = np.array([0.32, 0.35, 0.37, 0.4, 0.43, 0.45, 0.46, 0.47, 0.475, 0.48, 0.48, 0.48, 0.48])


@dataclass(frozen=True, slots=True)
class WholeBodyViews:
    """Expected counts (Poisson means) of the two views of one whole-body sweep.

    Attributes
    ----------
    anterior, posterior : FloatImage
        rows x cols float64 maps of expected counts per pixel, all >= 0. Row 0 is the head
        end of the field; the posterior view is as seen from behind.
    scanned_rows : int
        Rows covered by the sweep; rows from here on are zero in both maps.
    """

    anterior: FloatImage
    posterior: FloatImage
    scanned_rows: int


class Phantom(Protocol):
    """Anything that yields the expected counts of a whole-body bone scan."""

    def expected_counts(self, rng: np.random.Generator) -> WholeBodyViews:
        """Return both views' expected counts; ``rng`` draws the scan-to-scan variation."""
        ...


@dataclass(frozen=True, slots=True)
class BodyHabitus:
    """Patient facts that set the phantom's size and count level."""

    age_years: float
    sex: Sex
    height_cm: float
    weight_kg: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.age_years <= 110.0:
            raise ValueError(f"age {self.age_years!r} years is outside 0-110")
        if self.sex not in ("M", "F"):
            raise ValueError(f"sex {self.sex!r} is not 'M' or 'F'")
        if not 40.0 <= self.height_cm <= 220.0:
            raise ValueError(f"height {self.height_cm!r} cm is outside 40-220")
        if not 2.0 <= self.weight_kg <= 250.0:
            raise ValueError(f"weight {self.weight_kg!r} kg is outside 2-250")

    @classmethod
    def typical(cls, age_years: float, sex: Sex) -> BodyHabitus:
        """Median height and weight for an age and sex.

        Parameters
        ----------
        age_years : float
            Age in years (0-110).
        sex : {"M", "F"}
            Picks the growth reference.

        Returns
        -------
        BodyHabitus
        """
        if sex not in ("M", "F"):
            raise ValueError(f"sex {sex!r} is not 'M' or 'F'")
        height = float(np.interp(age_years, _AGES, _HEIGHT_CM[sex]))
        weight = float(np.interp(age_years, _AGES, _WEIGHT_KG[sex]))
        return cls(age_years=age_years, sex=sex, height_cm=height, weight_kg=weight)


def _mean_total_counts(body: BodyHabitus, speed_cm_min: float) -> float:
    """Mean counts of one view: activity follows weight with a floor for small children
    (EANM paediatric dosage card); dwell time per point scales with 1 / speed."""
    weight_ratio = min(max(body.weight_kg / 70.0, 0.08), 1.3)
    return float(ADULT_COUNTS_PER_VIEW * weight_ratio**0.85 * STANDARD_SPEED_CM_MIN / speed_cm_min)


@dataclass(frozen=True, slots=True)
class SimpleBonePhantom:
    """Geometric bone-scan phantom sized from a :class:`BodyHabitus`.

    Parameters
    ----------
    body : BodyHabitus
        Stature sets the length in the frame, weight the count level.
    speed_cm_min : float
        Table speed; expected counts scale with 20 / speed.
    pixel_spacing_mm : float
        Square pixel size of the frame.
    rows, cols : int
        Frame size (1024 x 256 by default).
    injection_site_probability : float
        Chance that residual tracer at the injection site (an elbow) shows.
    """

    body: BodyHabitus
    speed_cm_min: float = STANDARD_SPEED_CM_MIN
    pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM
    rows: int = FRAME_ROWS
    cols: int = FRAME_COLS
    injection_site_probability: float = 0.5

    def __post_init__(self) -> None:
        if self.pixel_spacing_mm <= 0:
            raise ValueError(f"pixel spacing {self.pixel_spacing_mm!r} mm is not positive")
        if self.speed_cm_min <= 0:
            raise ValueError(f"scan speed {self.speed_cm_min!r} cm/min is not positive")
        if self.body.height_cm * 10.0 / self.pixel_spacing_mm + 30 > self.rows:
            raise ValueError(f"a {self.body.height_cm!r} cm body does not fit {self.rows} rows")

    def expected_counts(self, rng: np.random.Generator) -> WholeBodyViews:
        """Expected counts of the anterior and posterior views.

        Parameters
        ----------
        rng : numpy.random.Generator
            Draws position in the field, arm pose, bladder filling, kidney and injection
            site activity, and the total count level (about +-15 %).

        Returns
        -------
        WholeBodyViews
            rows x cols float64 maps; posterior mirrored as seen from behind.
        """
        stature = self.body.height_cm * 10.0 / self.pixel_spacing_mm
        top = rng.uniform(10.0, 30.0) / self.pixel_spacing_mm
        scanned_rows = min(self.rows, math.ceil(top + stature + 40.0 / self.pixel_spacing_mm))
        canvas = Canvas(scanned_rows, self.cols)
        injection = bool(rng.random() < self.injection_site_probability)
        origin = (top, self.cols / 2.0 + rng.normal(0.0, 1.5))
        _draw_body(canvas, self.body.age_years, origin, stature, injection=injection, rng=rng)

        total = _mean_total_counts(self.body, self.speed_cm_min) * rng.uniform(0.85, 1.15)
        views = []
        for rel, view_total in (
            (canvas.anterior(), total),
            (canvas.posterior()[:, ::-1], total * rng.uniform(1.0, 1.1)),
        ):
            background = BACKGROUND_COUNTS_PER_PIXEL * STANDARD_SPEED_CM_MIN / self.speed_cm_min
            scale = (view_total - background * rel.size) / float(rel.sum())
            view = np.zeros((self.rows, self.cols))
            view[:scanned_rows] = rel * scale + background
            views.append(view)
        return WholeBodyViews(anterior=views[0], posterior=views[1], scanned_rows=scanned_rows)


def _draw_body(
    canvas: Canvas,
    age: float,
    origin: Point,
    h: float,
    *,
    injection: bool,
    rng: np.random.Generator,
) -> None:
    """Draw soft tissue, skeleton and organs into ``canvas`` in anterior coordinates.

    ``origin`` is the vertex (row, col) and ``h`` the stature in pixels; landmarks are
    fractions of stature down from the vertex and across from the midline. Values passed to
    the canvas are (anterior, posterior) uptake relative to soft tissue.
    """
    head = float(np.interp(age, _AGES, _HEAD))
    infant = min(max((4.0 - age) / 4.0, 0.0), 1.0)
    growth = min(max((18.0 - age) / 4.0, 0.0), 1.0)  # growth plates close by ~18 y
    sh = head + 0.045  # shoulder line
    pub = 1.0 - float(np.interp(age, _AGES, _LEGS)) - 0.015  # pubic symphysis
    trunk = pub - sh
    crest, hip, l5 = sh + 0.68 * trunk, pub - 0.06 * trunk, sh + 0.74 * trunk
    ankle = 0.955
    knee = hip + 0.53 * (ankle - hip)

    def p(down: float, across: float = 0.0) -> Point:
        return (origin[0] + down * h, origin[1] + across * h)

    cap, ell = canvas.capsule, canvas.ellipse
    # Skull: MDP spares the brain, so the calvarium shows as a rim; the face is anterior.
    skull = (0.48 * head * h, (0.33 + 0.07 * infant) * head * h)
    ell(p(0.48 * head), (skull[0] * 1.04, skull[1] * 1.06), tissue=True)
    ell(p(0.48 * head), skull, 0.6, 0.6)
    ell(p(0.48 * head), skull, 2.6, 2.8, shell=0.05 * head * h + 1.0)
    ell(p(0.8 * head), (0.15 * head * h, 0.22 * head * h), 2.2, 0.8)
    cap(p(head - 0.03), p(sh), 0.035 * h, tissue=True)
    # Spine C2-L5 as one rod rippled by 24 vertebrae, then the sacrum.
    cap(p(0.72 * head), p(l5), 0.011 * h, 2.6, 5.5, stripes=24)
    ell(p(l5 + 0.11 * trunk), (0.12 * trunk * h, 0.028 * h), 2.2, 4.5)
    rows = [p(f)[0] for f in (sh - 0.02, sh + 0.01, sh + 0.1 * trunk, sh + 0.62 * trunk)]
    rows += [p(pub - 0.12 * trunk)[0], p(pub + 0.03)[0]]
    canvas.trunk(rows, [w * h for w in (0.05, 0.095, 0.085, 0.075, 0.09, 0.085)], origin[1])
    # Ribs drop more steeply seen from the front; sternum anterior, scapulae posterior.
    rib_size = (0.014 * h, 0.092 * h)
    canvas.ribs(p(sh + 0.03 * trunk), p(sh + 0.52 * trunk)[0], rib_size, (2.4, 1.7), (0.9, 2.5))
    cap(p(sh + 0.02 * trunk), p(sh + 0.33 * trunk), 0.011 * h, 2.4, 0.5)
    angle = math.radians(rng.uniform(1.0, 5.0))  # arms hang almost straight
    upper, fore = (0.186 - 0.016 * infant) * h, (0.145 - 0.012 * infant) * h
    injection_side = -1.0 if rng.random() < 0.5 else 1.0
    for s in (-1.0, 1.0):
        cap(p(sh + 0.004, 0.015 * s), p(sh - 0.006, 0.09 * s), 0.006 * h, 2.4, 1.2)  # clavicle
        scapula = (0.13 * trunk * h, 0.032 * h)
        ell(p(sh + 0.13 * trunk, 0.065 * s), scapula, 0.5, 2.0, angle=0.25 * s)
        shoulder = p(sh + 0.012, 0.1 * s)
        elbow = (shoulder[0] + upper * math.cos(angle), shoulder[1] + s * upper * math.sin(angle))
        wrist = (elbow[0] + fore, elbow[1] - s * 0.01 * h)
        _draw_arm(canvas, (shoulder, elbow, wrist), h, growth)
        if injection and s == injection_side:
            hot, vein = rng.uniform(30.0, 120.0), (elbow[0] + 0.005 * h, elbow[1] - 0.008 * s * h)
            ell(vein, (0.005 * h + 0.8, 0.005 * h + 0.8), hot, 0.4 * hot)  # antecubital vein
        _draw_leg(canvas, (p(hip, 0.05 * s), p(knee, 0.045 * s), p(ankle, 0.05 * s)), s, h, growth)
        # Pelvis: iliac wing and crest, sacro-iliac joint, acetabulum, pubic ramus.
        wing, wing_axes = p(crest + 0.1 * trunk, 0.056 * s), (0.036 * h, 0.026 * h)
        ell(wing, wing_axes, 0.9, 1.2, angle=-0.5 * s)
        ell(wing, wing_axes, 1.0, 1.3, angle=-0.5 * s, shell=0.006 * h + 1.0)
        sacroiliac = p(crest + 0.09 * trunk, 0.026 * s), p(crest + 0.2 * trunk, 0.02 * s)
        cap(*sacroiliac, 0.006 * h, 0.8, 4.0)
        ell(p(hip, 0.05 * s), (0.02 * h, 0.02 * h), 2.6, 2.4)
        cap(p(pub, 0.004 * s), p(pub - 0.01, 0.05 * s), 0.008 * h, 2.8, 1.4)
        # Kidneys at L1-L2, brighter from behind; the left (image right) sits higher.
        kidney, level = rng.uniform(0.6, 1.4), sh + (0.56 if s < 0 else 0.53) * trunk
        ell(
            p(level, 0.047 * s), (0.1 * trunk * h, 0.018 * h), 1.4 * kidney, 4 * kidney, angle=s / 4
        )
    fill, bladder = rng.uniform(0.6, 1.2), rng.uniform(12.0, 30.0)
    bladder_axes = (0.055 * trunk * h * fill, 0.035 * h * fill)
    ell(p(pub - 0.06 * trunk), bladder_axes, bladder, 0.85 * bladder)


def _draw_arm(canvas: Canvas, joints: tuple[Point, Point, Point], h: float, growth: float) -> None:
    """Upper arm, forearm and hand hanging beside the trunk, from shoulder, elbow, wrist."""
    shoulder, elbow, wrist = joints
    hand = (wrist[0] + 0.045 * h, wrist[1])
    canvas.capsule(shoulder, elbow, 0.026 * h, tissue=True)
    canvas.capsule(elbow, wrist, 0.021 * h, tissue=True)
    canvas.ellipse(hand, (0.05 * h, 0.022 * h), tissue=True)
    canvas.ellipse(shoulder, (0.018 * h, 0.018 * h), 2.6, 2.6)
    canvas.capsule(shoulder, elbow, 0.007 * h, 2.0, 2.0)
    for dc in (-0.006 * h, 0.006 * h):  # radius and ulna
        canvas.capsule((elbow[0], elbow[1] + dc), (wrist[0], wrist[1] + dc), 0.004 * h, 1.5, 1.5)
    canvas.ellipse(hand, (0.04 * h, 0.017 * h), 1.8, 1.8)
    for row, col in ((shoulder[0] + 0.02 * h, shoulder[1]), (wrist[0] - 0.006 * h, wrist[1])):
        canvas.ellipse((row, col), (0.004 * h + 0.5, 0.012 * h), 5.0 * growth, 5.0 * growth)


def _draw_leg(
    canvas: Canvas, joints: tuple[Point, Point, Point], s: float, h: float, growth: float
) -> None:
    """Thigh, lower leg and foot from hip, knee, ankle; physes hot while growth plates open."""
    hip, knee, ankle = joints
    trochanter = (hip[0] + 0.012 * h, hip[1] + s * 0.03 * h)
    foot = (ankle[0] + 0.02 * h, ankle[1] + s * 0.01 * h)
    canvas.capsule((hip[0] - 0.02 * h, hip[1] - s * 0.005 * h), knee, 0.052 * h, tissue=True)
    canvas.capsule(knee, ankle, 0.033 * h, tissue=True)
    canvas.ellipse(foot, (0.026 * h, 0.03 * h), tissue=True)
    canvas.capsule(hip, trochanter, 0.009 * h, 2.4, 2.4)
    canvas.capsule(trochanter, knee, 0.009 * h, 2.2, 2.2)
    canvas.capsule(knee, ankle, 0.008 * h, 2.0, 2.0)
    fibula = s * 0.016 * h
    canvas.capsule(
        (knee[0] + 0.02 * h, knee[1] + fibula), (ankle[0], ankle[1] + fibula), 0.0035 * h, 1.0, 1.0
    )
    canvas.ellipse(knee, (0.02 * h, 0.022 * h), 2.6, 2.0)
    canvas.ellipse(foot, (0.022 * h, 0.024 * h), 2.4, 2.2)
    for row, col in (
        (knee[0] - 0.022 * h, knee[1]),
        (knee[0] + 0.02 * h, knee[1]),
        (ankle[0] - 0.008 * h, ankle[1]),
    ):
        canvas.ellipse((row, col), (0.004 * h + 0.5, 0.02 * h), 6.0 * growth, 6.0 * growth)
