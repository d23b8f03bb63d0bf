"""Helper nodes for the native CPU demo: stand-ins for UMT5/CLIP-H/Wan-VAE at toy size, and the
tiny Wan DiT + 4DNeX release registered as model folders so core Load Diffusion Model lists them."""

from __future__ import annotations

from ...fourd_core.errors import InputError
from ...fourd_core.io.images import single_image, to_rgb
from ...fourd_core.native.tiny_wan import TinyWanVAE, tiny_clip_features, tiny_text_embeddings
from ...fourd_core.pipelines.fourdnex import PROMPT_SUFFIX
from .common import NATIVE_CATEGORY


def clip_vision_output(features):
    """A CLIP_VISION_OUTPUT carrying ``penultimate_hidden_states`` (all Wan reads)."""
    try:
        from comfy.clip_vision import Output
    except ImportError:
        import types

        out = types.SimpleNamespace()
    else:
        out = Output()
    out.penultimate_hidden_states = features
    out.last_hidden_state = features
    out.image_embeds = features[:, 0]
    return out


class FourDTinyEncodersNative:
    DESCRIPTION = ("CPU demo only: stand-ins for UMT5-XXL and CLIP-H (which ComfyUI only builds at full size). "
                   "Deterministic random features of the prompt (+ ' POINTMAP_STYLE.') and of the image with the "
                   "shapes Wan expects ([1, 512, 4096] text, [1, 257, 1280] image). Meaningless; use core Load CLIP / "
                   "Load CLIP Vision with the real model.")
    CATEGORY = f"{NATIVE_CATEGORY}/tiny demo"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "CLIP_VISION_OUTPUT")
    RETURN_NAMES = ("positive", "negative", "clip_vision_output")
    OUTPUT_TOOLTIPS = ("Stand-in text conditioning of the prompt.", "Stand-in text conditioning of the empty prompt.",
                       "Stand-in CLIP-vision features of the image.")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The prepared RGB image."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Any text (only its bytes matter)."}),
        }}

    def encode(self, image, prompt):
        if not prompt.strip():
            raise InputError("The prompt is empty.")
        pos = [[tiny_text_embeddings(prompt.strip() + PROMPT_SUFFIX), {}]]
        neg = [[tiny_text_embeddings(""), {}]]
        return (pos, neg, clip_vision_output(tiny_clip_features(to_rgb(single_image(image)))))


class FourDTinyVAENative:
    DESCRIPTION = ("CPU demo only: a tiny random Wan-style VAE with the two methods the native 4DNeX nodes use "
                   "(ComfyUI's Load VAE only builds the full-size Wan VAE). Meaningless pictures; use core Load VAE "
                   "with wan_2.1_vae.safetensors for real runs.")
    CATEGORY = f"{NATIVE_CATEGORY}/tiny demo"
    RETURN_TYPES = ("VAE",)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("Tiny VAE for FourD 4DNeX Conditioning (native) and FourD Decode 6D (native) only.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Random weights seed."})}}

    def load(self, seed):
        return (TinyWanVAE(seed),)


class TinyCLIPVision:
    """Stand-in for a core CLIP_VISION model: ``encode_image(images [B, H, W, 3])`` returns an output
    with ``penultimate_hidden_states`` ``[B, 257, 1280]`` (:func:`tiny_clip_features` per image)."""

    def encode_image(self, images, crop=True):
        import torch

        return clip_vision_output(torch.cat([tiny_clip_features(im) for im in to_rgb(images)], dim=0))


class FourDTinyCLIPVisionNative:
    DESCRIPTION = ("CPU demo only: a stand-in for Load CLIP Vision (clip_vision_h is only built at full size) for nodes "
                   "that encode images themselves (FourD Grid Conditioning (native)). Deterministic, meaningless features.")
    CATEGORY = f"{NATIVE_CATEGORY}/tiny demo"
    RETURN_TYPES = ("CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)
    OUTPUT_TOOLTIPS = ("Stand-in CLIP vision model ([B, 257, 1280] features per image).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (TinyCLIPVision(),)
