"""What a whole-body bone-scan phantom is: the patient it is built for and what it yields.

:class:`BodyHabitus` holds the patient facts (age, sex, height, weight) with median growth
references; a :class:`Phantom` turns them into :class:`WholeBodyViews`, the expected counts of
the anterior and posterior views, so the DICOM writer never depends on how a phantom is drawn.
:func:`mean_total_counts` sets the count level of a view from body weight and table speed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

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

FloatImage = npt.NDArray[np.float64]

#: Ages (years) of the growth reference tables (rounded WHO/CDC medians).
REFERENCE_AGES_YEARS = np.array(
    [0.0, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 30.0]
)
_HEIGHT_CM = {
    "M": np.array([50, 68, 76, 88, 103, 116, 128, 139, 150, 164, 174, 176, 177.0]),
    "F": np.array([49, 66, 74, 86, 102, 115, 127, 139, 152, 160, 163, 163, 163.0]),
}
_WEIGHT_KG = {
    "M": np.array([3.5, 7.9, 9.6, 12.2, 16.3, 20.7, 25.6, 31.4, 40.5, 51, 61, 68, 78.0]),
    "F": np.array([3.4, 7.3, 8.9, 11.5, 15.9, 20.2, 25.8, 32.5, 41.5, 50, 54, 57, 65.0]),
}


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
        height = float(np.interp(age_years, REFERENCE_AGES_YEARS, _HEIGHT_CM[sex]))
        weight = float(np.interp(age_years, REFERENCE_AGES_YEARS, _WEIGHT_KG[sex]))
        return cls(age_years=age_years, sex=sex, height_cm=height, weight_kg=weight)


def mean_total_counts(body: BodyHabitus, speed_cm_min: float) -> float:
    """Mean counts of one view of ``body`` at ``speed_cm_min``.

    Activity follows weight with a floor for small children (EANM paediatric dosage card);
    dwell time per point scales with 1 / speed. About 1.35 million at 20 cm/min for 70 kg.
    """
    weight_ratio = min(max(body.weight_kg / 70.0, 0.08), 1.3)
    return float(ADULT_COUNTS_PER_VIEW * weight_ratio**0.85 * STANDARD_SPEED_CM_MIN / speed_cm_min)
