"""SAM's ViT image encoder run on a frame's own token grid instead of the padded canvas.

A 1024x256 whole-body frame fills a quarter of SAM's 1024x1024 canvas; padding it would
spend three quarters of the encoder's work (and far more of its global attention) on zeros.
Here the encoder's own sub-modules run on the h-by-w tokens that cover the frame: the absolute
position embedding is cropped to the top-left h-by-w tokens (where the frame would sit on the
canvas), window blocks run unchanged (their relative-position tables are per 14x14 window),
and global blocks attend over h-by-w tokens with their relative-position tables cropped around
the centre. Cropping keeps each table entry's meaning (one token offset);
``segment_anything``'s ``get_rel_pos`` would instead interpolate a 127-entry table down to
2h-1 entries, stretching the offsets. On a full 64x64 grid the result equals
``ImageEncoderViT.forward``.

Sub-modules are called (``attn.qkv(x)``, never ``attn.qkv.weight``) so that adapters that
wrap those layers (LoRA) take part.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Attention, Block
from torch import Tensor

__all__ = ["crop_rel_pos", "encode_frame_grid", "global_block_forward", "patch_size"]


def patch_size(encoder: ImageEncoderViT) -> int:
    """Side of the encoder's square patches, in pixels (16 for every SAM variant)."""
    return int(encoder.patch_embed.proj.stride[0])


def encode_frame_grid(encoder: ImageEncoderViT, x: Tensor) -> Tensor:
    """Image embeddings of a normalised frame on its own token grid.

    Parameters
    ----------
    encoder : segment_anything.modeling.ImageEncoderViT
        Built with ``use_abs_pos`` and an ``img_size`` canvas (1024 for SAM).
    x : Tensor
        (B, 3, H', W') float, already normalised for the encoder; H' and W' are multiples of the
        patch size and at most the canvas size.

    Returns
    -------
    Tensor
        (B, C, h, w) with h = H'/16, w = W'/16 and C the encoder's ``out_chans``.
    """
    patch = patch_size(encoder)
    canvas = int(encoder.img_size)
    height, width = x.shape[-2:]
    if height % patch or width % patch or height > canvas or width > canvas:
        raise ValueError(
            f"frame of {height}x{width} pixels is not a multiple of the {patch}-pixel patch "
            f"within the {canvas}x{canvas} canvas"
        )
    tokens = cast(Tensor, encoder.patch_embed(x))  # (B, h, w, D)
    h, w = tokens.shape[1:3]
    if encoder.pos_embed is not None:
        tokens = tokens + encoder.pos_embed[:, :h, :w, :]
    for block in encoder.blocks:
        # Window blocks attend within fixed windows whatever the grid: their own forward fits.
        tokens = block(tokens) if block.window_size > 0 else global_block_forward(block, tokens)
    return cast(Tensor, encoder.neck(tokens.permute(0, 3, 1, 2)))


def global_block_forward(block: Block, x: Tensor) -> Tensor:
    """``Block.forward`` for a global-attention block on any grid up to its table size.

    Parameters
    ----------
    block : segment_anything.modeling.image_encoder.Block
        A block with ``window_size == 0``.
    x : Tensor
        (B, h, w, D) tokens.

    Returns
    -------
    Tensor
        (B, h, w, D) tokens.
    """
    x = x + _global_attention(block.attn, block.norm1(x))
    return cast(Tensor, x + block.mlp(block.norm2(x)))


def _global_attention(attn: Attention, x: Tensor) -> Tensor:
    batch, h, w, dim = x.shape
    heads = int(attn.num_heads)
    qkv = attn.qkv(x).reshape(batch, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
    bias = None
    if attn.use_rel_pos:
        bias = _decomposed_rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, (h, w))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=float(attn.scale))
    out = out.reshape(batch, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(batch, h, w, dim)
    return cast(Tensor, attn.proj(out))


def _decomposed_rel_pos_bias(
    q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: tuple[int, int]
) -> Tensor:
    """MViTv2's decomposed relative-position bias, (B, heads, N, N), from cropped tables.

    As in ``segment_anything``'s ``add_decomposed_rel_pos``, the bias is the unscaled query
    dotted with the embedding of each key's offset along each axis.
    """
    h, w = size
    table_h = _offset_table(crop_rel_pos(rel_pos_h, h), h)  # (h, h, head_dim)
    table_w = _offset_table(crop_rel_pos(rel_pos_w, w), w)  # (w, w, head_dim)
    batch, heads, _, head_dim = q.shape
    grid_q = q.reshape(batch, heads, h, w, head_dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, table_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, table_w)
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # (B, heads, h, w, h, w)
    return bias.reshape(batch, heads, h * w, h * w)


def crop_rel_pos(rel_pos: Tensor, size: int) -> Tensor:
    """The ``2*size - 1`` entries around the centre of a relative-position table.

    Parameters
    ----------
    rel_pos : Tensor
        (2S - 1, head_dim), entry ``S - 1 + d`` embeds a token offset of ``d``.
    size : int
        Tokens along the axis, at most S.

    Returns
    -------
    Tensor
        (2 * size - 1, head_dim), entry ``size - 1 + d`` embeds offset ``d``.
    """
    entries = rel_pos.shape[0]
    centre = (entries - 1) // 2
    if entries % 2 == 0 or not 0 < size <= centre + 1:
        raise ValueError(
            f"a relative-position table of {entries} entries cannot serve {size} tokens"
        )
    return rel_pos[centre - (size - 1) : centre + size]


def _offset_table(rel_pos: Tensor, size: int) -> Tensor:
    """(size, size, head_dim): the embedding of offset ``i - j`` for query ``i`` and key ``j``."""
    positions = torch.arange(size, device=rel_pos.device)
    return rel_pos[positions[:, None] - positions[None, :] + (size - 1)]
