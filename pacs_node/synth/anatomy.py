"""Body proportions, pose and uptake of one synthetic patient and scan.

:class:`BodyPlan` turns a :class:`BodyHabitus` into landmark levels (fractions of stature
down from the vertex) and body-part thicknesses (cm); :class:`Pose` draws how the patient lies
on the table for one scan; :class:`Frame` maps body coordinates to pixels of the anterior
frame; :class:`Uptake` draws the scan-to-scan variation of tracer uptake; :class:`Painter`
draws shapes given in body coordinates into a :class:`~pacs_node.synth.raster.Scene`. All
numbers are rounded textbook figures, good enough for a phantom and no more.

Sources (approximate): adult segment lengths and widths as fractions of stature from Winter,
*Biomechanics and Motor Control of Human Movement*, 4th ed. 2009, fig. 4.1 (after Drillis &
Contini 1966); children's head and leg fractions from rounded growth-reference medians; head
length from Farkas, *Anthropometry of the Head and Face*, 1994; bladder capacity
``30 x (age + 2)`` ml from Koff, Urology 1983; bone-to-soft-tissue ratios of Tc-99m MDP from
Fogelman et al., *An Atlas of Clinical Nuclear Medicine*, and the EANM bone scintigraphy
guideline (Van den Wyngaert et al., EJNMMI 2016).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pacs_node.synth.lesions import BoneSite
from pacs_node.synth.phantom import REFERENCE_AGES_YEARS, BodyHabitus
from pacs_node.synth.raster import Point, Scene

# Fractions of stature at REFERENCE_AGES_YEARS: vertex-to-chin, chin-to-shoulder line and
# sole-to-crotch. Infants have big heads, short necks and short legs.
_HEAD = np.array(
    [0.25, 0.235, 0.22, 0.2, 0.18, 0.165, 0.155, 0.148, 0.142, 0.136, 0.132, 0.13, 0.13]
)
_NECK = np.array(
    [0.025, 0.027, 0.03, 0.033, 0.036, 0.039, 0.041, 0.042, 0.043, 0.044, 0.045, 0.045, 0.045]
)
_LEGS = np.array([0.32, 0.35, 0.37, 0.4, 0.43, 0.45, 0.46, 0.47, 0.475, 0.48, 0.48, 0.48, 0.48])
# Glabella-opisthocranion head length, cm.
_HEAD_LENGTH_CM = np.array(
    [11.5, 14.0, 15.0, 16.5, 17.3, 17.8, 18.0, 18.3, 18.6, 19.0, 19.3, 19.5, 19.5]
)
#: Age (years) by which the long-bone growth plates have closed, by sex (roughly 2 years
#: earlier in girls; knee physes close at about 14-16 y in girls and 16-18 y in boys).
PHYSIS_CLOSURE_YEARS = {"F": 16.0, "M": 17.5}


@dataclass(frozen=True, slots=True)
class BodyPlan:
    """Landmark levels and thicknesses of one body.

    Levels are fractions of stature down from the vertex; ``*_cm`` are anterior-posterior
    thicknesses of body parts. ``growth`` is 1 while the growth plates are wide open and falls
    to 0 at closure; ``girth`` scales soft-tissue widths with weight for height.
    """

    age: float
    stature_cm: float
    head: float
    shoulder: float
    pubis: float
    hip: float
    knee: float
    ankle: float
    infant: float
    growth: float
    girth: float
    head_cm: float
    trunk_cm: float

    @classmethod
    def from_body(cls, body: BodyHabitus) -> BodyPlan:
        """Proportions for ``body``'s age and sex, thicknesses from its weight and height."""
        age = body.age_years
        head = float(np.interp(age, REFERENCE_AGES_YEARS, _HEAD))
        shoulder = head + float(np.interp(age, REFERENCE_AGES_YEARS, _NECK))
        pubis = 1.0 - float(np.interp(age, REFERENCE_AGES_YEARS, _LEGS)) - 0.015
        hip = pubis - 0.015  # femoral-head centres lie just above the symphysis
        ankle = 0.961  # malleoli at 0.039 of stature (Winter)
        closure = PHYSIS_CLOSURE_YEARS[body.sex]
        typical = BodyHabitus.typical(age, body.sex).weight_kg
        # Trunk depth from weight per height: about 22 cm in a 78 kg, 177 cm man, 14 cm at 6 y.
        trunk_cm = 3.3 * math.sqrt(body.weight_kg / (body.height_cm / 100.0))
        return cls(
            age=age,
            stature_cm=body.height_cm,
            head=head,
            shoulder=shoulder,
            pubis=pubis,
            hip=hip,
            knee=hip + 0.47 * (ankle - hip),
            ankle=ankle,
            infant=min(max((3.0 - age) / 3.0, 0.0), 1.0),
            growth=min(max((closure - age) / 3.0, 0.0), 1.0),
            girth=min(max(math.sqrt(body.weight_kg / typical), 0.85), 1.3),
            head_cm=float(np.interp(age, REFERENCE_AGES_YEARS, _HEAD_LENGTH_CM)),
            trunk_cm=trunk_cm,
        )

    @property
    def trunk(self) -> float:
        """Shoulder line to pubic symphysis, fraction of stature."""
        return self.pubis - self.shoulder

    def level(self, fraction: float) -> float:
        """Level ``fraction`` of the way down the trunk, from shoulder line to symphysis."""
        return self.shoulder + fraction * self.trunk

    def thickness(self, part: str) -> float:
        """Anterior-posterior thickness (cm) of a body part (head, neck, trunk, arm, forearm,
        hand, thigh, calf, foot); a foot seen from the front is as deep as it is long."""
        relative = {
            "neck": 0.55,
            "trunk": 1.0,
            "arm": 0.45,
            "forearm": 0.35,
            "hand": 0.2,
            "thigh": 0.7,
            "calf": 0.48,
        }
        if part == "head":
            return self.head_cm
        if part == "foot":
            return 0.152 * self.stature_cm
        if part not in relative:
            raise ValueError(f"body part {part!r} is unknown")
        return relative[part] * self.trunk_cm


