"""Soft tissue, kidneys, bladder and the injection site of the bone-scan phantom.

MDP that bone has not taken up by 2-4 h is in the soft tissue (a low background that follows
the body outline and grows with its thickness), passing through the kidneys (faint, seen best
from behind) and collected in the bladder (usually the hottest spot of the scan). A little
tracer often stays at the injection site (antecubital fossa, back of the hand, foot).
Kidney lengths by age are rounded ultrasound norms (about 4.5 cm at birth, 6 cm at 1 y, 8 cm at
5 y, 10 cm at 10 y, 11 cm in adults; Rosenbaum et al., AJR 1984).
"""

from __future__ import annotations

import math

import numpy as np

from pacs_node.synth.anatomy import Painter, along

_KIDNEY_AGES = np.array([0.0, 1.0, 5.0, 10.0, 18.0])
_KIDNEY_CM = np.array([4.5, 6.0, 8.0, 10.0, 11.0])


def draw_soft_tissue(pt: Painter) -> None:
    """Body outline as a map of anterior-posterior tissue thickness: head, neck, trunk, limbs.

    Widths are fractions of stature (shoulders 0.26, chest 0.17, hips 0.19 across; Winter
    2009), scaled by the plan's girth.
    """
    plan, girth = pt.plan, pt.plan.girth
    scene, frame = pt.scene, pt.frame
    head = plan.head
    skull = (0.35 + 0.05 * plan.infant) * head

    def tissue(points: list[tuple[float, float]], radii: list[float], part: str) -> None:
        pixels = [frame.p(*q) for q in points]
        scene.tissue(pixels, [frame.px(r) for r in radii], plan.thickness(part))

    tissue(
        [(skull, 0.0), (0.6 * head, 0.0), (0.92 * head, 0.0)],
        [skull, 0.34 * head, 0.24 * head],
        "head",
    )
    tissue([(0.9 * head, 0.0), (plan.shoulder, 0.0)], [0.033 * girth, 0.04 * girth], "neck")
    trunk_levels = (-0.03, 0.05, 0.15, 0.45, 0.65, 0.9, 1.0)
    trunk_widths = (0.06, 0.1, 0.09, 0.086, 0.08, 0.096, 0.09)
    tissue(
        [(plan.level(f), 0.0) for f in trunk_levels],
        [w * girth for w in trunk_widths],
        "trunk",
    )
    for limbs in pt.sides:
        s = limbs.side
        shoulder = (limbs.shoulder[0], limbs.shoulder[1] - s * 0.01)
        tissue([shoulder, limbs.elbow], [0.03 * girth, 0.024 * girth], "arm")
        tissue([limbs.elbow, limbs.wrist], [0.024 * girth, 0.018 * girth], "forearm")
        hand = along(limbs.wrist, limbs.fingertip, 0.85)
        tissue([limbs.wrist, hand], [0.021, 0.019], "hand")
        thigh = (limbs.hip[0] - 0.01, limbs.hip[1] + s * 0.005)
        tissue([thigh, limbs.knee], [0.058 * girth, 0.036 * girth], "thigh")
        tissue([limbs.knee, limbs.ankle], [0.036 * girth, 0.02 * girth], "calf")
        foot = (limbs.ankle[0] + 0.018, limbs.ankle[1] + s * 0.008)
        tissue([limbs.ankle, foot], [0.024, 0.028], "calf")


def draw_organs(pt: Painter, rng: np.random.Generator, injection_probability: float) -> None:
    """Kidneys at L1-L2 (the left higher), the bladder above the symphysis, and maybe the
    injection site.

    Parameters
    ----------
    pt : Painter
    rng : numpy.random.Generator
        Draws whether and where the injection site shows, its size and activity.
    injection_probability : float
        Chance that the injection site shows at all.
    """
    plan, up = pt.plan, pt.uptake
    length_cm = float(np.interp(plan.age, _KIDNEY_AGES, _KIDNEY_CM))
    semi = length_cm / 2.0 / plan.stature_cm
    for side, level in ((-1.0, 0.6), (1.0, 0.575)):
        centre = (plan.level(level), side * 0.046)
        axes = (semi, 0.5 * semi)
        # Upper poles lean towards the spine; kidneys lie near the back.
        pt.blob(centre, axes, up.kidney, 0.75, "trunk", angle=side * 0.25, beam=0.8, bone=False)
        pt.mark(f"kidney {'R' if side < 0 else 'L'}", centre)
    radius_cm = (3.0 * up.bladder_ml / (4.0 * math.pi)) ** (1.0 / 3.0)
    axes = (0.85 * radius_cm / plan.stature_cm, 1.15 * radius_cm / plan.stature_cm)
    bladder = (plan.pubis + 0.005 - axes[0], 0.0)
    pt.blob(bladder, axes, up.urine, 0.35, "trunk", beam=0.9 / 1.15, bone=False)
    pt.mark("bladder", bladder)
    if rng.random() >= injection_probability:
        return
    limbs = pt.sides[int(rng.integers(0, 2))]
    where = rng.random()
    if where < 0.7:  # antecubital fossa
        spot, part = along(limbs.elbow, limbs.wrist, 0.05), "arm"
    elif where < 0.9:  # back of the hand
        spot, part = along(limbs.wrist, limbs.fingertip, 0.35), "hand"
    else:
        spot, part = (limbs.ankle[0] + 0.015, limbs.ankle[1]), "calf"
    radius = float(rng.uniform(0.3, 0.8)) / plan.stature_cm  # 3-8 mm
    activity = float(rng.uniform(200.0, 3000.0))
    pt.blob(spot, (radius, radius), activity, 0.15, part, bone=False)
    pt.mark("injection", spot)
