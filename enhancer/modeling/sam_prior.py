"""SAM semantic prior for bone-scan frames: image embeddings and a skeleton mask.

The prior runs unattended, so its prompt is generated: the body's bounding box, found from
the count outline (:func:`body_box`). Frames keep their aspect ratio; the long side is
resized to SAM's 1024-pixel canvas and the encoder runs on the frame's own token grid (see
:mod:`enhancer.modeling.frame_encoder`), so a 1024x256 whole-body frame costs a quarter of a
padded canvas. Everything from the input to the embeddings and mask logits is differentiable,
so a loss on them can train the restoration networks in front of a frozen SAM.
"""

from __future__ import annotations

import enum
import math
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import Tensor, nn

from enhancer.modeling.frame_encoder import encode_frame_grid
from enhancer.modeling.sam_checkpoint import IMAGE_SIZE, PATCH_SIZE

__all__ = [
    "PriorNormalisation",
    "SamPrior",
    "SemanticPrior",
    "body_box",
    "frame_input_size",
    "to_frame_grid",
]

# The window's white point: a robust maximum that a few hot pixels (injection site,
# bladder edge) do not set.
WINDOW_QUANTILE = 0.995
# body_box: a low quantile stands for the background, which is low but not zero (scatter,
# and the Anscombe transform maps zero counts to about 1.22); a high one for the body.
BACKGROUND_QUANTILE = 0.02
BODY_QUANTILE = 0.99
BOX_SMOOTHING = 9
# Below this spread between body and background (in VST units, where the noise has unit
# standard deviation) nothing stands out, and the box is the whole frame.
BOX_MIN_CONTRAST = 1.0
_EPS = 1e-6


class PriorNormalisation(enum.StrEnum):
    """How the windowed frame is scaled for the image encoder."""

    SAM = "sam"  # 0-255, then SAM's ImageNet mean and std (the Sam module's buffers)
    MEDSAM = "medsam"  # min-max scaled to [0, 1], no mean or std (MedSAM's training input)


class SemanticPrior(NamedTuple):
    """What :class:`SamPrior` says about a batch of frames.

    Attributes
    ----------
    embedding : Tensor
        (B, C, h, w) float image embeddings on the frame's token grid (C is the prompt embedding
        dimension, 256 for official SAM; (h, w) is :func:`frame_input_size` divided by 16).
    mask_logits : Tensor
        (B, 1, H, W) float skeleton-mask logits on the frame grid (0 is SAM's threshold).
    box : Tensor
        (B, 4) float32 automatic box prompt (x0, y0, x1, y1), inclusive frame pixel indices.
    """

    embedding: Tensor
    mask_logits: Tensor
    box: Tensor


