"""Cascade sizes and the factory functions that build them.

One way to build a model, as segment-anything's ``sam_model_registry``::

    model = cascade_model_registry["small"]()           # fresh weights
    model = build_cascade_base(sam_checkpoint="sam_vit_b_01ec64.pth")

Sizes:

``tiny``
    For tests: a tiny SAM and 8-channel stages; milliseconds on CPU.
``small``
    The CPU default: a small SAM-architecture prior trained from scratch and 16-channel
    stages (f_IR1 ≈ 5 GMACs per 1024×256 frame).
``base``
    Official SAM vit_b (or MedSAM vit_b) as the prior, 32-channel stages; for GPU workers.

Loading a trained cascade goes through :func:`enhancer.checkpoint.load_checkpoint`; the
``checkpoint`` argument here is a convenience that calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from enhancer.modeling.cascade import CascadeModel
from enhancer.modeling.restoration import RestorationUNet
from enhancer.modeling.sam_checkpoint import SAM_SPECS, build_sam, load_sam_weights
from enhancer.modeling.sam_prior import PriorNormalisation, SamPrior
from enhancer.modeling.spi import SemanticPriorIntegration

__all__ = [
    "CascadeConfig",
    "StageConfig",
    "build_cascade",
    "build_cascade_base",
    "build_cascade_small",
    "build_cascade_tiny",
    "cascade_configs",
    "cascade_model_registry",
]


@dataclass(frozen=True)
class StageConfig:
    """Shape of one restoration stage (see :class:`RestorationUNet`)."""

    width: int
    encoder_blocks: tuple[int, ...]
    middle_blocks: int
    decoder_blocks: tuple[int, ...]


@dataclass(frozen=True)
class CascadeConfig:
    """Everything that fixes a cascade's architecture; stored in every model card."""

    size: str
    sam_variant: str
    stage1: StageConfig
    stage2: StageConfig
    spi_hidden: int
    normalisation: PriorNormalisation = PriorNormalisation.SAM
    dose_factor: float = 2.0
    vst_scale: float = 16.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the enum becomes its value)."""
        data = asdict(self)
        data["normalisation"] = self.normalisation.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CascadeConfig:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming a bad field."""
        try:
            stages = {
                key: StageConfig(
                    width=int(data[key]["width"]),
                    encoder_blocks=tuple(int(n) for n in data[key]["encoder_blocks"]),
                    middle_blocks=int(data[key]["middle_blocks"]),
                    decoder_blocks=tuple(int(n) for n in data[key]["decoder_blocks"]),
                )
                for key in ("stage1", "stage2")
            }
            return cls(
                size=str(data["size"]),
                sam_variant=str(data["sam_variant"]),
                stage1=stages["stage1"],
                stage2=stages["stage2"],
                spi_hidden=int(data["spi_hidden"]),
                normalisation=PriorNormalisation(data.get("normalisation", "sam")),
                dose_factor=float(data.get("dose_factor", 2.0)),
                vst_scale=float(data.get("vst_scale", 16.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"architecture is incomplete or malformed: {exc!r}") from exc


_TINY_STAGE = StageConfig(width=8, encoder_blocks=(1, 1), middle_blocks=1, decoder_blocks=(1, 1))
_SMALL_STAGE = StageConfig(
    width=16, encoder_blocks=(1, 1, 2), middle_blocks=2, decoder_blocks=(1, 1, 1)
)
_BASE_STAGE = StageConfig(
    width=32, encoder_blocks=(1, 2, 4), middle_blocks=4, decoder_blocks=(1, 1, 1)
)

# f_IR1 and f_IR2 share a shape: SKD then maps features level to level.
cascade_configs: dict[str, CascadeConfig] = {
    "tiny": CascadeConfig(
        size="tiny", sam_variant="tiny", stage1=_TINY_STAGE, stage2=_TINY_STAGE, spi_hidden=8
    ),
    "small": CascadeConfig(
        size="small", sam_variant="small", stage1=_SMALL_STAGE, stage2=_SMALL_STAGE, spi_hidden=32
    ),
    "base": CascadeConfig(
        size="base", sam_variant="vit_b", stage1=_BASE_STAGE, stage2=_BASE_STAGE, spi_hidden=64
    ),
}


def _stage(config: StageConfig, in_channels: int) -> RestorationUNet:
    return RestorationUNet(
        in_channels=in_channels,
        width=config.width,
        encoder_blocks=config.encoder_blocks,
        middle_blocks=config.middle_blocks,
        decoder_blocks=config.decoder_blocks,
    )


def build_cascade(
    config: CascadeConfig, *, sam_checkpoint: str | Path | None = None
) -> CascadeModel:
    """A cascade with fresh weights, or with an official SAM checkpoint as its prior.

    Parameters
    ----------
    config : CascadeConfig
        The architecture.
    sam_checkpoint : path, optional
        Official SAM or MedSAM weights in segment-anything format for ``config.sam_variant``.
    """
    sam = build_sam(SAM_SPECS[config.sam_variant])
    if sam_checkpoint is not None:
        load_sam_weights(sam, Path(sam_checkpoint), variant_name=config.sam_variant)
    prior = SamPrior(sam, normalisation=config.normalisation)
    stage1 = _stage(config.stage1, 1)
    stage2 = _stage(config.stage2, 2)
    spi = SemanticPriorIntegration(
        embedding_channels=prior.embed_dim,
        feature_channels=stage2.feature_channels,
        hidden=config.spi_hidden,
    )
    return CascadeModel(
        stage1=stage1,
        stage2=stage2,
        prior=prior,
        spi=spi,
        dose_factor=config.dose_factor,
        vst_scale=config.vst_scale,
    )


def _load(size: str, checkpoint: str | Path) -> CascadeModel:
    from enhancer.checkpoint import load_checkpoint

    return load_checkpoint(Path(checkpoint), size=size).model


def build_cascade_tiny(checkpoint: str | Path | None = None) -> CascadeModel:
    """The ``tiny`` cascade (tests)."""
    if checkpoint is not None:
        return _load("tiny", checkpoint)
    return build_cascade(cascade_configs["tiny"])


def build_cascade_small(checkpoint: str | Path | None = None) -> CascadeModel:
    """The ``small`` cascade (the CPU default)."""
    if checkpoint is not None:
        return _load("small", checkpoint)
    return build_cascade(cascade_configs["small"])


def build_cascade_base(
    checkpoint: str | Path | None = None,
    *,
    sam_checkpoint: str | Path | None = None,
    medsam: bool = False,
) -> CascadeModel:
    """The ``base`` cascade: official SAM vit_b (or MedSAM vit_b) as the prior.

    Parameters
    ----------
    checkpoint : path, optional
        A trained cascade (safetensors with its model card).
    sam_checkpoint : path, optional
        Official ``sam_vit_b_01ec64.pth`` or ``medsam_vit_b.pth`` for a fresh cascade.
    medsam : bool
        The SAM weights are MedSAM's, which expects [0, 1] input without SAM's
        mean and standard deviation.
    """
    if checkpoint is not None:
        return _load("base", checkpoint)
    config = cascade_configs["base"]
    if medsam:
        config = replace(config, normalisation=PriorNormalisation.MEDSAM)
    return build_cascade(config, sam_checkpoint=sam_checkpoint)


cascade_model_registry: dict[str, Callable[..., CascadeModel]] = {
    "tiny": build_cascade_tiny,
    "small": build_cascade_small,
    "base": build_cascade_base,
}
