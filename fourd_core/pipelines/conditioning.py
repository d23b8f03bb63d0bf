"""Width-fused condition building for 4DNeX (pure tensor functions, no models).

Reference: 4DNeX Sec. 4.2 (Fig. 5) and the official ``prepare_latents`` (official 3DTopia/4DNeX @ 1101bc6: ``core/inference/wan.py``).
All functions are pure so the spec tests can check them against formulas.
"""

from __future__ import annotations

import torch
from einops import rearrange

#: Soft mask value on the XYZ half of the first latent frame ("partially known" plane).
XYZ_MASK_VALUE = 0.5


def fuse_width(rgb: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Concatenate ``[RGB | XYZ]`` along the last (width) axis.

    Args:
        rgb, xyz: tensors of identical shape ``[..., W]`` (e.g. ``[B, C, F, H, W]``).
    Returns:
        ``[..., 2W]`` with RGB on the left and XYZ on the right (4DNeX width-wise fusion, Sec. 4.2).
    Raises:
        ValueError: on a shape mismatch.
    """
    if rgb.shape != xyz.shape:
        raise ValueError(f"RGB and XYZ must have the same shape to be fused, got {tuple(rgb.shape)} and {tuple(xyz.shape)}.")
    return torch.cat([rgb, xyz], dim=-1)


def split_width(fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`fuse_width`: returns the (RGB, XYZ) halves of ``[..., 2W]``.

    Raises:
        ValueError: if the last axis is odd.
    """
    w2 = fused.shape[-1]
    if w2 % 2:
        raise ValueError(f"A width-fused tensor must have an even width, got {w2}.")
    rgb, xyz = rearrange(fused, "... (m w) -> m ... w", m=2)
    return rgb, xyz


def condition_video(rgb0: torch.Tensor, xyz0: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The pixel-space condition video encoded by the VAE.

    Frame 0 is ``[rgb0 | xyz0]``; frames ``1 .. num_frames-1`` are zeros (mid-gray in [-1, 1]).

    Args:
        rgb0: ``[B, 3, H, W]`` in ``[-1, 1]``.
        xyz0: ``[B, 3, H, W]`` in ``[-1, 1]`` (e.g. the sloped plane, channels first).
        num_frames: pixel frames ``F`` (``4k + 1``).
    Returns:
        ``[B, 3, F, H, 2W]``.
    """
    first = fuse_width(rgb0, xyz0).unsqueeze(2)
    rest = first.new_zeros(first.shape[0], first.shape[1], num_frames - 1, first.shape[3], first.shape[4])
    return torch.cat([first, rest], dim=2)


def condition_mask(
    batch_size: int,
    num_frames: int,
    latent_height: int,
    latent_width: int,
    temporal_stride: int = 4,
    xyz_value: float = XYZ_MASK_VALUE,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """The 4-channel I2V mask of 4DNeX.

    Built as the official code does: a per-pixel-frame mask ``[B, 1, F, h, 2w]`` that is 1 at frame
    0 (``xyz_value`` on the right half) and 0 elsewhere; frame 0 repeated ``temporal_stride`` times;
    reshaped to ``[B, T, stride, h, 2w]`` and transposed to ``[B, stride, T, h, 2w]``. Result: in
    latent frame 0 all 4 channels are 1 on the RGB half and ``xyz_value`` on the XYZ half; every
    later latent frame is 0.

    Args:
        latent_width: the *fused* latent width ``2w`` (even).
    Returns:
        ``[B, temporal_stride, T, h, 2w]`` with ``T = (F - 1) / stride + 1``.
    """
    m = torch.zeros(batch_size, 1, num_frames, latent_height, latent_width, dtype=dtype, device=device)
    m[:, :, 0, :, : latent_width // 2] = 1.0
    m[:, :, 0, :, latent_width // 2 :] = xyz_value
    first = m[:, :, :1].repeat_interleave(temporal_stride, dim=2)
    m = torch.cat([first, m[:, :, 1:]], dim=2)
    m = m.view(batch_size, -1, temporal_stride, latent_height, latent_width)
    return m.transpose(1, 2).contiguous()
