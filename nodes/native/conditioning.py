"""FourD 4DNeX Conditioning (native) and FourD 4DNeX Text Encode (native)."""

from __future__ import annotations

import torch

from ...fourd_core.errors import InputError
from ...fourd_core.pipelines.xyz_init import sloped_plane
from ...fourd_core.io.images import single_image, to_rgb
from ...fourd_core.native.layout import SPATIAL_STRIDE, TEMPORAL_STRIDE, check_fused_size, condition_frames, native_concat_mask
from ...fourd_core.pipelines.fourdnex import PROMPT_SUFFIX
from .. import validation as v
from ..types import XYZ
from .common import NATIVE_CATEGORY


def set_cond_values(conditioning: list, values: dict) -> list:
    """A copy of a CONDITIONING list with ``values`` merged into every entry's options dict."""
    if not isinstance(conditioning, list) or not all(isinstance(c, (list, tuple)) and len(c) >= 2 for c in conditioning):
        raise InputError("Expected a CONDITIONING (from CLIP Text Encode or FourD 4DNeX Text Encode (native)).")
    return [[c[0], {**c[1], **values}] for c in conditioning]


class FourD4DNeXConditioningNative:
    DESCRIPTION = ("Like core WanImageToVideo, for 4DNeX: encodes the width-fused condition video ([RGB | XYZ init] "
                   "first frame, gray after) with the VAE, sets it with the 4DNeX mask (RGB known, XYZ half-known "
                   "0.5 on latent frame 0) and the CLIP-vision output of the RGB image on BOTH conditionings (text-only "
                   "guidance, as trained), and returns the empty fused-width LATENT. Then: ModelSamplingSD3 (shift 3) "
                   "+ KSampler (uni_pc or euler, cfg 5) on the model from FourD Apply 4DNeX (native).")
    CATEGORY = NATIVE_CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the 4DNeX condition latent, mask and CLIP vision.",
                       "Negative conditioning with the same condition (guidance acts on text only).",
                       "Empty latent [B, 16, (length-1)/4+1, H/8, 2W/8] (RGB | XYZ side by side).")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "The prompt + ' POINTMAP_STYLE.' (FourD 4DNeX Text Encode "
                             "(native) adds the suffix; with core CLIP Text Encode type it yourself)."}),
                "negative": ("CONDITIONING", {"tooltip": "Empty prompt, as trained."}),
                "vae": ("VAE", {"tooltip": "wan_2.1_vae from core Load VAE."}),
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {"tooltip": "CLIP Vision Encode of the RGB image only "
                                       "(clip_vision_h)."}),
                "image": ("IMAGE", {"tooltip": "The prepared photo (FourD Prepare Image); its size is one modality's size."}),
                "length": ("INT", {"default": 49, "min": 1, "max": 161, "step": 4, "tooltip": "Frames, 4k+1 (trained: 49)."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip": "Latents per batch."}),
            },
            "optional": {
                "xyz_init": (XYZ, {"tooltip": "First-frame XYZ condition (FourD Prepare Image); default the sloped plane."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, length=None, batch_size=None):
        """Queue-time checks (ComfyUI then skips its own range checks for these inputs)."""
        return v.check_all(v.frames_4k1("length", length, 1, 161), v.int_range("batch_size", batch_size, 1, 16))

    def encode(self, positive, negative, vae, clip_vision_output, image, length, batch_size, xyz_init=None):
        rgb = to_rgb(single_image(image))
        h, w = int(rgb.shape[0]), int(rgb.shape[1])
        check_fused_size(h, w, length)
        xyz = sloped_plane(h, w) if xyz_init is None else xyz_init.float()
        if tuple(xyz.shape) != (h, w, 3):
            raise InputError(f"xyz_init is {tuple(xyz.shape)} but the image is {w}x{h}: make both with FourD Prepare Image.")
        if not torch.isfinite(xyz).all():
            raise InputError("xyz_init contains NaN or inf.")
        frames = condition_frames(rgb, xyz, length)                      # [F, H, 2W, 3]
        concat = vae.encode(frames)
        t_lat, h_lat, w_lat = (length - 1) // TEMPORAL_STRIDE + 1, h // SPATIAL_STRIDE, 2 * (w // SPATIAL_STRIDE)
        if tuple(concat.shape[-3:]) != (t_lat, h_lat, w_lat) or concat.shape[1] != 16:
            raise InputError(f"The VAE returned a latent {tuple(concat.shape)}; 4DNeX needs the Wan2.1 VAE "
                             f"(wan_2.1_vae.safetensors, 16 channels, x8 space, x4 time).")
        values = {"concat_latent_image": concat, "concat_mask": native_concat_mask(t_lat, h_lat, w_lat),
                  "clip_vision_output": clip_vision_output}
        latent = torch.zeros(batch_size, 16, t_lat, h_lat, w_lat)
        return (set_cond_values(positive, values), set_cond_values(negative, values), {"samples": latent})


def encode_text(clip, text: str) -> list:
    """CONDITIONING of ``text`` with a core CLIP (UMT5-XXL for Wan)."""
    tokens = clip.tokenize(text)
    if hasattr(clip, "encode_from_tokens_scheduled"):
        return clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


class FourD4DNeXTextEncodeNative:
    DESCRIPTION = ("Encode the 4DNeX prompt with a core CLIP (umt5_xxl, type wan): appends ' POINTMAP_STYLE.' to the "
                   "prompt as in training and encodes the negative prompt (empty, as trained).")
    CATEGORY = NATIVE_CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("Prompt + ' POINTMAP_STYLE.'.", "The negative prompt (empty by default).")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "umt5_xxl from core Load CLIP (type wan)."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Describe the scene and its motion."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Empty as trained."}),
        }}

    def encode(self, clip, prompt, negative_prompt):
        if not prompt.strip():
            raise InputError("The prompt is empty: 4DNeX needs a text description of the scene.")
        return (encode_text(clip, prompt.strip() + PROMPT_SUFFIX), encode_text(clip, negative_prompt))
