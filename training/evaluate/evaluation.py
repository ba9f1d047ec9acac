"""The evaluation loop: every method on the held-out scans, every metric per frame.

Baselines (rapid × dose, Gaussian, BM3D) and the given checkpoints run on the same scans
(:mod:`training.evaluate.heldout`); each output is compared with the truth and the standard
scan frame by frame (:mod:`training.evaluate.metrics`), lesion by lesion, and, when feature
extractors are given, as a distribution (FD-SAM, FID). The result goes to
:func:`training.evaluate.report.write_report`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from enhancer.runtime import round_counts
from pacs_node.synth import LesionModel, synthetic_patient
from training.evaluate.baselines import (
    Bm3dVst,
    Estimator,
    GaussianFilter,
    ModelEstimator,
    RapidRescaled,
    tune_gaussian_sigma,
)
from training.evaluate.heldout import (
    DEFAULT_SEED,
    STANDARD_SPEED,
    VIEWS,
    HeldOutScan,
    age_band,
    held_out_scan,
)
from training.evaluate.metrics import (
    count_error,
    frechet_distance,
    lesion_contrast,
    psnr,
    ssim_map,
    ssim_mean,
)
from training.evaluate.perceptual import AlexLpips, InceptionFeatures, SamFeatures
from training.evaluate.records import (
    EvaluationResult,
    ExampleFrame,
    FrameRecord,
    LesionRecord,
    MethodInfo,
)

__all__ = [
    "EXPECTED_MODELS",
    "MIN_LESION_DIAMETER_MM",
    "EvaluationSettings",
    "evaluate",
    "frame_metrics",
]

logger = logging.getLogger(__name__)

MIN_LESION_DIAMETER_MM = 10.0
#: Checkpoints the report expects; those not given are listed as "not provided".
EXPECTED_MODELS: dict[str, str] = {
    "cascade": "SAM-prior cascade: f_IR1 → SAM prior → f_IR2 with SPI (trained with SKD, SCM)",
    "fast": "f_IR1 alone, the CPU profile (SAM's knowledge distilled into it by SKD)",
    "no-prior": "the restoration network trained without any SAM prior",
    "no-spi": "ablation: the cascade trained without SPI",
    "no-skd": "ablation: the cascade trained without SKD",
    "no-scm": "ablation: the cascade trained without SCM",
}


@dataclass(frozen=True)
class EvaluationSettings:
    """What to evaluate on and how (the command line's options)."""

    seed: int = DEFAULT_SEED
    count: int = 20
    first_index: int = 1
    speed_cm_min: int = 40
    tune_count: int = 2
    gaussian_sigma: float | None = None
    bm3d_frames: int | None = None
    bm3d_profile: str = "np"
    examples: int = 2
    lesion_probability: float | None = None
    device: str = "auto"

    @property
    def dose_factor(self) -> float:
        """Standard scan time over rapid scan time."""
        return self.speed_cm_min / STANDARD_SPEED

    def lesion_model(self) -> LesionModel | None:
        """The lesion model the phantoms use (None: the phantom's default)."""
        if self.lesion_probability is None:
            return None
        return LesionModel(probability=self.lesion_probability)


def frame_metrics(
    estimate: npt.NDArray[np.float64],
    truth: npt.NDArray[np.float64],
    body: npt.NDArray[np.bool_],
    *,
    standard: npt.NDArray[np.generic] | None,
    reference_input: npt.NDArray[np.float64] | None,
) -> dict[str, float]:
    """PSNR / SSIM against truth (frame and body) and standard; count errors."""
    peak = float(truth.max())
    values = {
        "psnr_truth": psnr(estimate, truth, peak=peak),
        "psnr_truth_body": psnr(estimate, truth, peak=peak, mask=body),
        "count_error_truth": count_error(estimate, truth),
    }
    structure = ssim_map(estimate, truth, data_range=peak)
    values["ssim_truth"] = ssim_mean(structure)
    values["ssim_truth_body"] = ssim_mean(structure, mask=body)
    if standard is not None:
        values["psnr_standard"] = psnr(estimate, standard, peak=peak)
        values["ssim_standard"] = ssim_mean(ssim_map(estimate, standard, data_range=peak))
    if reference_input is not None:
        values["count_error_input"] = count_error(estimate, reference_input)
    return values


def _frame_records(
    name: str,
    scan: HeldOutScan,
    estimate: npt.NDArray[np.float64],
    dose: float,
    lpips: AlexLpips | None,
    *,
    unrounded: npt.NDArray[np.float64] | None = None,
) -> list[FrameRecord]:
    """Metrics of each view ``estimate`` holds; the standard scan is not compared with itself.

    ``unrounded``, the estimate before rounding to stored counts, adds its PSNR vs truth.
    """
    records = []
    is_reference = name == "standard"
    band = age_band(scan.age_years)
    for v in range(estimate.shape[0]):
        values = frame_metrics(
            estimate[v],
            scan.truth[v],
            scan.body_mask[v],
            standard=None if is_reference else scan.standard[v],
            reference_input=None if is_reference else scan.rapid[v].astype(np.float64) * dose,
        )
        if unrounded is not None:
            values["psnr_truth_unrounded"] = psnr(
                unrounded[v], scan.truth[v], peak=float(scan.truth[v].max())
            )
        if lpips is not None:
            values["lpips_truth"] = lpips.distance(estimate[v], scan.truth[v])
            if not is_reference:
                values["lpips_standard"] = lpips.distance(estimate[v], scan.standard[v])
        records.append(FrameRecord(name, scan.index, VIEWS[v], scan.age_years, band, values))
    return records


def _lesion_records(
    method: str, scan: HeldOutScan, estimate: npt.NDArray[np.float64]
) -> list[LesionRecord]:
    records = []
    cols = scan.truth.shape[-1]
    for lesion in scan.lesions:
        if 2.0 * lesion.radius_mm < MIN_LESION_DIAMETER_MM:
            continue
        radius = lesion.radius_mm / scan.pixel_spacing_mm
        for v in range(estimate.shape[0]):
            view = VIEWS[v]
            centre = lesion.centre_in("anterior" if v == 0 else "posterior", cols)
            truth = lesion_contrast(scan.truth[v], centre, radius)
            ours = lesion_contrast(estimate[v], centre, radius)
            if truth is None or ours is None:
                continue
            records.append(
                LesionRecord(
                    method=method,
                    study=scan.index,
                    view=view,
                    kind=lesion.kind.value,
                    site=lesion.site,
                    diameter_mm=2.0 * lesion.radius_mm,
                    drawn_contrast=lesion.contrast,
                    truth_contrast=truth.contrast,
                    estimate_contrast=ours.contrast,
                )
            )
    return records


def _example_indices(settings: EvaluationSettings) -> set[int]:
    """The youngest and oldest held-out patients (evenly spaced by age for more)."""
    indices = range(settings.first_index, settings.first_index + settings.count)
    by_age = sorted(indices, key=lambda i: synthetic_patient(settings.seed, i).body.age_years)
    if settings.examples <= 0:
        return set()
    picks = np.linspace(0, len(by_age) - 1, min(settings.examples, len(by_age)))
    return {by_age[round(p)] for p in picks}


def _gaussian(settings: EvaluationSettings) -> tuple[GaussianFilter, str]:
    if settings.gaussian_sigma is not None:
        sigma = settings.gaussian_sigma
        return GaussianFilter(sigma), f"{sigma:g} px (fixed by --gaussian-sigma)"
    if settings.tune_count < 1:
        return GaussianFilter(1.5), "1.5 px (fixed: no tuning scans)"
    # Tuning scans follow the evaluation scans: same seed, never evaluated.
    start = settings.first_index + settings.count
    samples = []
    for index in range(start, start + settings.tune_count):
        scan = held_out_scan(
            settings.seed, index, settings.speed_cm_min, lesions=settings.lesion_model()
        )
        samples.append((scan.rapid, scan.truth))
    sigma, scores = tune_gaussian_sigma(samples, settings.dose_factor)
    last = start + settings.tune_count - 1
    scans = f"scan {start}" if last == start else f"scans {start}-{last}"
    return GaussianFilter(sigma), (
        f"{sigma:g} px, best mean PSNR vs truth among {sorted(scores)} on tuning {scans} "
        "(same seed, not evaluated)"
    )


def evaluate(
    settings: EvaluationSettings,
    models: Sequence[ModelEstimator] = (),
    *,
    primary: str | None = None,
    sam: SamFeatures | None = None,
    inception: InceptionFeatures | None = None,
    lpips: AlexLpips | None = None,
) -> EvaluationResult:
    """Run every method on the held-out scans and collect the metrics.

    Parameters
    ----------
    settings : EvaluationSettings
    models : sequence of ModelEstimator
        Loaded checkpoints, in report order.
    primary : str, optional
        The model the targets are checked on.
    sam, inception, lpips : optional
        Feature extractors for FD-SAM, FID and LPIPS; each left out is reported as such.
    """
    dose = settings.dose_factor
    gaussian, sigma_text = _gaussian(settings)
    methods: list[Estimator] = [RapidRescaled(), gaussian]
    budget = settings.bm3d_frames
    if budget != 0:
        methods.append(Bm3dVst(settings.bm3d_profile))
    methods += list(models)
    standard_text = "the real 20 cm/min scan (Poisson draw of the truth): the reference"
    infos = {"standard": MethodInfo("standard", standard_text, "reference")}
    for method in methods:
        kind = "model" if isinstance(method, ModelEstimator) else "baseline"
        infos[method.name] = MethodInfo(method.name, method.description, kind)
    examples_wanted = _example_indices(settings)
    frames: list[FrameRecord] = []
    lesions: list[LesionRecord] = []
    examples: list[ExampleFrame] = []
    sam_features: dict[str, list[npt.NDArray[np.float64]]] = {}
    fid_features: dict[str, list[npt.NDArray[np.float64]]] = {}
    indices = range(settings.first_index, settings.first_index + settings.count)
    for number, index in enumerate(indices, start=1):
        scan = held_out_scan(
            settings.seed, index, settings.speed_cm_min, lesions=settings.lesion_model()
        )
        band = age_band(scan.age_years)
        outputs: dict[str, npt.NDArray[np.float64]] = {"standard": scan.standard.astype(float)}
        unrounded: dict[str, npt.NDArray[np.float64]] = {}
        for method in methods:
            views = len(VIEWS)
            if isinstance(method, Bm3dVst) and budget is not None:
                views = min(views, budget - infos[method.name].frames)
            if views <= 0:
                continue
            started = time.perf_counter()
            unrounded[method.name] = method.estimate(scan.rapid[:views], dose)
            infos[method.name].seconds += time.perf_counter() - started
            infos[method.name].frames += views
            # Scored as stored: every method's counts rounded the node's way (rapid x dose
            # is integer already and stays as it is).
            outputs[method.name] = round_counts(unrounded[method.name]).astype(np.float64)
        for name, estimate in outputs.items():
            frames += _frame_records(
                name, scan, estimate, dose, lpips, unrounded=unrounded.get(name)
            )
            lesions += _lesion_records(name, scan, estimate)
        for name, images in {"truth": scan.truth, **outputs}.items():
            if sam is not None:
                sam_features.setdefault(name, []).append(sam(images))
            if inception is not None:
                fid_features.setdefault(name, []).append(inception(images))
        if index in examples_wanted:
            shown = {"truth": scan.truth[0], **{k: v[0] for k, v in outputs.items()}}
            examples.append(ExampleFrame(index, VIEWS[0], scan.age_years, scan.scanned_rows, shown))
        timing = ", ".join(f"{m.name} {infos[m.name].seconds:.1f} s" for m in methods)
        logger.info(
            "scan %d/%d (index %d, %.1f y, %s); cumulative %s",
            number,
            settings.count,
            index,
            scan.age_years,
            band,
            timing,
        )
    examples.sort(key=lambda e: e.age_years)
    distribution: dict[str, dict[str, float | None]] = {}
    if sam is not None:
        distribution["FD-SAM vs standard"] = _fd(sam_features, "standard")
        distribution["FD-SAM vs truth"] = _fd(sam_features, "truth")
    if inception is not None:
        distribution["FID vs standard (torchvision Inception)"] = _fd(fid_features, "standard")
    bm3d_text = (
        "not run (--bm3d-frames 0)"
        if budget == 0
        else f"profile {settings.bm3d_profile!r}, "
        + ("every frame" if budget is None else f"at most {budget} frame(s) (--bm3d-frames)")
        + (f", {infos['bm3d'].frames} frame(s) run" if "bm3d" in infos else "")
    )
    report_settings = {
        "seed": settings.seed,
        "count": settings.count,
        "first_index": settings.first_index,
        "speed_cm_min": settings.speed_cm_min,
        "dose_factor": dose,
        "device": settings.device,
        "gaussian_sigma": sigma_text,
        "bm3d": bm3d_text,
        "lesion_probability": settings.lesion_probability,
    }
    ordered = [infos["standard"], *(infos[m.name] for m in methods)]
    for model in models:
        infos[model.name].notes = list(model.notes)
    ordered += [
        MethodInfo(name, f"{text} (pass --model {name}=PATH[:profile])", "model", provided=False)
        for name, text in EXPECTED_MODELS.items()
        if name not in infos
    ]
    if budget == 0:
        ordered.insert(3, MethodInfo("bm3d", "BM3D: not run (--bm3d-frames 0)", "baseline"))
    return EvaluationResult(
        settings=report_settings,
        methods=ordered,
        frames=frames,
        lesions=lesions,
        distribution=distribution,
        notices=_notices(sam, inception, lpips, sam_features),
        examples=examples,
        primary=primary,
    )


def _fd(
    features: dict[str, list[npt.NDArray[np.float64]]], reference: str
) -> dict[str, float | None]:
    """Fréchet distance of every method's frames to ``reference``'s (None below 2 frames)."""
    ref = np.concatenate(features[reference])
    out: dict[str, float | None] = {}
    for name, parts in features.items():
        if name == reference:
            continue
        mine = np.concatenate(parts)
        out[name] = frechet_distance(mine, ref) if min(len(mine), len(ref)) >= 2 else None
    return out


def _notices(
    sam: SamFeatures | None,
    inception: InceptionFeatures | None,
    lpips: AlexLpips | None,
    sam_features: dict[str, list[npt.NDArray[np.float64]]],
) -> dict[str, str]:
    notices = {}
    if lpips is None:
        notices["LPIPS"] = (
            "LPIPS: not computed — needs pretrained AlexNet/VGG weights, which no package here "
            "ships (pass --alexnet-weights with torchvision's alexnet-owt-*.pth and "
            "--lpips-weights with the lpips package's weights/v0.1/alex.pth)."
        )
    else:
        notices["LPIPS"] = (
            f"LPIPS (AlexNet, v0.1): computed with linear layers from {lpips.source}; frames "
            "windowed on the reference's Anscombe white point."
        )
    if inception is None:
        notices["FID"] = (
            "FID: not computed — needs pretrained Inception-v3 weights, which no package here "
            "ships (pass --inception-weights)."
        )
    else:
        notices["FID"] = (
            f"FID: torchvision Inception-v3 from {inception.source}, 2048-wide pool features of "
            "frames resized to 299x299. torchvision's weights differ from the TF-Inception "
            "port of pytorch-fid, so values are not comparable with published FIDs."
        )
    if sam is None:
        notices["FD-SAM"] = (
            "FD-SAM: not computed — no checkpoint with a SAM prior (one that serves the "
            "cascade profile) was given, or --no-fd-sam."
        )
    else:
        first = next(iter(sam_features.values()), [])
        n = sum(len(part) for part in first)
        dims = first[0].shape[1] if first else 0
        notices["FD-SAM"] = (
            f"FD-SAM: Fréchet distance on the SAM encoder of {sam.source} ({dims} mean-pooled "
            f"features, {n} frames per full method). Our own features, NOT FID; "
            + ("biased upwards with fewer frames than features; " if n < dims else "")
            + "compare within this run and between methods with the same number of frames "
            "only (BM3D under --bm3d-frames has fewer)."
        )
    return notices
