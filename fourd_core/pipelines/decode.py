"""Decoding width-fused 4DNeX latents into the RGB video and the XYZ point-map video.

The chain (official 3DTopia/4DNeX @ 1101bc6: ``wan_dataset.py``, ``inference.py``): XYZ half ``z_v = 1.70 * z - 0.13`` (modality de-normalisation), then
the VAE's ``z = z_v * std_c + mean_c``, the Wan VAE decoder, clamp to [-1, 1], ``x / 2 + 0.5``. The
RGB half skips the first step. The halves are decoded *as two samples of one batch*, never as one
wide image, so nothing leaks across the seam (the official joint decode does leak; ``joint=True``
reproduces it).

Speed (tiny preset, 2 CPU cores; ``python bench/bench_decode.py``): the Wan VAE decodes one latent
frame at a time, so its tensors are small, and two things make a CPU decode slower than sampling:
(1) PyTorch routes 3D convolutions whose ``N*C*T*H`` is small to its unfolding ``slow_conv3d``
kernel instead of oneDNN; a batch of 2 (the two halves) takes the oneDNN path; (2) the channel-first
RMS norm (``F.normalize`` over dim 1 of ``[B, C, T, H, W]`` with 8-32 channels) is a strided
reduction that takes longer than the convolutions; on the CPU it is computed here as
``x * rsqrt(sum(x^2))`` (same formula, a contiguous reduction), through a per-call override of
the VAE's norm modules that is removed afterwards. On CUDA neither applies and the stock modules run.

Interruption: a forward pre-hook on the VAE decoder runs ``callback(done, total)`` before every
latent frame (and tile), so a cancel (ComfyUI's Stop) takes effect within one frame's decode.
"""

from __future__ import annotations

import contextlib
import types
from typing import Callable, Iterator

import torch
from diffusers.utils.torch_utils import get_module_execution_device
from einops import rearrange

from ..errors import InputError
from .xyz_init import denormalize_xyz_latents
from .conditioning import split_width

#: ``callback(done, total)`` between decoder calls; raise (e.g. CancelledError) to stop.
DecodeCallback = Callable[[int, int], None]


def vae_latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel ``latents_mean`` and ``1 / latents_std`` shaped ``[1, C, 1, 1, 1]``."""
    c = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1).to(like.device, like.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1).to(like.device, like.dtype)
    return mean, inv_std


def _rms_norm_contiguous(self, x: torch.Tensor) -> torch.Tensor:
    # diffusers WanRMS_norm: F.normalize(x, dim=channel) * scale * gamma + bias, F.normalize being
    # x / max(||x||, 1e-12); the same value through a sum of squares.
    dim = 1 if self.channel_first else -1
    xf = x.float()
    inv = (xf * xf).sum(dim, keepdim=True).clamp_min(1e-24).rsqrt()
    return (xf * inv).to(x.dtype) * self.scale * self.gamma + self.bias


@contextlib.contextmanager
def _fast_cpu_norms(vae) -> Iterator[None]:
    """While active, the VAE's RMS norms use :func:`_rms_norm_contiguous` (CPU only; see module doc)."""
    patched = []
    if get_module_execution_device(vae).type == "cpu":
        for m in vae.modules():
            if type(m).__name__ == "WanRMS_norm" and hasattr(m, "channel_first") and "forward" not in vars(m):
                m.forward = types.MethodType(_rms_norm_contiguous, m)
                patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            vars(m).pop("forward", None)


@contextlib.contextmanager
def _decoder_progress(vae, total: int, callback: DecodeCallback | None) -> Iterator[None]:
    if callback is None:
        yield
        return
    done = [0]

    def pre_hook(module, args, kwargs=None):
        callback(min(done[0], total), total)
        done[0] += 1

    handle = vae.decoder.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()
    callback(total, total)


@torch.no_grad()
def decode_6d(pipe, latents: torch.Tensor, *, vae_dtype: torch.dtype = torch.float32, joint: bool = False,
              batch_halves: bool | None = None,
              callback: DecodeCallback | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode width-fused latents into an RGB video and an XYZ point-map video (see module doc).

    Args:
        pipe: a pipeline with a diffusers ``AutoencoderKLWan`` as ``pipe.vae``.
        latents: ``[1, 16, T, h, 2w]`` as returned by :func:`~fourd_core.pipelines.fourdnex.generate_latents`
            (XYZ half modality-normalised).
        vae_dtype: decoder dtype (float32 recommended for Wan).
        joint: reproduce the official joint decode of the fused width (leaks across the seam).
        batch_halves: decode the halves as a batch of 2 (default: on the CPU, where it is ~2x
            faster; on a GPU one after the other, which halves the decoder's peak memory).
        callback: ``callback(done, total)`` before each decoder call; raise to cancel. Progress
            counts latent frames; with VAE tiling the decoder runs once per tile and frame, so
            ``done`` is clamped at ``total`` before the decode ends (Stop still works per call).
    Returns:
        ``rgb`` ``[F, H, W, 3]`` and ``xyz`` ``[F, H, W, 3]``, float32 in [0, 1] on CPU. The XYZ
        channels are the 4DNeX point map (x, y, z) mapped from [-1, 1] to [0, 1]: first-camera OpenCV
        axes, per-frame bounding-box centred, one global scale (official 3DTopia/4DNeX @ 1101bc6: ``inference.py``, ``build_wan_dataset.py``, ``wan_dataset.py``).
    Raises:
        InputError: latents not ``[1, C, T, h, 2w]``.
    """
    if latents.ndim != 5 or latents.shape[0] != 1 or latents.shape[-1] % 2:
        raise InputError(f"latents must be [1, C, T, h, 2w] with an even width, got {tuple(latents.shape)}.")
    vae = pipe.vae
    orig_dtype = vae.dtype
    device = get_module_execution_device(vae)
    if batch_halves is None:
        batch_halves = device.type == "cpu"
    if orig_dtype != vae_dtype:
        vae.to(dtype=vae_dtype)
    try:
        z = latents.to(device=device, dtype=torch.float32)
        z_rgb, z_xyz = split_width(z)
        z_xyz = denormalize_xyz_latents(z_xyz)
        mean, inv_std = vae_latent_stats(vae, z)
        frames = z.shape[2]

        def run(zz: torch.Tensor) -> torch.Tensor:
            x = vae.decode((zz / inv_std + mean).to(vae_dtype), return_dict=False)[0].float().clamp(-1, 1)
            return (rearrange(x, "b c f h w -> b f h w c") / 2 + 0.5).cpu()

        with _fast_cpu_norms(vae):
            if joint:
                with _decoder_progress(vae, frames, callback):
                    both = run(torch.cat([z_rgb, z_xyz], dim=-1))[0]
                rgb, xyz = rearrange(both, "f h (m w) c -> m f h w c", m=2)
                return rgb.contiguous(), xyz.contiguous()
            if batch_halves and not getattr(vae, "use_slicing", False):
                with _decoder_progress(vae, frames, callback):
                    rgb, xyz = run(torch.cat([z_rgb, z_xyz], dim=0))
                return rgb.contiguous(), xyz.contiguous()
            with _decoder_progress(vae, 2 * frames, callback):
                return run(z_rgb)[0], run(z_xyz)[0]
    finally:
        if orig_dtype != vae_dtype:
            vae.to(dtype=orig_dtype)
        if hasattr(pipe, "maybe_free_model_hooks"):
            pipe.maybe_free_model_hooks()
