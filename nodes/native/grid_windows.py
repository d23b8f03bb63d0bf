"""Sliding windows for the native grid (4Real-Video Sec. 3.3, "extending to a wider view and longer
time"): grids larger than one window, sampled window by window with core KSampler.

The plan, the bookkeeping and the conditioning are the diffusers sampler's
(:func:`fourd_core.pipelines.grid_canvas.plan_windows`, :class:`fourd_core.pipelines.grid_canvas.GridCanvas`,
the same per-window condition and known-latent ``noise_mask`` as FourD Grid Conditioning
(native)); what the diffusers sampler loops over is a chain of nodes here, because a ComfyUI graph
runs each node once:

FourD Grid Canvas (native) -> for window k = 0, 1, ...: FourD Grid Window (native) (window k's
conditioning, LATENT and column CLIP for that window's FourD Grid Model (native)) -> KSampler (seed + k reproduces the diffusers seeds) -> VAE Decode ->
FourD Grid Window Merge (native) (writes the frames no earlier window wrote; they become known
frames of the next windows) -> the next FourD Grid Window. The canvas says how many windows the
grid needs; a merge reports how many are left.
"""

from __future__ import annotations

from ...fourd_core.errors import InputError
from ...fourd_core.pipelines.grid import GridConfig
from ...fourd_core.pipelines.grid_canvas import GridCanvas, grid_to_batch, plan_windows
from .common import NATIVE_CATEGORY
from .grid import grid_inputs, window_conditioning

GRID_TYPE = "FOURD_GRID"


class FourDGridCanvasNative:
    DESCRIPTION = ("Start a native grid larger than one window: row 0 (the fixed-view video) and column 0 (the "
                   "freeze-time images minus holes) are known, the rest is generated window by window (views outer, "
                   "time inner) with FourD Grid Window (native) -> KSampler -> VAE Decode -> FourD Grid Window Merge "
                   "(native), once per window.")
    CATEGORY = NATIVE_CATEGORY
    RETURN_TYPES = (GRID_TYPE, "INT", "INT")
    RETURN_NAMES = ("grid", "windows", "window_views")
    OUTPUT_TOOLTIPS = ("The grid state (known and generated frames) for FourD Grid Window (native).",
                       "How many windows the grid needs (chain that many window / KSampler / merge groups).",
                       "Views per window, for FourD Grid Model (native).")
    FUNCTION = "start"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "fixed_view": ("IMAGE", {"tooltip": "Row 0: the video from the first viewpoint (4k+1 frames when "
                                         "shorter than a window)."}),
                "freeze_time": ("IMAGE", {"tooltip": "Column 0: instant 0 from every viewpoint (FourD Render Views); "
                                          "its first image is replaced by the video's first frame."}),
                "window_views": ("INT", {"default": 8, "min": 2, "max": 64, "tooltip": "Views per window (paper: 8)."}),
                "window_frames": ("INT", {"default": 49, "min": 5, "max": 81, "step": 4,
                                          "tooltip": "Frames per window, 4k+1."}),
                "overlap_views": ("INT", {"default": 2, "min": 1, "max": 63, "tooltip": "Views shared by consecutive "
                                          "windows (already generated = known); at most window_views - 1."}),
                "overlap_frames": ("INT", {"default": 5, "min": 1, "max": 80, "tooltip": "Frames shared by consecutive "
                                           "windows (4k+1 fills whole latents); at most window_frames - 1."}),
            },
            "optional": {"holes": ("MASK", {"tooltip": "Holes of the freeze-time images (1 = unknown), from FourD "
                                            "Render Views."})},
        }

    def start(self, fixed_view, freeze_time, window_views, window_frames, overlap_views, overlap_frames, holes=None):
        fixed, freeze, holes = grid_inputs(fixed_view, freeze_time, holes)
        config = GridConfig(window_views=window_views, window_frames=window_frames, overlap_views=overlap_views,
                            overlap_frames=overlap_frames)
        config.validate()
        windows = plan_windows(freeze.shape[0], fixed.shape[0], config)
        state = {"canvas": GridCanvas.start(fixed, freeze, holes), "windows": windows, "current": None, "done": ()}
        return (state, len(windows), windows[0][1] - windows[0][0])


def _check_grid(grid) -> None:
    if not isinstance(grid, dict) or not isinstance(grid.get("canvas"), GridCanvas):
        raise InputError("grid must come from FourD Grid Canvas (native) or FourD Grid Window Merge (native).")


