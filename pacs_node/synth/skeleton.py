"""The skeleton of the bone-scan phantom, drawn bone by bone in body coordinates.

Levels are fractions of stature down from the vertex, ``across`` fractions of stature from the
midline (negative: the patient's right, on the image's left in the anterior view); depths are
fractions of the body part's anterior-posterior thickness (0 front, 1 back). Sizes are rounded
adult proportions (vertebral bodies about 2 cm wide in the neck and 5 cm in the lumbar spine,
femoral shaft 2.5 cm, ribs about 1 cm high; Gray's Anatomy, 42nd ed.) scaled with stature.

Uptake follows the normal Tc-99m MDP pattern (Fogelman et al., *An Atlas of Clinical Nuclear
Medicine*; EANM guideline 2016): the axial skeleton and the joints are brighter than the long
bone shafts; the posterior view shows the spine and scapulae best; in children the growth
plates (physes) at the ends of the long bones are the brightest bones of all until they close.
"""

from __future__ import annotations

import itertools
import math

from pacs_node.synth.anatomy import Limbs, Painter, along

_SIDE_NAMES = {-1.0: "R", 1.0: "L"}
# Half-widths of the rib cage at ribs 1-12, thousandths of stature (widest at ribs 7-8).
_RIB_HALF_WIDTH = (45, 58, 66, 71, 75, 77, 78, 77, 74, 69, 60, 48)


def draw_skeleton(painter: Painter) -> None:
    """Draw every bone of the skeleton, with landmarks and lesion sites."""
    spine = _draw_spine(painter)
    _draw_skull(painter)
    _draw_thorax(painter, spine)
    _draw_pelvis(painter, spine)
    for limbs in painter.sides:
        _draw_arm(painter, limbs)
        _draw_leg(painter, limbs)


def _draw_skull(pt: Painter) -> None:
    """Calvarium as a shell (its rim seen edge-on is brighter), face and mandible in front."""
    plan, up = pt.plan, pt.uptake
    head, conc = plan.head, up.bone * up.skull
    semi = (0.39 * head, (0.32 + 0.05 * plan.infant) * head)
    beam = plan.head_cm / 2.0 / (semi[1] * plan.stature_cm)
    wall = (0.35 + 0.3 * (1.0 - plan.infant)) / plan.stature_cm  # 0.35-0.65 cm
    pt.blob((0.41 * head, 0.0), semi, conc, 0.5, "head", beam=beam, wall=wall)
    pt.blob((0.7 * head, 0.0), (0.12 * head, 0.24 * head), 0.7 * conc, 0.2, "head", beam=0.35)
    jaw = [(0.72 * head, -0.24 * head), (0.92 * head, -0.18 * head), (0.97 * head, 0.0)]
    mandible = [*jaw, *[(d, -a) for d, a in reversed(jaw[:-1])]]
    pt.rod(mandible, 0.035 * head, conc, [0.45, 0.2, 0.06, 0.2, 0.45], "head")
    pt.mark("skull", (0.4 * head, 0.0))
    pt.site("skull", (0.15 * head, -0.25 * head), (0.15 * head, 0.25 * head), weight=2.0)


def _draw_spine(pt: Painter) -> dict[str, tuple[float, float, float]]:
    """Vertebral bodies C2-L5 with disc gaps, pedicles and spinous processes, and the sacrum.

    Returns each vertebra's (centre level, pitch, half-width) by name.
    """
    plan, up = pt.plan, pt.uptake
    segments = (
        ("C", 2, 6, 0.78 * plan.head, plan.shoulder - 0.008, (0.0065, 0.0065), 0.55, "neck"),
        ("T", 1, 12, plan.shoulder - 0.008, plan.level(0.52), (0.0085, 0.0115), 0.68, "trunk"),
        ("L", 1, 5, plan.level(0.52), plan.level(0.83), (0.012, 0.0145), 0.64, "trunk"),
    )
    spine = {}
    for letter, first, count, top, bottom, (w0, w1), depth, part in segments:
        pitch = (bottom - top) / count
        for i in range(count):
            name, centre = f"{letter}{first + i}", top + (i + 0.5) * pitch
            width = w0 + (w1 - w0) * i / max(count - 1, 1)
            spine[name] = (centre, pitch, width)
            beam = 0.7 if letter == "L" else 0.85
            pt.blob((centre, 0.0), (0.36 * pitch, width), up.bone, depth, part, beam=beam)
            pt.mark(name, (centre, 0.0))
            if letter == "C":
                continue
            pt.site(name, (centre, 0.0))
            for side in (-1.0, 1.0):
                pedicle = (centre - 0.1 * pitch, side * 0.75 * width)
                axes = (0.2 * pitch, 0.3 * width)
                pt.blob(pedicle, axes, 0.8 * up.bone, depth + 0.12, part, beam=1.5)
            spinous = (centre + 0.3 * pitch, 0.0)
            pt.blob(spinous, (0.25 * pitch, 0.25 * width), 0.7 * up.bone, 0.9, part, beam=2.0)
    # Sacrum: a flat tapering wedge below L5, then the sacro-iliac joints along its sides.
    top = plan.level(0.83) + 0.15 * spine["L5"][1]
    height = 0.14 * plan.trunk
    wedge = [(top + f * height, 0.0) for f in (0.0, 0.35, 0.7, 1.0)]
    conc = up.bone * up.pelvis
    pt.rod(wedge, [0.026, 0.02, 0.011, 0.005], 0.8 * conc, 0.8, "trunk", beam=0.35)
    pt.mark("sacrum", wedge[1])
    pt.site("sacrum", wedge[0], wedge[2])
    for side in (-1.0, 1.0):
        joint = [(top + 0.05 * height, side * 0.026), (top + 0.6 * height, side * 0.017)]
        pt.rod(joint, 0.0045, 1.3 * conc, 0.72, "trunk")
    return spine