class SamPrior(nn.Module):
    """Semantic priors from a SAM (official, MedSAM or our own) for bone-scan frames.

    Parameters
    ----------
    sam : segment_anything.modeling.Sam
        The model, weights loaded.
    normalisation : PriorNormalisation
        ``SAM`` for SAM's own checkpoints and ours, ``MEDSAM`` for MedSAM's.
    frozen : bool
        Turn off ``requires_grad`` on every SAM parameter, so that a loss through the prior
        trains only what lies in front of it (adapters added later bring their own).
    """

    def __init__(
        self,
        sam: Sam,
        *,
        normalisation: PriorNormalisation = PriorNormalisation.SAM,
        frozen: bool = True,
    ) -> None:
        super().__init__()
        self.sam = sam
        self.normalisation = PriorNormalisation(normalisation)
        if frozen:
            sam.requires_grad_(False)

    @property
    def embed_dim(self) -> int:
        """Channels C of :attr:`SemanticPrior.embedding`."""
        return int(self.sam.prompt_encoder.embed_dim)

    def preprocess(self, vst: Tensor, *, scale: float | None = None) -> Tensor:
        """Window, resize and normalise frames for the image encoder.

        Parameters
        ----------
        vst : Tensor
            (B, 1, H, W) float32 Anscombe-transformed counts (``enhancer.vst.anscombe``).
        scale : float, optional
            Encoder pixels per frame pixel (see :func:`frame_input_size`); by default the
            long side fills SAM's canvas.

        Returns
        -------
        Tensor
            (B, 3, H', W') float32 with (H', W') = ``frame_input_size(H, W, scale=scale)``: for
            ``SAM``, 0-255 standardised by SAM's pixel mean and std; for ``MEDSAM``, in [0, 1].
        """
        _check_frames(vst)
        # The white point is a statistic of the frame, not a path for gradients: they flow
        # through the division only, as through a fixed window.
        with torch.no_grad():
            white = _frame_quantile(vst.flatten(1), WINDOW_QUANTILE).clamp(min=_EPS)
        x = (vst / white.view(-1, 1, 1, 1)).clamp(0.0, 1.0)
        size = frame_input_size(vst.shape[-2], vst.shape[-1], scale=scale)
        if size != tuple(vst.shape[-2:]):
            # Antialiased like segment_anything's ResizeLongestSide.apply_image_torch.
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if self.normalisation is PriorNormalisation.MEDSAM:
            with torch.no_grad():
                low = x.amin(dim=(2, 3), keepdim=True)
                span = (x.amax(dim=(2, 3), keepdim=True) - low).clamp(min=_EPS)
            return ((x - low) / span).expand(-1, 3, -1, -1)
        mean = cast(Tensor, self.sam.pixel_mean)
        std = cast(Tensor, self.sam.pixel_std)
        return (x * 255.0 - mean) / std

    def encode(self, vst: Tensor, *, scale: float | None = None) -> Tensor:
        """Image embeddings only, for losses that compare them.

        Parameters
        ----------
        vst : Tensor
            (B, 1, H, W) float32 Anscombe-transformed counts.
        scale : float, optional
            As in :meth:`preprocess`.

        Returns
        -------
        Tensor
            (B, C, h, w) float32 on the frame's token grid (see :class:`SemanticPrior`).
        """
        return encode_frame_grid(self.sam.image_encoder, self.preprocess(vst, scale=scale))

    def forward(self, vst: Tensor, *, scale: float | None = None) -> SemanticPrior:
        """Embeddings, skeleton-mask logits and the automatic box prompt.

        Parameters
        ----------
        vst : Tensor
            (B, 1, H, W) float32 Anscombe-transformed counts; frames in a batch share one size.
        scale : float, optional
            As in :meth:`preprocess`: training crops pass the scale of their whole frame, so
            that the prior sees anatomy at the size it has at inference.

        Returns
        -------
        SemanticPrior
        """
        box = body_box(vst)
        x = self.preprocess(vst, scale=scale)
        embedding = encode_frame_grid(self.sam.image_encoder, x)
        # The resized frame sits top-left on SAM's canvas, so canvas coordinates are
        # resized-frame coordinates.
        to_canvas = torch.tensor(
            [x.shape[-1] / vst.shape[-1], x.shape[-2] / vst.shape[-2]] * 2, device=box.device
        )
        low_res = self._decode(embedding, box * to_canvas)
        mask_logits = to_frame_grid(low_res, (vst.shape[-2], vst.shape[-1]))
        return SemanticPrior(embedding=embedding, mask_logits=mask_logits, box=box)

    def _decode(self, embedding: Tensor, canvas_box: Tensor) -> Tensor:
        """(B, 1, 4h, 4w) single-mask logits, one box prompt per frame."""
        prompt_encoder = self.sam.prompt_encoder
        batch, _, h, w = embedding.shape
        # The prompt encoder's dense outputs cover the 64x64 canvas grid; the frame's grid is
        # its top-left h-by-w corner.
        image_pe = prompt_encoder.get_dense_pe()[:, :, :h, :w]
        sparse, _ = prompt_encoder(points=None, boxes=canvas_box, masks=None)
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
        # predict_masks repeats its image embeddings once per prompt, so a batch of images
        # with one box each goes through one image at a time.
        masks = [
            self.sam.mask_decoder.predict_masks(
                image_embeddings=embedding[i : i + 1],
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse[i : i + 1],
                dense_prompt_embeddings=dense,
            )[0][:, :1]  # the single-mask output, as multimask_output=False
            for i in range(batch)
        ]
        return torch.cat(masks)


