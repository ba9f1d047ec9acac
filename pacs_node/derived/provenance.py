"""What kind of derived object to write, and which model made its pixels.

Both are plain values: the node learns the model's name, version and sha256 from the
enhancer's result (its model card) and never imports the enhancer to get them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from pacs_node import __version__

__all__ = ["SERIES_DESCRIPTION_PREFIX", "ModelProvenance", "OutputKind"]

#: Leads every derived Series Description so a worklist shows what the series is.
SERIES_DESCRIPTION_PREFIX = "AI ENHANCED"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# LO (PS3.5 6.2): 64 characters at most; the default repertoire without backslash, which
# separates values, so the text is the same whatever Specific Character Set it lands in.
_LO_MAX = 64
_PRINTABLE = re.compile(r"^[ -\[\]-~]+$")


class OutputKind(StrEnum):
    """Which IOD carries the enhanced frames (DOMAIN.md section 2)."""

    #: Multi-frame Grayscale Word SC (PS3.3 A.8.4): one instance holding every view.
    MULTIFRAME_SC = "multiframe-sc"
    #: Secondary Capture Image (PS3.3 A.8.1): one single-frame instance per view.
    SINGLE_FRAME_SC = "single-frame-sc"
    #: NM Image (PS3.3 A.5) with the source's NM modules, for NM workstations.
    DERIVED_NM = "derived-nm"


def _check_text(field: str, value: str, limit: int = _LO_MAX) -> None:
    if not _PRINTABLE.match(value):
        raise ValueError(
            f"model {field} {value!r} is empty or has characters outside printable ASCII "
            "(or a backslash)"
        )
    if len(value) > limit:
        raise ValueError(f"model {field} {value!r} is longer than {limit} characters")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelProvenance:
    """The model that produced the enhanced pixels, as written into every derived object.

    Parameters
    ----------
    name, version : str
        From the model card; written as Manufacturer's Model Name and Software Versions of
        the processing item of the Contributing Equipment Sequence and in the Series
        Description, so together they must fit one LO value with the prefix.
    sha256 : str
        Hex digest of the weights file (64 hexadecimal digits, any case; kept lower case).
        It identifies the model in the derived UIDs.
    profile : str
        Which part of the checkpoint ran (e.g. ``"fast"`` or ``"cascade"``).
    manufacturer : str
        Manufacturer of the processing software.
    software_version : str
        Version of pacs-node that wrote the object.
    """

    name: str
    version: str
    sha256: str
    profile: str
    manufacturer: str = "pacs-node"
    software_version: str = __version__

    def __post_init__(self) -> None:
        for field in ("name", "version", "profile", "manufacturer"):
            _check_text(field, getattr(self, field))
        # Written as "pacs-node <version>", one LO value of Software Versions.
        _check_text("software_version", self.software_version, _LO_MAX - len("pacs-node "))
        digest = self.sha256.lower()
        if not _SHA256.match(digest):
            raise ValueError(f"model sha256 {self.sha256!r} is not 64 hexadecimal digits")
        object.__setattr__(self, "sha256", digest)
        description = self.series_description
        if len(description) > _LO_MAX:
            raise ValueError(
                f"model name and version make the series description {description!r} longer "
                f"than {_LO_MAX} characters"
            )

    @property
    def series_description(self) -> str:
        """Series Description (LO): the AI enhancement, model name and version."""
        return f"{SERIES_DESCRIPTION_PREFIX} {self.name} {self.version}"

    @property
    def software_versions(self) -> list[str]:
        """Software Versions (LO, VM 1-n): model version, weights digest prefix, pacs-node."""
        return [self.version, f"sha256:{self.sha256[:16]}", f"pacs-node {self.software_version}"]

    @property
    def derivation_description(self) -> str:
        """Derivation Description (ST): what was done, by which model, and what it means."""
        return (
            f"AI enhancement of a rapid whole-body scan by model {self.name} {self.version} "
            f"(weights sha256 {self.sha256}, profile {self.profile}). Pixel values are the "
            "model's estimate of standard-speed counts, not detected counts; this is not the "
            "acquired image."
        )
