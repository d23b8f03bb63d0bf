"""The 4D grid (4Real-Video two-stream sync) on a core Wan ``MODEL``: block-replace patches and the
grid conditioning, so the grid samples with core KSampler on the model the user already loaded.

* :class:`GridForwardWrapper` (DIFFUSION_MODEL wrapper): records the grid geometry and the column
  stream's RoPE table (``rope_encode`` over ``V`` "frames": the view index takes the place of time)
  in ``transformer_options`` for the call, then runs the rest of the chain unchanged.
* :class:`GridBlockPatch` (a ``("dit", "double_block", i)`` replace per block): the row stream is
  the block's own call on the batch of ``V`` rows; the column stream runs the *same block* on the
  column layout ``[T, V*S, D]`` with row 0's context and timestep modulation; the streams are
  merged as in :class:`fourd_core.models.grid_streams.TwoStreamEngine` (4Real-Video Eqs. 4, 5, 8
  and supp. Eq. 13). A batch of ``k*V`` (cond and uncond batched by ComfyUI) is handled per group
  of ``V`` rows.

Not (yet) native: trained sync layers (``soft`` / ``hard`` with weights), the fused view-time
attention of 4Real-Video-V2, sliding windows and the per-step replacement of known latents; the
diffusers grid sampler (FourD 4D Grid Sampler) has them.
"""

from __future__ import annotations

import torch

from ...fourd_core.errors import InputError
from ...fourd_core.io.images import to_rgb
from ...fourd_core.models.grid_streams import columns_to_rows, rows_to_columns
from ...fourd_core.models.sync import soft_average_weight
from ...fourd_core.pipelines.grid import latent_mask
from .apply import NATIVE_CATEGORY
from .conditioning import set_cond_values
from .patches import is_fourdnex_patched

GRID_WRAPPER_KEY = "fourd_grid_native"
GRID_STATE = "fourd_grid_state"
NATIVE_GRID_MODES = ("soft_avg", "hard", "sequential", "rows")


class GridForwardWrapper:
    """DIFFUSION_MODEL wrapper: per-call grid state for the block patches (see module doc)."""

    def __init__(self, views: int):
        self.views = int(views)

    def __call__(self, executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options=None,
                 **kwargs):
        wan = executor.class_obj
        b, _, t, h, w = x.shape
        if b % self.views:
            raise InputError(f"The grid model expects batches of {self.views} rows (one per view), got a batch of {b}. "
                             "Use the LATENT of FourD Grid Conditioning (native) with the same number of views.")
        opts = dict(transformer_options or {})
        opts[GRID_STATE] = {"views": self.views, "times": t // wan.patch_size[0],
                            "col_freqs": wan.rope_encode(self.views, h, w, device=x.device, dtype=x.dtype),
                            "x_t": {}}
        return executor(x, timestep, context, clip_fea, time_dim_concat, opts, **kwargs)


class GridBlockPatch:
    """Two-stream replace for block ``index`` of ``num_blocks`` (see module doc).

    Args:
        mode: one of :data:`NATIVE_GRID_MODES`. previous: a replace already installed on this block
            (run for the row stream instead of the plain block).
    """

    def __init__(self, index: int, num_blocks: int, mode: str, previous=None):
        if mode not in NATIVE_GRID_MODES:
            raise InputError(f"mode must be one of {NATIVE_GRID_MODES}, got {mode!r}.")
        self.index, self.num_blocks, self.mode, self.previous = index, num_blocks, mode, previous

    def __call__(self, args: dict, extra: dict) -> dict:
        st = args["transformer_options"].get(GRID_STATE)
        if st is None:
            raise InputError("Grid block patch without its forward wrapper: apply FourD Grid Model (native) again.")
        y_v = (self.previous(args, extra) if self.previous is not None else extra["original_block"](args))["img"]
        if self.mode == "rows":
            return {"img": y_v}
        views, times = st["views"], st["times"]
        x, txt, vec = args["img"], args["txt"], args["vec"]
        block = extra["original_block"]

        def column_run(tokens, group):
            r = slice(group * views, group * views + 1)
            out = block({"img": rows_to_columns(tokens, views, times), "txt": txt[r].expand(times, *txt.shape[1:]),
                         "vec": vec[r].expand(times, *vec.shape[1:]), "pe": st["col_freqs"],
                         "transformer_options": args["transformer_options"]})["img"]
            return columns_to_rows(out, views, times)

        outs = []
        for g in range(x.shape[0] // views):
            rows = slice(g * views, (g + 1) * views)
            yv = y_v[rows]
            if self.mode == "sequential":                      # Eq. 5
                outs.append(column_run(yv, g))
                continue
            if self.mode == "hard":                            # Eq. 8, neutral weights = averaging
                yt = column_run(x[rows], g)
                outs.append(((yv.float() + yt.float()) * 0.5).to(yv.dtype))
                continue
            xt = st["x_t"].get(g, x[rows])                     # soft_avg, supp. Eq. 13
            yt = column_run(xt, g)
            w = soft_average_weight(self.index, self.num_blocks)
            st["x_t"][g] = ((1 - w) * yt.float() + w * yv.float()).to(yt.dtype)
            outs.append(((1 - w) * yv.float() + w * yt.float()).to(yv.dtype))
        return {"img": torch.cat(outs, dim=0)}


class FourDGridModelNative:
    DESCRIPTION = ("The 4D grid on a core Wan2.1-I2V MODEL (the base model from Load Diffusion Model, without 4DNeX): "
                   "adds 4Real-Video's column stream and training-free sync to every block, so core KSampler denoises "
                   "all views of the grid together. Use with FourD Grid Conditioning (native) and the same number of "
                   "views; decode with core VAE Decode (row-major: frame (view v, time t) at v * T + t).")
    CATEGORY = NATIVE_CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A clone of the MODEL with the two-stream grid patches.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "Wan2.1-I2V from core Load Diffusion Model (not the 4DNeX-patched one)."}),
            "views": ("INT", {"default": 8, "min": 2, "max": 64, "tooltip": "Views V of the grid (rows of the batch)."}),
            "mode": (list(NATIVE_GRID_MODES), {"tooltip": "soft_avg: soft sync by weighted averaging (deeper layers sync "
                     "more); hard: rows and columns averaged after every block; sequential: view then time per block; "
                     "rows: every view on its own (baseline)."}),
        }}

    def patch(self, model, views, mode):
        from comfy.patcher_extension import WrappersMP

        from .apply import wan_i2v_model

        dm = wan_i2v_model(model)
        if is_fourdnex_patched(model):
            raise InputError("The grid runs the base Wan model: connect the MODEL from Load Diffusion Model, not the "
                             "output of FourD Apply 4DNeX (native).")
        out = model.clone()
        out.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, GRID_WRAPPER_KEY, GridForwardWrapper(views))
        replaces = out.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        n = len(dm.blocks)
        for i in range(n):
            out.set_model_patch_replace(GridBlockPatch(i, n, mode, replaces.get(("double_block", i))), "dit",
                                        "double_block", i)
        return (out,)