@dataclass(frozen=True, slots=True)
class Pose:
    """How the patient lies for one sweep.

    Attributes
    ----------
    top_px : float
        Row of the vertex.
    centre_col : float
        Column of the body's midline (lateral shift from the table centre).
    angle : float
        In-plane rotation about the pelvis, radians (about +-3 degrees).
    abduction : tuple of float
        Arm abduction from the body's side, radians, for the image-left (patient's right)
        and image-right arm.
    carry : float
        Extra outward angle of the forearms (carrying angle), radians.
    stance : float
        How far apart the feet are, fraction of stature added at each ankle.
    """

    top_px: float
    centre_col: float
    angle: float
    abduction: tuple[float, float]
    carry: float
    stance: float

    @classmethod
    def sample(cls, rng: np.random.Generator, *, stature_px: float, cols: int, mm: float) -> Pose:
        """Draw a pose that keeps the arms inside a ``cols`` wide field of ``mm`` pixels where
        they fit at all; a very tall or broad adult's arms are cut off, as on a real camera."""
        # Outer edge of the arms hanging at the sides: about 0.15 of stature from the midline.
        slack = max(min(35.0 / mm, cols / 2.0 - 0.15 * stature_px - 2.0), 0.0)
        shift = float(np.clip(rng.normal(0.0, 15.0 / mm), -slack, slack))
        abducted = rng.random() < 0.35
        wanted = np.radians(rng.uniform(8.0, 20.0, 2) if abducted else rng.uniform(1.0, 5.0, 2))
        carry = math.radians(rng.uniform(2.0, 8.0))
        # Hand edge: shoulder + arm length x sin(abduction + carry) + hand half-width.
        room = (cols / 2.0 - abs(shift) - 4.0) / stature_px - 0.105 - 0.045
        arm = 0.186 + 0.146 + 0.06
        limit = math.asin(min(max(room / arm, 0.0), 1.0)) - carry
        abduction = tuple(float(min(a, max(limit, 0.0))) for a in wanted)
        return cls(
            top_px=float(rng.uniform(10.0, 30.0)) / mm,
            centre_col=cols / 2.0 + shift,
            angle=math.radians(float(np.clip(rng.normal(0.0, 1.5), -3.0, 3.0))),
            abduction=(abduction[0], abduction[1]),
            carry=carry,
            stance=float(rng.uniform(0.0, 0.02)),
        )


