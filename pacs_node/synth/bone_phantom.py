"""A whole-body Tc-99m MDP bone-scan phantom for infants to adults.

:class:`BonePhantom` draws a skeleton (skull and face, vertebrae with disc gaps, ribs,
sternum, clavicles, scapulae, pelvis, long bones with brighter joints and, in children,
growth plates), soft tissue following the body outline, kidneys, bladder, an optional
injection site and optional hot and cold lesions, for a body sized from a
:class:`BodyHabitus` and a pose drawn per scan (position, small rotation, arm abduction).
Each view sees what lies near it brighter (soft-tissue attenuation) and sharper (collimator
resolution worsens with distance; about 6 mm FWHM at the body surface and 15 mm at 20 cm
depth for a low-energy high-resolution collimator, rounded from vendor data sheets). The
expected counts are scaled to a realistic total per view at the phantom's table speed.

Both views are drawn in anterior coordinates (patient's right on the image's left); the
posterior view and its masks are mirrored at the end because detector 2 sees the patient
from behind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pacs_node.synth.anatomy import BodyPlan, Frame, Painter, Pose, Uptake
from pacs_node.synth.lesions import Lesion, LesionModel, lesion_gain
from pacs_node.synth.organs import draw_organs, draw_soft_tissue
from pacs_node.synth.phantom import (
    BACKGROUND_COUNTS_PER_PIXEL,
    DEFAULT_PIXEL_SPACING_MM,
    FRAME_COLS,
    FRAME_ROWS,
    STANDARD_SPEED_CM_MIN,
    BodyHabitus,
    WholeBodyViews,
    mean_total_counts,
)
from pacs_node.synth.raster import MU_PER_CM, Point, Scene, gaussian_blur
from pacs_node.synth.skeleton import draw_skeleton

BoolFrames = npt.NDArray[np.bool_]
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True, slots=True)
class PhantomRender:
    """Everything one rendering of the phantom knows.

    Attributes
    ----------
    views : WholeBodyViews
        Expected counts of both views (the posterior as seen from behind).
    skeleton_mask : ndarray of bool, shape (2, rows, cols)
        Ground truth: pixels whose centre lies inside a bone, before blur; frame 0 anterior,
        frame 1 posterior (mirrored like the posterior view).
    body_mask : ndarray of bool, shape (2, rows, cols)
        Pixels inside the body outline, same layout.
    lesions : tuple of Lesion
        The lesions drawn; centres in anterior-frame pixels (see :meth:`Lesion.centre_in`).
    landmarks : mapping of str to (row, col)
        Named anatomical points in anterior-frame pixels, e.g. ``"L3"``, ``"bladder"``,
        ``"kidney L"``, ``"femur physis R"``, ``"femur shaft R"``, ``"injection"`` (only when
        the injection site shows).
    """

    views: WholeBodyViews
    skeleton_mask: BoolFrames
    body_mask: BoolFrames
    lesions: tuple[Lesion, ...]
    landmarks: Mapping[str, Point]


@dataclass(frozen=True, slots=True)
class BonePhantom:
    """Whole-body bone-scan phantom sized from a :class:`BodyHabitus`.

    Parameters
    ----------
    body : BodyHabitus
        Stature sets the length in the frame, weight the thickness and count level, age the
        proportions and growth plates.
    speed_cm_min : float
        Table speed; expected counts scale with 20 / speed.
    pixel_spacing_mm : float
        Square pixel size of the frame.
    rows, cols : int
        Frame size (1024 x 256 by default).
    injection_site_probability : float
        Chance that residual tracer at the injection site shows.
    lesions : LesionModel
        How often and which lesions to draw; ``LesionModel(probability=0.0)`` for none.
    """

    body: BodyHabitus
    speed_cm_min: float = STANDARD_SPEED_CM_MIN
    pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM
    rows: int = FRAME_ROWS
    cols: int = FRAME_COLS
    injection_site_probability: float = 0.5
    lesions: LesionModel = field(default_factory=LesionModel)

    def __post_init__(self) -> None:
        if self.pixel_spacing_mm <= 0:
            raise ValueError(f"pixel spacing {self.pixel_spacing_mm!r} mm is not positive")
        if self.speed_cm_min <= 0:
            raise ValueError(f"scan speed {self.speed_cm_min!r} cm/min is not positive")
        if not 0.0 <= self.injection_site_probability <= 1.0:
            raise ValueError(
                f"injection site probability {self.injection_site_probability!r} is outside 0-1"
            )
        if self._stature_px() + 60.0 / self.pixel_spacing_mm > self.rows:
            raise ValueError(f"a {self.body.height_cm!r} cm body does not fit {self.rows} rows")

    def _stature_px(self) -> float:
        return self.body.height_cm * 10.0 / self.pixel_spacing_mm

    def expected_counts(self, rng: np.random.Generator) -> WholeBodyViews:
        """Expected counts of the anterior and posterior views (the :class:`Phantom`
        protocol); see :meth:`render`."""
        return self.render(rng).views

    def render(self, rng: np.random.Generator) -> PhantomRender:
        """Draw one scan of this body: expected counts, skeleton mask, lesions, landmarks.

        Parameters
        ----------
        rng : numpy.random.Generator
            Draws the pose, the uptake (bone-to-soft-tissue ratio, joints, growth plates,
            kidneys, bladder), the injection site, the resolution, the total count level
            (about +-15 %) and, from a stream of their own, the lesions.

        Returns
        -------
        PhantomRender
            float64 ``rows x cols`` views of counts at this speed, zero past the scanned rows.
        """
        mm = self.pixel_spacing_mm
        plan = BodyPlan.from_body(self.body)
        stature = self._stature_px()
        pose = Pose.sample(rng, stature_px=stature, cols=self.cols, mm=mm)
        uptake = Uptake.sample(plan, rng)
        lesion_rng = np.random.default_rng(int(rng.integers(2**63)))
        scanned_rows = min(self.rows, math.ceil(pose.top_px + stature + 40.0 / mm))
        scene = Scene(scanned_rows, self.cols, pixel_mm=mm)
        painter = Painter(scene, plan, Frame(stature, pose, pivot=plan.pubis), uptake)
        draw_soft_tissue(painter)
        draw_skeleton(painter)
        draw_organs(painter, rng, self.injection_site_probability)
        lesions = self.lesions.sample(painter.sites, lesion_rng)
        gain = lesion_gain((scanned_rows, self.cols), lesions, mm)
        near_mm, far_mm = rng.uniform(5.5, 7.0), rng.uniform(13.0, 17.0)
        sigmas = (near_mm / _FWHM_PER_SIGMA / mm, far_mm / _FWHM_PER_SIGMA / mm)
        tissue = (1.0 - np.exp(-MU_PER_CM * scene.tissue_cm)) / MU_PER_CM
        relative = []
        for side in (0, 1):
            layers = scene.bone[side] * gain + scene.other[side]
            layers[1] += tissue  # spread through the depth: blurred as far
            relative.append(
                gaussian_blur(layers[0], sigmas[0]) + gaussian_blur(layers[1], sigmas[1])
            )
        relative[1] = relative[1][:, ::-1]

        # One scale for both views keeps their ratio physical; their mean hits the target.
        target = mean_total_counts(self.body, self.speed_cm_min) * rng.uniform(0.85, 1.15)
        background = BACKGROUND_COUNTS_PER_PIXEL * STANDARD_SPEED_CM_MIN / self.speed_cm_min
        field_counts = background * scanned_rows * self.cols
        scale = (target - field_counts) / (0.5 * float(relative[0].sum() + relative[1].sum()))
        views = []
        for rel in relative:
            view = np.zeros((self.rows, self.cols))
            view[:scanned_rows] = rel * scale + background
            views.append(view)
        masks = []
        for drawn in (scene.bone_mask, scene.tissue_cm > 0.0):
            mask = np.zeros((2, self.rows, self.cols), dtype=bool)
            mask[0, :scanned_rows], mask[1, :scanned_rows] = drawn, drawn[:, ::-1]
            masks.append(mask)
        return PhantomRender(
            views=WholeBodyViews(views[0], views[1], scanned_rows),
            skeleton_mask=masks[0],
            body_mask=masks[1],
            lesions=lesions,
            landmarks=dict(painter.landmarks),
        )