class FourDGridConditioningNative:
    DESCRIPTION = ("Grid conditioning for the native grid: row 0 = the fixed-view video (all frames known), column 0 = "
                   "the freeze-time images (known except their holes). Each row's known frames are VAE-encoded as Wan's "
                   "I2V condition with a per-pixel-frame mask, and each row gets the CLIP-vision features of its first "
                   "frame, on both conditionings. Returns the empty LATENT of V rows. One window: the whole grid is "
                   "denoised at once (for larger grids use the diffusers FourD 4D Grid Sampler, which has windows).")
    CATEGORY = NATIVE_CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT", "INT")
    RETURN_NAMES = ("positive", "negative", "latent", "views")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the grid condition.", "Negative conditioning with the same condition.",
                       "Empty latent [V, 16, (T-1)/4+1, H/8, W/8] (one row per view).", "V, for FourD Grid Model (native).")
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
            "optional": {"holes": ("MASK", {"tooltip": "Holes of the freeze-time images (1 = unknown), from FourD "
                                            "Render Views."})},
        }

    def encode(self, positive, negative, vae, clip_vision, fixed_view, freeze_time, holes=None):
        fixed, freeze = to_rgb(fixed_view).float().cpu(), to_rgb(freeze_time).float().cpu()
        num_t, num_v = fixed.shape[0], freeze.shape[0]
        h, w = fixed.shape[1:3]
        if (num_t - 1) % 4:
            raise InputError(f"fixed_view has {num_t} frames; the grid needs 4k+1 (e.g. 9, 25, 49).")
        if h % 16 or w % 16 or tuple(freeze.shape[1:3]) != (h, w) or num_v < 2:
            raise InputError(f"fixed_view ({w}x{h}) and freeze_time ({freeze.shape[2]}x{freeze.shape[1]}, {num_v} views) "
                             "must have the same size, a multiple of 16, and at least 2 views.")
        pixels = torch.zeros(num_v, num_t, h, w, 3)
        known = torch.zeros(num_v, num_t, h, w)
        pixels[0], known[0] = fixed.clamp(0, 1), 1.0
        pixels[1:, 0] = freeze[1:].clamp(0, 1)
        if holes is None:
            known[1:, 0] = 1.0
        else:
            m = holes.float().cpu().reshape(-1, *holes.shape[-2:])
            if tuple(m.shape) != (num_v, h, w):
                raise InputError(f"holes must be [{num_v}, {h}, {w}] (one mask per view), got {tuple(holes.shape)}.")
            known[1:, 0] = (m[1:] <= 0.5).float()
        gray = pixels * known[..., None] + 0.5 * (1 - known[..., None])      # unknown pixels: mid-gray (0 in [-1, 1])
        concat = torch.cat([vae.encode(gray[v]) for v in range(num_v)], dim=0)
        cvo = clip_vision.encode_image(pixels[:, 0])
        values = {"concat_latent_image": concat, "concat_mask": 1.0 - latent_mask(known),
                  "clip_vision_output": cvo}
        latent = {"samples": torch.zeros_like(concat)}
        return (set_cond_values(positive, values), set_cond_values(negative, values), latent, num_v)
