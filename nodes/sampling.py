"""Image preparation + XYZ initialisation, the 4DNeX sampler and the 6D decoder."""

from __future__ import annotations

import dataclasses


from ..fourd_core.errors import InputError
from ..fourd_core.pipelines.xyz_init import sloped_plane, xyz_from_depth
from ..fourd_core.io.images import prepare_image, to_rgb
from ..fourd_core.pipelines.cache import PIPELINES
from ..fourd_core.models.step_cache import USABLE_CACHES, cache_help
from ..fourd_core.job import GenerateConfig
from ..fourd_core.pipelines.fourdnex import SamplingConfig, decode_6d, generate_latents, latent_preview
from ..fourd_core.settings import node_input
from ..fourd_core.scene import Scene4D
from . import comfy_bridge as cb
from . import validation as v
from .types import DIFFUSERS_CATEGORY, DIFFUSERS_NOTE, CATEGORY, LATENT, MODEL, SCENE, XYZ, FourDLatent, FourDModel


def get_pipeline(model: FourDModel):
    """Materialise (or reuse) the pipeline for a model spec; frees ComfyUI's models before a load."""
    memory = model.memory
    if memory.resolved_device().type == "cpu" and memory.offload != "none":
        memory = dataclasses.replace(memory, offload="none")
    if model.spec.base != "tiny" and not model.spec.fourdnex:
        raise InputError("No 4DNeX release on this model: connect 'FourD Load 4DNeX LoRA' after the base loader.")
    return PIPELINES.get(model.spec, memory, before_load=cb.free_memory)