def _draw_thorax(pt: Painter, spine: dict[str, tuple[float, float, float]]) -> None:
    """Ribs, sternum, clavicles and scapulae."""
    plan, up = pt.plan, pt.uptake
    for k in range(1, 13):
        level, pitch, width = spine[f"T{k}"]
        half = _RIB_HALF_WIDTH[k - 1] / 1000.0
        for side in (-1.0, 1.0):
            ctrl = [
                (level, width + 0.004, 0.85, 1.0),
                (level - 0.3 * pitch, 0.45 * half, 0.92, 1.0),
                (level + 0.3 * pitch, 0.85 * half, 0.8, 1.0),
                (level + 1.3 * pitch, half, 0.5, 1.0),
                (level + 2.4 * pitch, 0.85 * half, 0.22, 0.85),
                (level + 3.2 * pitch, 0.55 * half, 0.1, 0.7),
                (level + 3.6 * pitch, 0.3 * half, 0.06, 0.6),
            ]
            if k >= 11:  # floating ribs end in the flank
                ctrl = [*ctrl[:3], (level + 1.6 * pitch, 0.95 * half, 0.55, 1.0)]
            elif k >= 8:  # false ribs join the costal margin
                ctrl = ctrl[:6]
            pts = _smooth(ctrl)
            path = [(q[0], side * q[1]) for q in pts]
            ribs = [up.bone * up.ribs * q[3] for q in pts]
            pt.rod(path, 0.0033, ribs, [q[2] for q in pts], "trunk", beam=0.8)
            name = f"rib {k} {_SIDE_NAMES[side]}"
            pt.site(name, path[2], path[min(5, len(path) - 1)], weight=0.5)
            if k == 7:
                lateral = max(pts, key=lambda q: q[1])
                pt.mark(f"rib 7 lateral {_SIDE_NAMES[side]}", (lateral[0], side * lateral[1]))
    # Sternum: manubrium and body; in children the body is still separate sternebrae.
    conc = 0.9 * up.bone
    pt.blob((plan.level(0.07), 0.0), (0.012, 0.012), conc, 0.06, "trunk", beam=0.5)
    top, bottom = plan.level(0.13), plan.level(0.34)
    if plan.growth > 0.0:
        step = (bottom - top) / 4.0
        for i in range(4):
            centre = (top + (i + 0.5) * step, 0.0)
            pt.blob(centre, (0.35 * step, 0.0075), conc, 0.06, "trunk", beam=0.6)
    else:
        pt.rod([(top, 0.0), (bottom, 0.0)], 0.0075, conc, 0.06, "trunk", beam=0.6)
    pt.site("sternum", (top, 0.0), (bottom, 0.0), weight=0.5)
    shoulder = plan.shoulder
    for side in (-1.0, 1.0):
        clavicle = [(shoulder - 0.004, side * f) for f in (0.012, 0.05, 0.085, 0.108)]
        clavicle[1] = (shoulder - 0.012, clavicle[1][1])
        pt.rod(clavicle, 0.004, 0.85 * up.bone, [0.08, 0.1, 0.2, 0.35], "trunk")
        # Scapula: a triangular blade, broad at the glenoid, narrowing to the inferior angle.
        blade = [(plan.level(0.06), side * 0.072), (plan.level(0.16), side * 0.058)]
        blade.append((plan.level(0.26), side * 0.05))
        pt.rod(blade, [0.026, 0.014, 0.004], 0.8 * up.bone, 0.9, "trunk", beam=0.25)
        spine_of_scapula = [(plan.level(0.06), side * 0.035), (shoulder + 0.002, side * 0.1)]
        pt.rod(spine_of_scapula, 0.004, up.bone, 0.92, "trunk")
        pt.site(f"scapula {_SIDE_NAMES[side]}", blade[0], blade[2], weight=0.5)