@dataclass(frozen=True, slots=True)
class Frame:
    """Maps body coordinates (fractions of stature) to pixels of the anterior frame.

    ``down`` runs from the vertex towards the feet, ``across`` from the midline towards the
    image's right (the patient's left seen from the front). The body is rotated by the pose's
    angle about the pubic symphysis.
    """

    stature_px: float
    pose: Pose
    pivot: float

    def p(self, down: float, across: float = 0.0) -> Point:
        """Pixel (row, col) of a body point."""
        y, x = (down - self.pivot) * self.stature_px, across * self.stature_px
        cos, sin = math.cos(self.pose.angle), math.sin(self.pose.angle)
        return (
            self.pose.top_px + self.pivot * self.stature_px + y * cos - x * sin,
            self.pose.centre_col + y * sin + x * cos,
        )

    def px(self, fraction: float) -> float:
        """A length in pixels from a fraction of stature."""
        return fraction * self.stature_px

    def tilt(self, angle: float) -> float:
        """An ellipse angle on the image from one in body coordinates."""
        return angle + self.pose.angle


@dataclass(frozen=True, slots=True)
class Uptake:
    """Tracer concentration relative to soft tissue, drawn for one scan.

    ``bone`` is the concentration in the reference bone (vertebral bodies); the other bone
    figures are multipliers of it: ``joint`` for the mostly cancellous ends of the long bones
    (rising with age as joints wear), ``physis`` for growth plates (0 once closed). Rounded
    so that a child's lumbar spine shows about 5-10 times the counts of the soft tissue beside
    it, as in normal MDP scans at 2-4 h.
    """

    bone: float
    skull: float
    ribs: float
    pelvis: float
    shaft: float
    joint: float
    physis: float
    kidney: float
    urine: float
    bladder_ml: float

    @classmethod
    def sample(cls, plan: BodyPlan, rng: np.random.Generator) -> Uptake:
        """Draw the uptake of one scan: bone-to-soft-tissue ratio, renal function, bladder
        filling and concentration, and joint uptake that rises with age."""
        degenerative = min(max((plan.age - 35.0) / 40.0, 0.0), 1.0)
        capacity = min(30.0 * (plan.age + 2.0), 500.0)  # Koff's formula, ml
        return cls(
            bone=float(rng.uniform(14.0, 24.0) * (1.0 + 0.25 * plan.growth)),
            skull=float(rng.uniform(1.0, 1.4)),
            ribs=float(rng.uniform(0.7, 0.95)),
            pelvis=float(rng.uniform(0.85, 1.1)),
            shaft=float(rng.uniform(0.45, 0.65)),
            joint=float(rng.uniform(0.3, 0.42) * (1.0 + 0.6 * degenerative * rng.random())),
            physis=float(plan.growth * rng.uniform(1.8, 2.8)),
            kidney=float(rng.uniform(2.5, 8.0)),
            urine=float(rng.uniform(60.0, 160.0)),
            bladder_ml=float(capacity * rng.uniform(0.2, 0.9)),
        )


BodyPoint = tuple[float, float]


def along(a: BodyPoint, b: BodyPoint, t: float, side_step: float = 0.0) -> BodyPoint:
    """The point ``t`` (a fraction) of the way from ``a`` to ``b``, moved ``side_step``
    (fraction of stature) sideways: towards +across when travelling down."""
    dd, da = b[0] - a[0], b[1] - a[1]
    norm = math.hypot(dd, da) or 1.0
    return (a[0] + t * dd - side_step * da / norm, a[1] + t * da + side_step * dd / norm)


