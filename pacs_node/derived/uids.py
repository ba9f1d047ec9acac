"""Deterministic UIDs of derived series and instances.

The same source, the same model weights and the same output kind always give the same
Series and SOP Instance UIDs, so a re-run sends objects that replace (rather than sit beside)
those of the first run in PACS. Other weights, another source or another kind give other
UIDs, since their pixel data differ (PS3.3 C.7.6.1.1.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.uid import PYDICOM_ROOT_UID, RE_VALID_UID, UID, generate_uid

from pacs_node.derived.provenance import OutputKind

__all__ = ["DerivedUids", "derived_uids", "stable_uid"]

#: First entropy source of every derived UID; bump the suffix only to break replacement.
NAMESPACE = "pacs_node.derived.v1"
_UID_MAX = 64  # PS3.5 9.1


def stable_uid(*parts: str, prefix: str = PYDICOM_ROOT_UID) -> UID:
    """A UID that is a pure function of ``parts`` (PS3.5 9.1: at most 64 characters).

    ``generate_uid`` hashes the *concatenation* of its entropy sources, so ``("a", "bc")``
    and ``("ab", "c")`` would collide; each part is prefixed with its length first, which
    makes the joined text decode to exactly one tuple of parts.

    Parameters
    ----------
    *parts : str
        The values the UID stands for, in a fixed order.
    prefix : str
        UID root, at most 54 characters, ending in ``"."``.

    Returns
    -------
    pydicom.uid.UID
        ``prefix`` followed by decimal digits of a SHA-512 of the parts.
    """
    if not parts:
        raise ValueError("a stable UID needs at least one part")
    return generate_uid(prefix=prefix, entropy_srcs=[f"{len(part)}:{part}" for part in parts])


@dataclass(frozen=True, slots=True)
class DerivedUids:
    """UIDs of one derived series' instances made from one source instance."""

    series_instance_uid: UID
    sop_instance_uids: tuple[UID, ...]  #: one, or one per frame for single-frame SC


def derived_uids(
    source_sop_instance_uid: str,
    model_sha256: str,
    *,
    kind: OutputKind,
    source_series_instance_uid: str,
    frame_count: int = 1,
    prefix: str = PYDICOM_ROOT_UID,
) -> DerivedUids:
    """UIDs of the objects derived from one source instance by one model.

    The Series Instance UID comes from the source *series* (with the weights and kind), so
    the instances derived from every instance of one source series share a derived series.
    SOP Instance UIDs come from the source *instance*, and for single-frame SC from the
    frame index too.

    Parameters
    ----------
    source_sop_instance_uid, source_series_instance_uid : str
        UIDs of the source instance and of its series; must be valid UIDs.
    model_sha256 : str
        Hex digest of the model weights (case is ignored).
    kind : OutputKind
        The derived IOD.
    frame_count : int
        Frames of the source instance; the number of SOP Instance UIDs for
        :attr:`OutputKind.SINGLE_FRAME_SC`, ignored otherwise.
    prefix : str
        UID root.

    Returns
    -------
    DerivedUids
    """
    for name, value in (
        ("source SOP Instance UID", source_sop_instance_uid),
        ("source Series Instance UID", source_series_instance_uid),
    ):
        # The pattern, not UID.is_valid, which also warns about what it refuses.
        text = str(value)
        if len(text) > _UID_MAX or not re.match(RE_VALID_UID, text):
            raise ValueError(f"{name} {value!r} is not a valid UID")
    if frame_count < 1:
        raise ValueError(f"frame count {frame_count!r} is less than 1")
    digest = model_sha256.lower()
    kind = OutputKind(kind)
    series = stable_uid(
        NAMESPACE, "series", str(source_series_instance_uid), digest, kind.value, prefix=prefix
    )
    instance = (NAMESPACE, "instance", str(source_sop_instance_uid), digest, kind.value)
    if kind is OutputKind.SINGLE_FRAME_SC:
        sops = tuple(
            stable_uid(*instance, f"frame {index}", prefix=prefix) for index in range(frame_count)
        )
    else:
        sops = (stable_uid(*instance, prefix=prefix),)
    return DerivedUids(series, sops)