def _draw_pelvis(pt: Painter, spine: dict[str, tuple[float, float, float]]) -> None:
    """Iliac wings, acetabula, pubic and ischial rami."""
    plan, up = pt.plan, pt.uptake
    conc = up.bone * up.pelvis
    crest = spine["L4"][0]
    for side in (-1.0, 1.0):
        name = _SIDE_NAMES[side]
        # The wing fans out from the acetabulum to the crest, whose rim is brighter.
        wing = [(crest + 0.03, side * 0.057), (plan.hip - 0.018, side * 0.048)]
        pt.rod(wing, [0.032, 0.014], 0.8 * conc, 0.55, "trunk", beam=0.4)
        rim = [(crest + 0.012, side * 0.03), (crest - 0.001, side * 0.055)]
        rim.append((crest + 0.015, side * 0.086))
        pt.rod(rim, 0.0035, conc, 0.5, "trunk")
        pt.site(f"ilium {name}", wing[0], (crest + 0.005, side * 0.06))
        hip = (plan.hip - 0.004, side * 0.05)
        pt.blob(hip, (0.016, 0.016), conc * up.joint, 0.5, "trunk")
        pubis = plan.pubis
        superior = [(plan.hip - 0.002, side * 0.04), (pubis - 0.006, side * 0.006)]
        pt.rod(superior, 0.0055, conc, [0.35, 0.12], "trunk")
        inferior = [
            (pubis + 0.004, side * 0.008),
            (pubis + 0.022, side * 0.03),
            (plan.hip + 0.012, side * 0.045),
        ]
        pt.rod(inferior, 0.0065, conc, [0.15, 0.6, 0.6], "trunk")
        pt.mark(f"hip {name}", hip)
    pt.site("pubis", (plan.pubis - 0.004, -0.01), (plan.pubis - 0.004, 0.01), weight=0.5)


def _draw_arm(pt: Painter, limbs: Limbs) -> None:
    """Humerus, radius and ulna, carpus and rays of the hand; physes while growing."""
    up, side, name = pt.uptake, limbs.side, _SIDE_NAMES[limbs.side]
    shoulder, elbow, wrist, tip = limbs.shoulder, limbs.elbow, limbs.wrist, limbs.fingertip
    joint, shaft, physis = up.bone * up.joint, up.bone * up.shaft, up.bone * up.physis
    pt.blob(shoulder, (0.012, 0.012), joint, 0.5, "arm")
    glenoid = (shoulder[0] - 0.002, shoulder[1] - side * 0.013)
    pt.blob(glenoid, (0.009, 0.005), joint, 0.6, "arm")
    humerus = [along(shoulder, elbow, 0.1), along(shoulder, elbow, 0.88)]
    pt.rod(humerus, 0.0055, shaft, 0.5, "arm")
    pt.blob(along(shoulder, elbow, 0.95), (0.009, 0.016), joint, 0.5, "arm")
    if physis > 0.0:
        plate = along(shoulder, elbow, 0.12)
        pt.band(plate, elbow, (0.004, 0.011), physis, "arm")
        pt.band(along(shoulder, elbow, 0.9), elbow, (0.003, 0.012), 0.5 * physis, "arm")
        pt.band(along(elbow, wrist, 0.93), wrist, (0.004, 0.013), physis, "forearm")
        pt.mark(f"humerus physis {name}", plate)
    for step in (-0.0065, 0.0065):  # radius and ulna
        bones = [along(elbow, wrist, 0.06, step), along(elbow, wrist, 0.97, step)]
        pt.rod(bones, 0.0036, 1.1 * shaft, 0.5, "forearm")
    pt.blob(along(wrist, tip, 0.15), (0.013, 0.016), 0.9 * joint, 0.5, "forearm", beam=0.8)
    for step in (-0.0066, -0.0022, 0.0022, 0.0066):
        ray = [along(wrist, tip, 0.3, step), along(wrist, tip, 0.92, step * 1.1)]
        pt.rod(ray, 0.002, 0.8 * up.bone, 0.5, "hand")
    thumb = [along(wrist, tip, 0.22, side * 0.012), along(wrist, tip, 0.5, side * 0.016)]
    pt.rod(thumb, 0.0022, 0.8 * up.bone, 0.5, "hand")
    for label, point in (("shoulder", shoulder), ("elbow", elbow), ("wrist", wrist)):
        pt.mark(f"{label} {name}", point)
    pt.site(f"humerus {name}", humerus[0], humerus[1])