@dataclass(frozen=True, slots=True)
class Limbs:
    """Joint centres of the arm and leg on one side, body coordinates.

    ``side`` is -1 on the image's left (the patient's right) and +1 on the image's right.
    """

    side: float
    shoulder: BodyPoint
    elbow: BodyPoint
    wrist: BodyPoint
    fingertip: BodyPoint
    hip: BodyPoint
    knee: BodyPoint
    ankle: BodyPoint

    @classmethod
    def place(cls, plan: BodyPlan, pose: Pose, side: float) -> Limbs:
        """Arms hang from the shoulders at the pose's abduction; femora converge to the knees.

        Segment lengths (fractions of stature, Winter 2009): upper arm 0.186, forearm 0.146,
        hand 0.108; an infant's arms are a little shorter.
        """
        shoulder = (plan.shoulder + 0.012, side * 0.105)
        upper = 0.186 * (1.0 - 0.08 * plan.infant)
        fore = 0.146 * (1.0 - 0.06 * plan.infant)
        hand = 0.108 * (1.0 - 0.05 * plan.infant)
        abduction = pose.abduction[0 if side < 0 else 1]
        elbow = (
            shoulder[0] + upper * math.cos(abduction),
            shoulder[1] + side * upper * math.sin(abduction),
        )
        angle = abduction + pose.carry
        wrist = (elbow[0] + fore * math.cos(angle), elbow[1] + side * fore * math.sin(angle))
        fingertip = (wrist[0] + hand * math.cos(angle), wrist[1] + side * hand * math.sin(angle))
        return cls(
            side=side,
            shoulder=shoulder,
            elbow=elbow,
            wrist=wrist,
            fingertip=fingertip,
            hip=(plan.hip, side * 0.05),
            knee=(plan.knee, side * (0.043 + 0.4 * pose.stance)),
            ankle=(plan.ankle, side * (0.042 + pose.stance)),
        )


class Painter:
    """Draws shapes given in body coordinates into a :class:`Scene`.

    Lengths are fractions of stature, depths fractions of the named body part's thickness
    (see :meth:`BodyPlan.thickness`). Collects named landmarks (anterior-frame pixels) and the
    bone sites where lesions may be placed.
    """

    def __init__(self, scene: Scene, plan: BodyPlan, frame: Frame, uptake: Uptake) -> None:
        self.scene, self.plan, self.frame, self.uptake = scene, plan, frame, uptake
        self.landmarks: dict[str, Point] = {}
        self.sites: list[BoneSite] = []
        self.sides = tuple(Limbs.place(plan, frame.pose, side) for side in (-1.0, 1.0))

    def rod(
        self,
        points: Sequence[BodyPoint],
        radius: float | Sequence[float],
        conc: float | Sequence[float],
        depth: float | Sequence[float],
        part: str,
        *,
        beam: float = 1.0,
        bone: bool = True,
    ) -> None:
        """A tube through ``points`` (see :meth:`Scene.path`)."""
        px = self.frame.px
        radii = px(radius) if isinstance(radius, int | float) else [px(r) for r in radius]
        pixels = [self.frame.p(*q) for q in points]
        thickness = self.plan.thickness(part)
        self.scene.path(pixels, radii, conc, depth, thickness, beam=beam, bone=bone)

    def blob(
        self,
        centre: BodyPoint,
        axes: tuple[float, float],
        conc: float,
        depth: float,
        part: str,
        *,
        angle: float = 0.0,
        beam: float = 1.0,
        wall: float = 0.0,
        bone: bool = True,
    ) -> None:
        """An ellipsoid (see :meth:`Scene.ellipsoid`); ``angle`` in body coordinates."""
        self.scene.ellipsoid(
            self.frame.p(*centre),
            (self.frame.px(axes[0]), self.frame.px(axes[1])),
            conc,
            depth,
            self.plan.thickness(part),
            angle=self.frame.tilt(angle),
            beam=beam,
            wall=self.frame.px(wall),
            bone=bone,
        )

    def band(
        self,
        centre: BodyPoint,
        towards: BodyPoint,
        axes: tuple[float, float],
        conc: float,
        part: str,
    ) -> None:
        """A transverse band across a long bone (a growth plate), its short semi-axis
        ``axes[0]`` along the bone's direction from ``centre`` to ``towards``."""
        angle = math.atan2(towards[1] - centre[1], towards[0] - centre[0])
        self.blob(centre, axes, conc, 0.5, part, angle=angle, beam=0.7)

    def mark(self, name: str, point: BodyPoint) -> None:
        """Record a landmark."""
        self.landmarks[name] = self.frame.p(*point)

    def site(
        self, name: str, start: BodyPoint, end: BodyPoint | None = None, weight: float = 1.0
    ) -> None:
        """Record a bone site (a point or a segment) where a lesion may sit."""
        self.sites.append(
            BoneSite(name, self.frame.p(*start), self.frame.p(*(end or start)), weight)
        )
