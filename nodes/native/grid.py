"""The 4D grid (4Real-Video two-stream sync, 4Real-Video-V2 fused view-time attention) on a core Wan
``MODEL``, so the grid samples with core KSampler on the model the user already loaded.

* FourD Grid Model (native): a clone of the MODEL with the grid's DIFFUSION_MODEL wrapper and one
  ``("dit", "double_block", i)`` replace per block (the callables live in
  :mod:`fourd_core.native.grid_patches`); optional trained sync layers (``hard`` / ``soft``) from
  ``models/fourd_sync/`` (:func:`fourd_core.models.sync.read_sync_weights`, checked against the
  MODEL's block count and width), registered as an additional model of the MODEL so ComfyUI's
  memory manager loads, counts and offloads them with it (:func:`register_sync_model`).
* FourD Grid Conditioning (native): Wan's I2V condition per row (row 0 and column 0 known), CLIP
  per row, and a LATENT whose ``noise_mask`` marks the fully known latent frames, so core KSampler
  pastes them every step (per-step known-latent replacement, as the diffusers sampler's
  ``replace_known``; see the node's doc for why the two agree).

Grids larger than one window: the window nodes in ``nodes/native/grid_windows.py`` (one
window / KSampler / VAE Decode / merge group per window).
"""

from __future__ import annotations

import logging

import torch

from ...fourd_core.errors import InputError
from ...fourd_core.io.images import to_rgb
from ...fourd_core.kernels.streams import grid_mode
from ...fourd_core.models.fused_lora import read_fused_lora
from ...fourd_core.models.sync import read_sync_weights
from ...fourd_core.native.lora_keys import lora_to_comfy
from ...fourd_core.native.grid_patches import GRID_STATE, GridBlockPatch, GridForwardWrapper  # noqa: F401 (re-exported)
from ...fourd_core.native.layout import known_noise_mask
from ...fourd_core.pipelines.grid_canvas import GridCanvas, fully_known_latents, latent_mask
from .. import comfy_bridge as cb
from .common import NATIVE_CATEGORY, add_lora_patches
from .conditioning import set_cond_values
from .folders import SYNC_FOLDER
from .patches import is_fourdnex_patched
from ..widgets import fused_backend_widget, grid_mode_widget

log = logging.getLogger(__name__)
GRID_WRAPPER_KEY = "fourd_grid_native"


def fused_lora_files() -> list[str]:
    """LoRA files meant for the fused grid mode: ``*fused*.safetensors`` in models/loras/."""
    return [f for f in cb.file_list("loras") if "fused" in f.lower() and f.endswith(".safetensors")]


class FourDGridModelNative:
    DESCRIPTION = ("The 4D grid on a core Wan2.1-I2V MODEL (the base model from Load Diffusion Model, without 4DNeX): "
                   "adds 4Real-Video's column stream and sync (training-free or trained sync layers) to every block, or "
                   "4Real-Video-V2's fused view-time attention, so core KSampler denoises all views of the grid "
                   "together. Use with FourD Grid Conditioning (native) and the same number of views; decode with core "
                   "VAE Decode (row-major: frame (view v, time t) at v * T + t).")
    CATEGORY = NATIVE_CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A clone of the MODEL with the grid patches (the input MODEL is unchanged).",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "Wan2.1-I2V from core Load Diffusion Model (not the 4DNeX-patched one)."}),
            "views": ("INT", {"default": 8, "min": 2, "max": 64, "tooltip": "Views V of the grid (rows of the batch)."}),
            "mode": grid_mode_widget(),
        }, "optional": {
            "sync_weights": ([cb.NONE] + cb.file_list(SYNC_FOLDER), {
                "tooltip": "Trained sync layers (.safetensors in models/fourd_sync/, format in "
                           "fourd_core/models/sync.py) for mode hard or soft; (none) = training-free."}),
            "fused_backend": fused_backend_widget(),
            "fused_lora": ([cb.NONE] + fused_lora_files(), {
                "tooltip": "Fused mode: a LoRA trained for the fused view-time attention (`python -m fourd_core train "
                           "fused`; files with 'fused' in the name in models/loras/); (none) = the base model."}),
            "fused_lora_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                              "tooltip": "Scale of the fused LoRA (1.0 = as trained)."}),
            "column_clip": ("CLIP_VISION_OUTPUT", {
                "tooltip": "Two-stream modes: CLIP of row 0 at every latent time, from FourD Grid Conditioning / Window "
                           "(native), so each column sees the image of its own instant (as the diffusers grid sampler); "
                           "unconnected: every column uses row 0's first frame."}),
        }}

    def patch(self, model, views, mode, sync_weights=cb.NONE, fused_backend="auto", column_clip=None,
              fused_lora=cb.NONE, fused_lora_strength=1.0):
        from comfy.patcher_extension import WrappersMP

        from .common import wan_i2v_model

        dm = wan_i2v_model(model)
        if is_fourdnex_patched(model):
            raise InputError("The grid runs the base Wan model: connect the MODEL from Load Diffusion Model, not the "
                             "output of FourD Apply 4DNeX (native).")
        spec = grid_mode(mode)
        n = len(dm.blocks)
        sync = None
        if sync_weights and sync_weights != cb.NONE:
            if spec.sync is None:
                raise InputError(f"Sync weights are for mode 'hard' or 'soft'; mode is {mode!r}. Choose one of those "
                                 "modes or set sync_weights to (none).")
            sync = read_sync_weights(cb.resolve_model(SYNC_FOLDER, sync_weights), n, int(dm.dim), mode,
                                     what="this MODEL")
        elif mode == "soft":
            log.warning("FourD grid: mode 'soft' without sync_weights keeps the two streams independent (the rows "
                        "are denoised on their own); use soft_avg for training-free soft sync.")
        out = model.clone()
        if sync is not None:
            register_sync_model(out, sync)
        if fused_lora and fused_lora != cb.NONE:
            if spec.kind != "fused":
                raise InputError(f"A fused-attention LoRA applies to mode 'fused'; mode is {mode!r}. Choose 'fused' or "
                                 "set fused_lora to (none).")
            path = cb.resolve_model("loras", fused_lora)
            add_lora_patches(out, lora_to_comfy(read_fused_lora(path)), fused_lora_strength, path,
                             "the fused-attention LoRA")
        col = None if column_clip is None else column_clip.penultimate_hidden_states
        out.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, GRID_WRAPPER_KEY,
                                 GridForwardWrapper(views, mode, fused_backend, col))
        replaces = out.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        for i in range(n):
            out.set_model_patch_replace(GridBlockPatch(i, n, mode, replaces.get(("double_block", i)), sync), "dit",
                                        "double_block", i)
        return (out,)


