"""FourD Decode 6D (native): core VAE + LATENT -> RGB video, XYZ video and the pack's Scene4D."""

from __future__ import annotations

import torch

from ...fourd_core.errors import InputError
from ...fourd_core.native.layout import denormalize_xyz_raw, split_fused_latent
from ...fourd_core.scene import Scene4D
from .. import comfy_bridge as cb
from ..types import SCENE
from .common import NATIVE_CATEGORY


def decode_half(vae, raw: torch.Tensor, tiled: bool, tile: int, overlap: int, tile_t: int) -> torch.Tensor:
    """``VAE.decode`` (or ``decode_tiled``) of a raw ``[B, 16, T, h, w]`` latent -> ``[B*F, H, W, 3]``."""
    if tiled:
        out = vae.decode_tiled(raw, tile_x=tile // 8, tile_y=tile // 8, overlap=overlap // 8, tile_t=tile_t, overlap_t=1)
    else:
        out = vae.decode(raw)
    out = out.float()
    if out.ndim == 5:
        out = out.reshape(-1, *out.shape[-3:])
    return out.clamp(0, 1).cpu()


class FourDDecode6DNative:
    DESCRIPTION = ("Decode a 4DNeX LATENT sampled on the native MODEL: splits RGB | XYZ, undoes the XYZ latent "
                   "normalisation (x1.70 - 0.13 in the model's normalised space, converted for ComfyUI's raw latents) "
                   "and decodes each half on its own with the core VAE (no seam leak); Stop works between the halves. "
                   "The VAE falls back to tiles when memory is short; 'tiled' forces tiles.")
    CATEGORY = NATIVE_CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", SCENE)
    RETURN_NAMES = ("rgb_video", "xyz_video", "scene")
    OUTPUT_TOOLTIPS = ("RGB frames (IMAGE batch).", "XYZ point maps as colours, each axis in [0, 1] (IMAGE batch).",
                       "The 4D scene (no cameras yet: use FourD Recover Cameras).")
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "The same Wan2.1 VAE as the conditioning."}),
                "samples": ("LATENT", {"tooltip": "From KSampler (fused RGB | XYZ latent)."}),
                "tiled": ("BOOLEAN", {"default": False, "tooltip": "Decode in tiles (less memory, slower)."}),
            },
            "optional": {
                "tile_size": ("INT", {"default": 256, "min": 64, "max": 4096, "step": 32, "tooltip": "Tile size in pixels."}),
                "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32, "tooltip": "Tile overlap in pixels."}),
                "temporal_size": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 4,
                                          "tooltip": "Frames per temporal tile (tiled only)."}),
                "prompt": ("STRING", {"default": "", "tooltip": "Stored in the scene's metadata (optional)."}),
            },
        }

    def decode(self, vae, samples, tiled, tile_size=256, overlap=64, temporal_size=64, prompt=""):
        z = samples["samples"] if isinstance(samples, dict) else samples
        if z.shape[0] != 1:
            raise InputError(f"Decode 6D takes one sample; this LATENT has a batch of {z.shape[0]}. Use Latent From Batch.")
        z_rgb, z_xyz = split_fused_latent(z.float())
        tile_t = max(2, temporal_size // 4)
        cb.check_interrupt()
        rgb = decode_half(vae, z_rgb, tiled, tile_size, overlap, tile_t)
        cb.check_interrupt()
        xyz = decode_half(vae, denormalize_xyz_raw(z_xyz), tiled, tile_size, overlap, tile_t)
        meta = {"prompt": prompt, "path": "native", "latent_shape": list(z.shape)}
        return (rgb, xyz, Scene4D(rgb=rgb, xyz=xyz, metadata=meta))
