"""The AI-derived series sent back to PACS: enhanced frames, clearly labelled.

``build_derived_series(source, enhanced, model)`` turns one source instance and its
enhanced frames into Secondary Capture (multi-frame word by default, or one image per view)
or a derived NM Image in the source's study, labelled so no reader takes it for the
acquisition (DOMAIN.md section 2). UIDs are a pure function of the source, the model
weights and the kind, so a re-run replaces its earlier objects in PACS. Nothing here imports
the enhancer or torch: the model is described by plain values (:class:`ModelProvenance`).
"""

from __future__ import annotations

from pacs_node.derived.provenance import ModelProvenance, OutputKind
from pacs_node.derived.series import build_derived_series, write_series
from pacs_node.derived.uids import DerivedUids, derived_uids, stable_uid

__all__ = [
    "DerivedUids",
    "ModelProvenance",
    "OutputKind",
    "build_derived_series",
    "derived_uids",
    "stable_uid",
    "write_series",
]