class FourDGridWindowNative:
    DESCRIPTION = ("The conditioning and LATENT of one window of a native grid: the window's known frames (inputs and "
                   "frames earlier windows generated) as Wan's I2V condition, CLIP per row, and the noise_mask that makes "
                   "KSampler keep the fully known latent frames. Sample with KSampler on FourD Grid Model (native), "
                   "decode with VAE Decode, then FourD Grid Window Merge (native).")
    CATEGORY = NATIVE_CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT", GRID_TYPE, "CLIP_VISION_OUTPUT")
    RETURN_NAMES = ("positive", "negative", "latent", "grid", "column_clip")
    OUTPUT_TOOLTIPS = ("Positive conditioning of the window.", "Negative conditioning of the window.",
                       "The window's latent [V_w, 16, T_lat, H/8, W/8] with its noise_mask.",
                       "The grid, marked with this window, for FourD Grid Window Merge (native).",
                       "CLIP of the window's row 0 at every latent time, for this window's FourD Grid Model (native).")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "grid": (GRID_TYPE, {"tooltip": "From FourD Grid Canvas (native) for window 0, else from the previous "
                                     "FourD Grid Window Merge (native)."}),
                "window": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip": "Window index k (0 first; the "
                                   "canvas says how many). Use KSampler seed + k to match the diffusers sampler."}),
                "positive": ("CONDITIONING", {"tooltip": "The scene prompt (core CLIP Text Encode)."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt."}),
                "vae": ("VAE", {"tooltip": "wan_2.1_vae from core Load VAE."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "clip_vision_h from core Load CLIP Vision."}),
            },
            "optional": {"paste_known": ("BOOLEAN", {"default": True, "tooltip": "noise_mask on the fully known latent "
                                                     "frames (KSampler keeps them at the current noise level)."})},
        }

    def encode(self, grid, window, positive, negative, vae, clip_vision, paste_known=True):
        _check_grid(grid)
        windows = grid["windows"]
        if not 0 <= window < len(windows):
            raise InputError(f"window {window} does not exist: this grid has {len(windows)} windows (0..{len(windows) - 1}).")
        earlier = [k for k in range(window) if k not in grid["done"]]
        if earlier:
            raise InputError(f"window {window} needs windows {earlier} merged first (their frames are known frames of "
                             "this one): chain FourD Grid Window Merge (native) of each earlier window into this grid.")
        pixels, known = grid["canvas"].window(windows[window])
        pos, neg, latent, column_clip = window_conditioning(positive, negative, vae, clip_vision, pixels, known,
                                                            paste_known)
        return (pos, neg, latent, {**grid, "current": window}, column_clip)


class FourDGridWindowMergeNative:
    DESCRIPTION = ("Write a sampled window (VAE Decode of its KSampler output) into the native grid: frames no earlier "
                   "window wrote become generated and known for the next windows. Outputs the grid so far, row-major "
                   "(frame (view v, time t) at v * T + t; frames no window wrote yet are black).")
    CATEGORY = NATIVE_CATEGORY
    RETURN_TYPES = (GRID_TYPE, "IMAGE", "INT")
    RETURN_NAMES = ("grid", "images", "windows_left")
    OUTPUT_TOOLTIPS = ("The grid with this window written, for the next FourD Grid Window (native).",
                       "All V x T frames so far, row-major (index v * T + t).", "Windows still to sample (0 = done).")
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "grid": (GRID_TYPE, {"tooltip": "The grid output of the FourD Grid Window (native) that made this window."}),
            "images": ("IMAGE", {"tooltip": "VAE Decode of that window's KSampler output (V_w x T_w frames, row-major)."}),
        }}

    def merge(self, grid, images):
        _check_grid(grid)
        k = grid.get("current")
        if k is None:
            raise InputError("Connect the grid output of FourD Grid Window (native) (it knows which window was sampled).")
        v0, v1, t0, t1 = grid["windows"][k]
        n_v, n_t = v1 - v0, t1 - t0
        size = tuple(grid["canvas"].pixels.shape[2:4])
        if images.shape[0] != n_v * n_t or tuple(images.shape[1:3]) != size:
            raise InputError(f"window {k} is {n_v} views x {n_t} frames of {size[1]}x{size[0]}: expected {n_v * n_t} "
                             f"images, got {images.shape[0]} of {images.shape[2]}x{images.shape[1]}. Decode the "
                             "window's KSampler output with VAE Decode.")
        canvas = grid["canvas"].copy()                      # node outputs are cached: never change the input
        canvas.write((v0, v1, t0, t1), images[..., :3].reshape(n_v, n_t, *images.shape[1:3], 3))
        done = tuple(sorted(set(grid["done"]) | {k}))
        out = {"canvas": canvas, "windows": grid["windows"], "current": None, "done": done}
        return (out, grid_to_batch(canvas.out), len(grid["windows"]) - len(done))