#: key of the trained sync layers among the MODEL's additional models
SYNC_MODELS_KEY = "fourd_grid_sync"


def register_sync_model(model, sync) -> None:
    """Hand the trained sync layers (a :class:`~fourd_core.models.sync.GridSync`, float32) to ComfyUI's
    memory manager: wrapped in their own ModelPatcher (the diffusion model's load and offload
    devices) and registered as an additional model of ``model`` (a
    ModelPatcher, changed in place), so sampling loads them with the model, counts their memory and
    offloads them under memory pressure like the model itself (``comfy/sampler_helpers.py:
    _prepare_sampling`` loads ``model.get_nested_additional_models()``; ComfyUI 0.3.64)."""
    from comfy.model_patcher import ModelPatcher

    patcher = ModelPatcher(sync, load_device=model.load_device, offload_device=model.offload_device)
    # appended: a grid MODEL patched again still runs (and so needs) the earlier sync layers
    model.set_additional_models(SYNC_MODELS_KEY, model.get_additional_models_with_key(SYNC_MODELS_KEY) + [patcher])


class FourDGridConditioningNative:
    """Known latents: a latent frame of a row is *fully known* when its pixel frames and all earlier ones of
    the row are known (causal VAE; :func:`~fourd_core.pipelines.grid_canvas.fully_known_latents`), as in the
    diffusers sampler. Core KSampler with a ``noise_mask`` (``KSamplerX0Inpaint``) sets those latents to
    ``(1 - sigma) z + sigma n`` before every model call (``n`` = the sampling noise, ``z`` = the clean
    latents) and puts ``z`` in the denoised output; the diffusers sampler replaces them after every step
    with the next sigma's value. The model sees the same inputs at every sigma and samplers update each
    latent on its own, so the unknown latents follow the same trajectory (for an Euler step the pasted
    denoised output even lands exactly on ``(1 - sigma') z + sigma' n``); both end with ``z`` (its VAE
    round trip) in the known frames.
    The only difference: KSampler starts from ``sigma_0 n + (1 - sigma_0) samples`` everywhere, so with
    denoise < 1 the unknown latents start from the gray-filled condition instead of pure noise."""

    DESCRIPTION = ("Grid conditioning for the native grid: row 0 = the fixed-view video (all frames known), column 0 = "
                   "the freeze-time images (known except their holes). Each row's known frames are VAE-encoded as Wan's "
                   "I2V condition with a per-pixel-frame mask, and each row gets the CLIP-vision features of its first "
                   "frame, on both conditionings. The LATENT holds the encoded rows and (paste_known) a noise_mask of "
                   "the fully known latent frames, which core KSampler keeps at the current noise level every step. "
                   "One window: the whole grid is denoised at once (for larger grids use FourD Grid Canvas / Window "
                   "(native), which sample it window by window).")
    CATEGORY = NATIVE_CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT", "INT", "CLIP_VISION_OUTPUT")
    RETURN_NAMES = ("positive", "negative", "latent", "views", "column_clip")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the grid condition.", "Negative conditioning with the same condition.",
                       "Latent [V, 16, (T-1)/4+1, H/8, W/8] (one row per view): the encoded known frames, with a noise_mask "
                       "of the fully known latent frames when paste_known is on.", "V, for FourD Grid Model (native).",
                       "CLIP of row 0 at every latent time (pixel frame 4 tau), for FourD Grid Model (native)'s column "
                       "stream.")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "The scene prompt (core CLIP Text Encode, no 4DNeX suffix)."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt."}),
                "vae": ("VAE", {"tooltip": "wan_2.1_vae from core Load VAE."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "clip_vision_h from core Load CLIP Vision."}),
                "fixed_view": ("IMAGE", {"tooltip": "Row 0: the video from the first viewpoint, 4k+1 frames."}),
                "freeze_time": ("IMAGE", {"tooltip": "Column 0: instant 0 from every viewpoint (FourD Render Views); "
                                          "its first image is replaced by the video's first frame."}),
            },
            "optional": {
                "holes": ("MASK", {"tooltip": "Holes of the freeze-time images (1 = unknown), from FourD Render Views."}),
                "paste_known": ("BOOLEAN", {"default": True, "tooltip": "Give the LATENT a noise_mask so KSampler "
                                "replaces the fully known latent frames (row 0, column 0 without holes) by their clean "
                                "latents at the current noise level every step and returns them exactly."}),
            },
        }

    def encode(self, positive, negative, vae, clip_vision, fixed_view, freeze_time, holes=None, paste_known=True):
        fixed, freeze, holes = grid_inputs(fixed_view, freeze_time, holes)
        if (fixed.shape[0] - 1) % 4:
            raise InputError(f"fixed_view has {fixed.shape[0]} frames; the grid needs 4k+1 (e.g. 9, 25, 49).")
        canvas = GridCanvas.start(fixed, freeze, holes)
        pos, neg, latent, column_clip = window_conditioning(positive, negative, vae, clip_vision, canvas.pixels,
                                                            canvas.known, paste_known)
        return pos, neg, latent, freeze.shape[0], column_clip


