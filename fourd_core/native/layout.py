"""Tensor layouts of 4DNeX on ComfyUI's native Wan (pure functions, no ComfyUI import).

Conventions of ComfyUI (Comfy-Org/ComfyUI a125cd8; facts in the pack's reference notes):

* IMAGE ``[F, H, W, 3]`` float in [0, 1]; ``VAE.encode`` maps it to [-1, 1] (``x * 2 - 1``) and
  returns the posterior mean in the VAE's *raw* latent space ``[1, 16, T, h, w]``;
* a sampler's LATENT is raw too: the model sees ``(z - mean_c) / std_c`` (``process_latent_in``);
* ``WAN21.concat_cond`` turns ``concat_mask`` (1 = generate, 0 = known) into ``1 - mask`` repeated
  to 4 channels and puts ``[mask 4 | normalised condition latent 16]`` after the noisy latent,
  which is the 36-channel input order of diffusers' Wan I2V;
* token order after the patch embedding is (t, h, w) with w fastest; RoPE ``freqs`` from
  ``WanModel.rope_encode`` are ``[1, N, 1, head_dim / 2, 2, 2]`` in the same order.

Each function states the 4DNeX formula it implements (4DNeX Sec. 4.2; the official code as
described for the diffusers path in ``fourd_core.models.patches`` and ``fourd_core.pipelines``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import InputError
from ..pipelines.xyz_init import denormalize_xyz_latents
from ..pipelines.conditioning import condition_mask, condition_video, split_width

_VAE_CONFIG = Path(__file__).resolve().parents[1] / "models" / "configs" / "wan21_i2v_14b_480p" / "vae.json"
#: Wan2.1 VAE per-channel latent statistics (the same numbers as ComfyUI's ``latent_formats.Wan21``).
_VAE = json.loads(_VAE_CONFIG.read_text())
WAN21_LATENTS_MEAN: tuple[float, ...] = tuple(_VAE["latents_mean"])
WAN21_LATENTS_STD: tuple[float, ...] = tuple(_VAE["latents_std"])
SPATIAL_STRIDE = 8
TEMPORAL_STRIDE = 4


def check_fused_size(height: int, width: int, num_frames: int) -> None:
    """Validate one modality's pixel size and the frame count for the fused 4DNeX latent.

    Raises:
        InputError: height/width not a multiple of 16 (each half must hold whole 2x2 patches of the
            8x-downsampled latent) or ``num_frames`` not ``4k + 1``.
    """
    if height < 16 or width < 16 or height % 16 or width % 16:
        raise InputError(f"Image size {width}x{height} per modality must be a multiple of 16 (4DNeX: 720x480). "
                         "Resize it with FourD Prepare Image.")
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_STRIDE:
        raise InputError(f"length must be 4k+1 frames (e.g. 5, 13, 49), got {num_frames}.")


def condition_frames(rgb: torch.Tensor, xyz: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The pixel video the VAE encodes for the condition, as a ComfyUI IMAGE batch.

    Frame 0 is ``[rgb | xyz]`` side by side, frames ``1 .. F-1`` are mid-gray (0.5, i.e. 0 in the
    VAE's [-1, 1] input space), exactly :func:`fourd_core.pipelines.conditioning.condition_video`.

    Args:
        rgb: ``[H, W, 3]`` float in [0, 1]. xyz: ``[H, W, 3]`` point map in [-1, 1] (sloped plane or
            from depth). num_frames: ``4k + 1``.
    Returns:
        ``[F, H, 2W, 3]`` float32 in [0, 1].
    Raises:
        InputError: mismatched shapes.
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or tuple(xyz.shape) != tuple(rgb.shape):
        raise InputError(f"RGB image {tuple(rgb.shape)} and XYZ init {tuple(xyz.shape)} must both be [H, W, 3] "
                         "of the same size (make both with FourD Prepare Image).")
    rgb_cf = (rgb.float() * 2 - 1).permute(2, 0, 1)[None]
    xyz_cf = xyz.float().permute(2, 0, 1)[None]
    video = condition_video(rgb_cf, xyz_cf, num_frames)       # [1, 3, F, H, 2W] in [-1, 1]
    return (video[0].permute(1, 2, 3, 0) / 2 + 0.5).contiguous()


def native_concat_mask(latent_frames: int, latent_height: int, fused_latent_width: int) -> torch.Tensor:
    """``concat_mask`` for ComfyUI's WAN21 (1 = generate, 0 = known): ``[1, 1, T, h, 2w]``.

    Latent frame 0 is 0 on the RGB half and ``1 - 0.5`` on the XYZ half; later frames are 1. After
    ComfyUI's ``1 - mask`` and 4-channel repeat this equals the diffusers mask of
    :func:`fourd_core.pipelines.conditioning.condition_mask` (1 / 0.5 on frame 0, 0 elsewhere).
    """
    num_frames = TEMPORAL_STRIDE * (latent_frames - 1) + 1
    known = condition_mask(1, num_frames, latent_height, fused_latent_width, temporal_stride=TEMPORAL_STRIDE)
    return (1.0 - known[:, :1]).contiguous()


def known_noise_mask(full: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """A LATENT ``noise_mask`` (ComfyUI: 1 = denoise, 0 = keep) that keeps whole latent frames.

    Args:
        full: ``[V, T]`` bool, True = latent frame ``t`` of row ``v`` is known
            (:func:`fourd_core.pipelines.grid_canvas.fully_known_latents`).
    Returns:
        ``[V, 1, T, h, w]`` float32 at the latent size, so ComfyUI's ``reshape_mask`` leaves it
        unchanged (no interpolation).
    """
    keep = full.bool()[:, None, :, None, None].expand(-1, 1, -1, latent_height, latent_width)
    return (~keep).float().contiguous()


def latent_stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan2.1 ``(mean, std)`` shaped ``[1, 16, 1, 1, 1]`` on ``like``'s device and dtype."""
    mean = torch.tensor(WAN21_LATENTS_MEAN, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(WAN21_LATENTS_STD, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)
    return mean, std


def denormalize_xyz_raw(raw_xyz: torch.Tensor) -> torch.Tensor:
    """The 4DNeX XYZ latent de-normalisation for ComfyUI's raw latents.

    4DNeX trains the XYZ half with ``z_n = (z - mu) / sigma`` (mu = -0.13, sigma = 1.70) *inside*
    the VAE-normalised space. A ComfyUI sampler returns raw latents ``r = z_n * std_c + mean_c``,
    so the decoder input is ``((r - mean_c) / std_c * 1.70 - 0.13) * std_c + mean_c``
    (:func:`fourd_core.pipelines.xyz_init.denormalize_xyz_latents` in the normalised space).

    Args:
        raw_xyz: ``[B, 16, T, h, w]`` raw latents of the XYZ half.
    Returns:
        raw latents ready for ``VAE.decode``, same shape, float32.
    """
    r = raw_xyz.float()
    mean, std = latent_stats(r)
    return denormalize_xyz_latents((r - mean) / std) * std + mean


def split_fused_latent(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 16, T, h, 2w]`` -> (RGB half, XYZ half). Raises :class:`InputError` for an odd or
    non-5D latent (not a 4DNeX fused latent)."""
    if samples.ndim != 5 or samples.shape[-1] % 2 or samples.shape[1] != 16:
        raise InputError(f"Not a 4DNeX fused Wan latent: expected [B, 16, T, h, 2w], got {tuple(samples.shape)}. "
                         "Sample the LATENT of FourD 4DNeX Conditioning (native).")
    return split_width(samples)
