"""What an evaluation run produces: per-frame and per-lesion records, methods, examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["EvaluationResult", "ExampleFrame", "FrameRecord", "LesionRecord", "MethodInfo"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FrameRecord:
    """Metrics of one method on one view of one held-out scan."""

    method: str
    study: int
    view: str
    age_years: float
    band: str
    values: dict[str, float]


@dataclass(frozen=True)
class LesionRecord:
    """Lesion-to-background ratio of one lesion ≥ 1 cm in one view, estimate against truth."""

    method: str
    study: int
    view: str
    kind: str
    site: str
    diameter_mm: float
    drawn_contrast: float
    truth_contrast: float
    estimate_contrast: float

    @property
    def error(self) -> float:
        """``estimate / truth - 1``."""
        return self.estimate_contrast / self.truth_contrast - 1.0


@dataclass
class MethodInfo:
    """A row of the report: a method, whether it ran, and how long it took."""

    name: str
    description: str
    kind: str  # "reference", "baseline" or "model"
    provided: bool = True
    seconds: float = 0.0
    frames: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExampleFrame:
    """Images of one example view for the figures: ``truth``, ``standard`` and each method."""

    study: int
    view: str
    age_years: float
    rows: int
    images: dict[str, FloatArray]


@dataclass
class EvaluationResult:
    """Everything a run measured."""

    settings: dict[str, Any]
    methods: list[MethodInfo]
    frames: list[FrameRecord]
    lesions: list[LesionRecord]
    distribution: dict[str, dict[str, float | None]]
    notices: dict[str, str]
    examples: list[ExampleFrame]
    primary: str | None