def grid_inputs(fixed_view, freeze_time, holes=None) -> tuple:
    """Checked CPU float ``(fixed [T, H, W, 3], freeze [V, H, W, 3], holes [V, H, W] or None)``.

    Raises:
        InputError: sizes that differ or are not multiples of 16, fewer than 2 views, a holes mask of
            the wrong shape.
    """
    fixed, freeze = to_rgb(fixed_view).float().cpu(), to_rgb(freeze_time).float().cpu()
    num_v = freeze.shape[0]
    h, w = fixed.shape[1:3]
    if h % 16 or w % 16 or tuple(freeze.shape[1:3]) != (h, w) or num_v < 2:
        raise InputError(f"fixed_view ({w}x{h}) and freeze_time ({freeze.shape[2]}x{freeze.shape[1]}, {num_v} views) "
                         "must have the same size, a multiple of 16, and at least 2 views.")
    if holes is not None:
        holes = holes.float().cpu().reshape(-1, *holes.shape[-2:])
        if tuple(holes.shape) != (num_v, h, w):
            raise InputError(f"holes must be [{num_v}, {h}, {w}] (one mask per view), got {tuple(holes.shape)}.")
    return fixed, freeze, holes


def window_conditioning(positive, negative, vae, clip_vision, pixels: torch.Tensor, known: torch.Tensor,
                        paste_known: bool = True) -> tuple:
    """``(positive, negative, latent, column_clip)`` of a grid window (see FourD Grid Conditioning (native)).

    Args:
        pixels: ``[V, F, H, W, 3]`` in [0, 1]; known: ``[V, F, H, W]`` in {0, 1} (row 0 known).
    Returns:
        the conditionings with ``concat_latent_image`` (each row's known pixels, mid-gray elsewhere,
        VAE-encoded), ``concat_mask`` and per-row ``clip_vision_output``; the LATENT holds the encoded rows
        and, with ``paste_known``, the ``noise_mask`` of the fully known latent frames; ``column_clip`` =
        CLIP of row 0 at pixel frames ``4 tau`` (one per latent time, as the diffusers sampler's columns).
    """
    gray = pixels * known[..., None] + 0.5 * (1 - known[..., None])      # unknown pixels: mid-gray (0 in [-1, 1])
    concat = torch.cat([vae.encode(gray[v]) for v in range(pixels.shape[0])], dim=0)
    cvo = clip_vision.encode_image(pixels[:, 0])
    values = {"concat_latent_image": concat, "concat_mask": 1.0 - latent_mask(known), "clip_vision_output": cvo}
    latent = {"samples": concat}
    if paste_known:
        latent["noise_mask"] = known_noise_mask(fully_known_latents(known), *concat.shape[-2:])
    cols = [min(4 * tau, pixels.shape[1] - 1) for tau in range(concat.shape[2])]
    column_clip = clip_vision.encode_image(pixels[0, cols])
    return set_cond_values(positive, values), set_cond_values(negative, values), latent, column_clip