def _draw_leg(pt: Painter, limbs: Limbs) -> None:
    """Femur, patella, tibia, fibula and foot; physes at hip, knee and ankle while growing."""
    plan, up, side, name = pt.plan, pt.uptake, limbs.side, _SIDE_NAMES[limbs.side]
    hip, knee, ankle = limbs.hip, limbs.knee, limbs.ankle
    joint, shaft, physis = up.bone * up.joint, up.bone * up.shaft, up.bone * up.physis
    trochanter = (hip[0] + 0.008, side * 0.083)
    pt.blob(hip, (0.012, 0.012), joint, 0.5, "trunk")
    pt.rod([hip, (hip[0] + 0.018, side * 0.075)], 0.007, 1.3 * shaft, 0.5, "trunk")
    pt.blob(trochanter, (0.012, 0.009), 0.9 * joint + 0.4 * physis, 0.5, "thigh")
    top = (hip[0] + 0.03, side * 0.074)
    pt.rod([top, along(top, knee, 0.8)], 0.0072, shaft, 0.5, "thigh")
    flare = [along(top, knee, 0.78), along(top, knee, 0.94)]
    pt.rod(flare, [0.0075, 0.014], 1.2 * shaft, 0.5, "thigh")
    pt.blob(along(top, knee, 0.97), (0.012, 0.022), joint, 0.5, "calf", beam=0.75)
    if plan.age >= 4.0:  # the patella ossifies at 3-6 years
        pt.blob(along(top, knee, 0.985), (0.01, 0.008), 0.8 * joint, 0.08, "calf")
    plate = along(top, knee, 1.0 - 0.018 / math.dist(top, knee))
    tibia_top, tibia_end = along(knee, ankle, 0.06), along(knee, ankle, 0.93)
    if physis > 0.0:
        pt.band(plate, knee, (0.0035, 0.021), 1.3 * physis, "calf")
        pt.band(along(knee, ankle, 0.07), ankle, (0.0035, 0.019), physis, "calf")
        pt.band(along(knee, ankle, 0.95), ankle, (0.003, 0.012), 0.8 * physis, "calf")
        pt.band(along(hip, trochanter, 0.3), trochanter, (0.003, 0.009), 0.6 * physis, "trunk")
    pt.blob(along(knee, ankle, 0.03), (0.01, 0.021), joint, 0.5, "calf", beam=0.75)
    pt.rod([tibia_top, tibia_end], [0.0085, 0.0065], shaft, 0.4, "calf")
    pt.rod([tibia_end, ankle], [0.0065, 0.011], 1.1 * shaft, 0.4, "calf")
    medial = (ankle[0], ankle[1] - side * 0.008)
    pt.blob(medial, (0.008, 0.006), joint, 0.45, "calf")
    fibula = [along(knee, ankle, 0.08, side * 0.016), along(knee, ankle, 0.97, side * 0.015)]
    pt.rod(fibula, 0.0028, shaft, 0.55, "calf")
    pt.blob(fibula[1], (0.008, 0.005), joint, 0.55, "calf")
    # The foot points at the anterior detector: tarsals end-on below the ankle, the heel
    # behind, the forefoot in front and a little outwards.
    pt.blob((ankle[0] + 0.018, ankle[1]), (0.017, 0.02), joint, 0.5, "foot", beam=1.5)
    pt.blob((ankle[0] + 0.028, ankle[1]), (0.012, 0.012), 1.2 * joint, 0.9, "foot")
    forefoot = (ankle[0] + 0.018, ankle[1] + side * 0.008)
    pt.blob(forefoot, (0.016, 0.018), 0.8 * joint, 0.25, "foot", beam=2.0)
    for label, point in (("knee", knee), ("ankle", ankle)):
        pt.mark(f"{label} {name}", point)
    pt.mark(f"femur physis {name}", plate)
    pt.mark(f"femur shaft {name}", along(top, knee, 0.45))
    pt.site(f"femur {name}", along(top, knee, 0.1), along(top, knee, 0.9), weight=1.5)
    pt.site(f"tibia {name}", tibia_top, along(knee, ankle, 0.6))


def _smooth(ctrl: list[tuple[float, float, float, float]]) -> list[tuple[float, ...]]:
    """One round of Chaikin corner cutting, keeping both ends: a smoother rib."""
    out: list[tuple[float, ...]] = [ctrl[0]]
    for a, b in itertools.pairwise(ctrl):
        out.append(tuple(0.75 * x + 0.25 * y for x, y in zip(a, b, strict=True)))
        out.append(tuple(0.25 * x + 0.75 * y for x, y in zip(a, b, strict=True)))
    out.append(ctrl[-1])
    return out
