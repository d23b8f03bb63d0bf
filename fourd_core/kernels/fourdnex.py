"""The two changes 4DNeX makes to the Wan DiT for a width-fused ``[RGB | XYZ]`` latent, as tensor
functions both model paths call (4DNeX Sec. 4.2; the official ``WanTransformer3DModelDembSameRope``):

1. **learnable domain embeddings** ``[2, D]``: row 0 is added to every token of the left (RGB) half right
   after the patch embedding, row 1 to every token of the right (XYZ) half
   (:func:`add_domain_embeddings`);
2. **shared RoPE**: rotary positions are computed for *half* the token width and repeated over both
   halves, so the RGB token at ``(t, h, j)`` and the XYZ token at ``(t, h, j)`` get the same rotation
   (:func:`shared_rope`).

Callers: the diffusers hooks in :mod:`fourd_core.models.patches` (channels-first patch-embedding
output, diffusers' ``(cos, sin)`` tables) and ComfyUI's block-0 patch / forward wrapper in
``nodes/native/patches.py`` (token sequences, ComfyUI's ``rope_encode`` table).
"""

from __future__ import annotations

import torch

from ..errors import InputError


def shared_rope(freqs_half: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """4DNeX shared RoPE: positions of the half width repeated over both halves.

    Args:
        freqs_half: a rotary table for a ``(t, h, w/2)`` token grid, ``[B, t*h*(w/2), ...]`` in (t, h, w)
            order, w fastest (diffusers' ``cos`` or ``sin`` ``[1, N, 1, head_dim]``; ComfyUI's
            ``rope_encode`` ``[1, N, 1, head_dim/2, 2, 2]``).
        grid: ``(t, h, w)`` token grid of the *fused* latent (``w`` even).
    Returns:
        ``[B, t*h*w, ...]``, same dtype: token column ``j`` and ``j + w/2`` get the same rotation.
    Raises:
        InputError: odd token width, or a table that does not match the grid.
    """
    t, h, w = grid
    if w % 2:
        raise InputError(f"4DNeX shared RoPE needs an even token width (two equal halves of whole patches), got {w}: "
                         "use a per-modality pixel width that is a multiple of 16.")
    rest = freqs_half.shape[2:]
    if freqs_half.shape[1] != t * h * (w // 2):
        raise InputError(f"RoPE table has {freqs_half.shape[1]} positions, expected {t * h * (w // 2)} for grid {grid}.")
    f = freqs_half.reshape(freqs_half.shape[0], t, h, w // 2, *rest)
    return torch.cat([f, f], dim=3).reshape(freqs_half.shape[0], t * h * w, *rest)


def add_domain_embeddings(x: torch.Tensor, embeddings: torch.Tensor, *, width_dim: int, channel_dim: int) -> torch.Tensor:
    """Add 4DNeX's domain embeddings: row 0 on the RGB (left) half of the token width, row 1 on the XYZ
    (right) half.

    Args:
        x: patch-embedded tokens with a token-width axis ``width_dim`` (even size ``w``) and a channel axis
            ``channel_dim`` of size ``D``: diffusers' ``[B, D, t, h, w]`` (``width_dim=-1, channel_dim=1``)
            or ComfyUI's tokens viewed as ``[B, t*h, w, D]`` (``width_dim=2, channel_dim=3``).
        embeddings: ``[2, D]``.
    Returns:
        a new tensor, same shape and dtype as ``x``.
    Raises:
        InputError: an odd width or embeddings that do not fit ``D`` (names the file to use).
    """
    wd, cd = width_dim % x.ndim, channel_dim % x.ndim
    w, d = x.shape[wd], x.shape[cd]
    if w % 2:
        raise InputError(f"4DNeX needs an even token width (two equal halves), got {w}.")
    if tuple(embeddings.shape) != (2, d):
        raise InputError(f"Domain embeddings {tuple(embeddings.shape)} do not fit the model width {d}: use the "
                         "learnable_domain_embeddings file of the same base model (Wan2.1-I2V-14B: [2, 5120]).")
    emb = embeddings.to(device=x.device, dtype=x.dtype)
    side = (torch.arange(w, device=x.device) >= w // 2).long()           # 0 = RGB, 1 = XYZ
    table = emb[side]                                                     # [w, D]
    if cd < wd:
        table = table.T                                                   # [D, w]
    shape = [1] * x.ndim
    shape[wd], shape[cd] = w, d
    return x + table.reshape(shape)