def frame_input_size(height: int, width: int, *, scale: float | None = None) -> tuple[int, int]:
    """Encoder input size for a frame: sides multiples of 16, at most SAM's 1024 canvas.

    By default the long side is resized to 1024. Examples: 1024x256 stays 1024x256;
    2048x512 becomes 1024x256; 128x64 becomes 1024x512. With ``scale`` (encoder pixels per
    frame pixel) a 256x128 crop of a 1024x256 frame at scale 1.0 stays 256x128, the size
    its anatomy has when the whole frame is encoded.
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size {height}x{width} is empty")
    if scale is not None and not scale > 0:
        raise ValueError(f"encoder scale {scale!r} must be positive")
    patch = PATCH_SIZE
    fill = IMAGE_SIZE / max(height, width)
    scale = fill if scale is None else min(scale, fill)
    return (
        max(patch, int(height * scale / patch + 0.5) * patch),
        max(patch, int(width * scale / patch + 0.5) * patch),
    )


@torch.no_grad()
def body_box(vst: Tensor, *, fraction: float = 0.1) -> Tensor:
    """Bounding box of the body, from the count outline, as a box prompt.

    The frame is smoothed (9x9 mean) so that Poisson noise in the background does not
    cross the threshold, which lies ``fraction`` of the way from the background level (a
    low quantile) to the body level (a high quantile).

    Parameters
    ----------
    vst : Tensor
        (B, 1, H, W) float Anscombe-transformed counts.
    fraction : float
        In (0, 1).

    Returns
    -------
    Tensor
        (B, 4) float32 (x0, y0, x1, y1), inclusive frame pixel indices; the whole frame
        (0, 0, W-1, H-1) where the body stands less than ``BOX_MIN_CONTRAST`` above the
        background.
    """
    _check_frames(vst)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction {fraction!r} is not in (0, 1)")
    height, width = vst.shape[-2:]
    smooth = F.avg_pool2d(
        vst.float(),
        kernel_size=BOX_SMOOTHING,
        stride=1,
        padding=BOX_SMOOTHING // 2,
        count_include_pad=False,
    )[:, 0]
    flat = smooth.flatten(1)
    background = _frame_quantile(flat, BACKGROUND_QUANTILE)
    body = _frame_quantile(flat, BODY_QUANTILE)
    threshold = background + fraction * (body - background)
    inside = smooth > threshold.view(-1, 1, 1)
    rows = inside.any(dim=2)  # (B, H)
    cols = inside.any(dim=1)  # (B, W)
    # argmax returns the first maximal index, so on the flipped profile it finds the last.
    first_row, first_col = rows.byte().argmax(dim=1), cols.byte().argmax(dim=1)
    last_row = height - 1 - rows.flip(1).byte().argmax(dim=1)
    last_col = width - 1 - cols.flip(1).byte().argmax(dim=1)
    box = torch.stack([first_col, first_row, last_col, last_row], dim=1).float()
    whole = torch.tensor([0.0, 0.0, width - 1.0, height - 1.0], device=vst.device)
    found = (rows.any(dim=1) & (body - background > BOX_MIN_CONTRAST)).unsqueeze(1)
    return torch.where(found, box, whole)


def to_frame_grid(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Resample maps that cover the frame (token-grid features, mask logits) onto a grid.

    Parameters
    ----------
    maps : Tensor
        (B, C, h, w) float on any grid that covers the whole frame.
    size : tuple of int
        (H, W) of the target grid, e.g. the frame's or a feature map's.

    Returns
    -------
    Tensor
        (B, C, H, W), bilinear with ``align_corners=False`` (grids cover the same extent).
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def _check_frames(vst: Tensor) -> None:
    if vst.ndim != 4 or vst.shape[1] != 1 or vst.shape[-1] < 1 or vst.shape[-2] < 1:
        raise ValueError(f"frames must be (B, 1, H, W), got shape {tuple(vst.shape)}")
    if not vst.is_floating_point():
        raise ValueError(f"frames must be floating point, got {vst.dtype}")


def _frame_quantile(flat: Tensor, q: float) -> Tensor:
    """B quantiles of (B, N) rows; ``kthvalue`` has no size limit, unlike ``torch.quantile``."""
    n = flat.shape[1]
    k = min(n, max(1, math.ceil(q * n)))
    return flat.kthvalue(k, dim=1).values