class FourDPrepareImage:
    DESCRIPTION = ("Resize the input photo for 4DNeX (480x720 per modality, as trained; crop keeps it in "
                   "distribution) and build the first-frame XYZ condition: the official sloped plane, or a point map "
                   "made from your own depth map (e.g. from a depth-estimation node).")
    CATEGORY = f"{CATEGORY}/4DNeX"
    RETURN_TYPES = ("IMAGE", XYZ, "IMAGE")
    RETURN_NAMES = ("image", "xyz_init", "xyz_preview")
    OUTPUT_TOOLTIPS = ("The prepared RGB image.", "First-frame XYZ condition in [-1, 1].",
                       "The XYZ condition as colours (x, y, z -> R, G, B).")
    FUNCTION = "prepare"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The input photo (first image of the batch is used)."}),
                "width": node_input(SamplingConfig, "width"),
                "height": node_input(SamplingConfig, "height"),
                "resize": node_input(GenerateConfig, "resize"),
                "xyz_init": (["sloped plane", "from depth"], {"tooltip": "The 4DNeX plane (official), or your depth map."}),
            },
            "optional": {
                "depth": ("IMAGE", {"tooltip": "Depth map IMAGE for 'from depth' (same framing as the photo)."}),
                "depth_is": (["disparity (bright = near)", "depth (bright = far)"], {
                    "tooltip": "Depth-estimation nodes usually output disparity (bright = near)."}),
                "fov_degrees": ("FLOAT", {"default": 60.0, "min": 10.0, "max": 150.0, "step": 1.0,
                                          "tooltip": "Assumed horizontal field of view for the depth back-projection."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None):
        return v.check_all(v.config_value(SamplingConfig, "width", width),
                           v.config_value(SamplingConfig, "height", height))

    def prepare(self, image, width, height, resize, xyz_init, depth=None, depth_is="disparity (bright = near)",
                fov_degrees=60.0):
        img = prepare_image(image[:1], height, width, mode=resize)
        h, w = img.shape[:2]
        if xyz_init == "from depth":
            if depth is None:
                raise InputError("xyz_init is 'from depth' but no depth IMAGE is connected.")
            d = prepare_image(to_rgb(depth[:1]), height, width, mode=resize).mean(-1)
            d = d.clamp_min(1e-3)
            if depth_is.startswith("disparity"):
                d = 1.0 / d
            xyz = xyz_from_depth(d, fov_deg=fov_degrees)
        else:
            xyz = sloped_plane(h, w)
        return (img[None], xyz, (xyz[None] / 2 + 0.5).clamp(0, 1))


class FourDSampler:
    DESCRIPTION = DIFFUSERS_NOTE + ("Generate the 6D video (RGB | XYZ side by side) with Wan2.1-I2V + 4DNeX. Shows a preview of the "
                   "RGB half at every step; Stop cancels between steps. Official settings: 50 steps, cfg 5, shift 3, "
                   "UniPC, 49 frames. The tiny preset needs only a few steps.")
    CATEGORY = DIFFUSERS_CATEGORY
    RETURN_TYPES = (LATENT,)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Width-fused latents for FourD Decode 6D.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From FourD Load 4DNeX LoRA (or the tiny preset loader)."}),
                "image": ("IMAGE", {"tooltip": "Prepared image (FourD Prepare Image); its size sets the resolution."}),
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Describe the scene and its motion. "
                           "' POINTMAP_STYLE.' is appended automatically, as in training."}),
                "seed": node_input(SamplingConfig, "seed"),
                "steps": node_input(SamplingConfig, "steps"),
                "cfg": node_input(SamplingConfig, "guidance_scale"),
                "shift": node_input(SamplingConfig, "shift"),
                "scheduler": node_input(SamplingConfig, "scheduler"),
                "frames": node_input(SamplingConfig, "num_frames"),
            },
            "optional": {
                "xyz_init": (XYZ, {"tooltip": "First-frame XYZ condition (default: the sloped plane)."}),
                "negative_prompt": node_input(SamplingConfig, "negative_prompt", multiline=True),
                "cache": (list(USABLE_CACHES), {"default": "none", "tooltip": "Step cache (diffusers hooks): "
                          + cache_help()}),
                "cache_value": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1000.0, "step": 0.01, "tooltip":
                                "The cache's threshold / reuse count; -1 = the cache's default (see cache)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, frames=None):
        return v.config_value(SamplingConfig, "num_frames", frames, "frames")

    def sample(self, model, image, prompt, seed, steps, cfg, shift, scheduler, frames, xyz_init=None, negative_prompt="",
               cache="none", cache_value=-1.0):
        img = to_rgb(image[0])
        h, w = img.shape[:2]
        if h % 16 or w % 16:
            raise InputError(f"Image is {w}x{h} (width x height); use FourD Prepare Image (sizes must be multiples of 16).")
        if not prompt.strip():
            raise InputError("The prompt is empty: 4DNeX needs a text description of the scene.")
        cfgs = SamplingConfig(num_frames=frames, height=h, width=w, steps=steps, guidance_scale=cfg, shift=shift,
                              scheduler=scheduler, seed=seed, negative_prompt=negative_prompt, cache=cache,
                              cache_value=None if cache_value < 0 else cache_value)
        cfgs.validate()
        pipe, info = get_pipeline(model)
        progress = cb.Progress(steps)

        def on_step(step, total, latents):
            preview = latent_preview(pipe, latents, frame=min(latents.shape[2] - 1, latents.shape[2] // 2))
            progress(step, total, preview)

        progress(0, steps)
        latents = generate_latents(pipe, img, prompt.strip(), cfgs, xyz_condition=xyz_init, callback=on_step)
        cb.soft_empty_cache()
        return (FourDLatent(latents.cpu(), prompt.strip(), dataclasses.asdict(cfgs), info),)


class FourDDecode:
    DESCRIPTION = DIFFUSERS_NOTE + ("Decode the 6D latents into the RGB video and the XYZ point-map video (each half decoded on its "
                   "own with a float32 VAE, which fixes the seam leak of the official joint decode).")
    CATEGORY = DIFFUSERS_CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", SCENE)
    RETURN_NAMES = ("rgb_video", "xyz_video", "scene")
    OUTPUT_TOOLTIPS = ("RGB frames (IMAGE batch; wire to CreateVideo/SaveVideo).",
                       "XYZ point maps as colours, each axis in [0, 1] (IMAGE batch).",
                       "The 4D scene (no cameras yet: use FourD Recover Cameras).")
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The same model as the sampler."}),
            "latent": (LATENT, {"tooltip": "From FourD 4DNeX Sampler."}),
            "joint_decode": ("BOOLEAN", {"default": False, "tooltip": "Reproduce the official joint decode of both "
                             "halves (leaks across the seam). Off = separate halves (better)."}),
        }}

    def decode(self, model, latent, joint_decode):
        pipe, _ = get_pipeline(model)
        progress = cb.Progress(1)  # checks Stop before every latent frame of the VAE decode
        rgb, xyz = decode_6d(pipe, latent.latents, joint=joint_decode, callback=lambda d, t: progress(d, t))
        cb.soft_empty_cache()
        meta = {"prompt": latent.prompt, "seed": latent.sampling.get("seed"), "sampling": latent.sampling,
                "models": latent.model_info}
        return (rgb, xyz, Scene4D(rgb=rgb, xyz=xyz, metadata=meta))
