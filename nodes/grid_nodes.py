"""4D grid nodes: camera path, freeze-time rendering, and the grid sampler (4Real-Video / -V2)."""

from __future__ import annotations

import dataclasses
import json

import torch
import torch.nn.functional as F

from ..fourd_core.errors import InputError
from ..fourd_core.geometry.novel_view import PATHS, render_scene_views, scene_camera_path
from ..fourd_core.io.images import to_rgb
from ..fourd_core.pipelines.cache import PIPELINES
from ..fourd_core.models.fused_lora import read_fused_lora
from ..fourd_core.models.sync import load_sync_weights
from ..fourd_core.pipelines.fourdnex import to_pil
from ..fourd_core.pipelines.grid import GridConfig, generate_grid, grid_latent_preview
from ..fourd_core.kernels.streams import grid_mode
from ..fourd_core.pipelines.grid_canvas import plan_windows
from . import comfy_bridge as cb
from . import validation as v
from .widgets import fused_backend_widget, grid_mode_widget
from ..fourd_core.settings import node_input
from .native.folders import SYNC_FOLDER
from .types import DIFFUSERS_CATEGORY, DIFFUSERS_NOTE, CAMERAS, CATEGORY, MODEL, SCENE, FourDCameras, FourDModel

GRID_CATEGORY = f"{CATEGORY}/grid"

def get_grid_pipeline(model: FourDModel):
    """The cached pipeline for the model spec (base Wan, or Wan + an *unfused* 4DNeX LoRA)."""
    memory = model.memory
    if memory.resolved_device().type == "cpu" and memory.offload != "none":
        memory = dataclasses.replace(memory, offload="none")
    return PIPELINES.get(model.spec, memory, before_load=cb.free_memory)


class FourDCameraPath:
    DESCRIPTION = ("A camera path around one frame of a 4D scene, starting at that frame's camera: orbit or arc about "
                   "the scene centre (median depth on the optical axis), or a dolly along the optical axis. Its "
                   "steps are the grid's views.")
    CATEGORY = GRID_CATEGORY
    RETURN_TYPES = (CAMERAS, "STRING")
    RETURN_NAMES = ("cameras", "cameras_json")
    OUTPUT_TOOLTIPS = ("The camera path (K + OpenCV cam-to-world per view) for FourD Render Views.",
                       "The same cameras as JSON text.")
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scene": (SCENE, {"tooltip": "A scene with cameras (FourD Recover Cameras or FourD Load Scene)."}),
            "path": (list(PATHS), {"tooltip": "orbit: constant speed about the axis; arc: eased start and stop (plus "
                                   "elevation); dolly: straight forward/back."}),
            "degrees": ("FLOAT", {"default": 30.0, "min": -360.0, "max": 360.0, "step": 1.0,
                                  "tooltip": "Total turn of orbit/arc (one image shows one side: 15-45 degrees)."}),
            "steps": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Number of views V (view 0 = the frame's "
                              "own camera)."}),
            "axis": (["y", "x", "z"], {"tooltip": "Rotation axis of the frame's camera: y = horizontal orbit, x = "
                                       "vertical."}),
            "distance": ("FLOAT", {"default": 0.3, "min": -0.95, "max": 5.0, "step": 0.05,
                                   "tooltip": "Dolly travel as a fraction of the scene depth (positive = forward)."}),
            "elevation": ("FLOAT", {"default": 0.0, "min": -89.0, "max": 89.0, "step": 1.0,
                                    "tooltip": "Arc only: final elevation in degrees (negative rises above)."}),
            "frame": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": "Frame whose camera starts the path."}),
        }}

    def make(self, scene, path, degrees, steps, axis, distance, elevation, frame):
        K, poses = scene_camera_path(scene, path, degrees=degrees, steps=steps, axis=axis, distance=distance,
                                     elevation_degrees=elevation, frame=frame)
        h, w = scene.size
        cams = FourDCameras(K=K, cam_to_world=poses, height=h, width=w)
        text = json.dumps({"K": K.tolist(), "cam_to_world": poses.tolist(), "height": h, "width": w,
                           "convention": "opencv"})
        return (cams, text)


class FourDRenderViews:
    DESCRIPTION = ("Render one frame's point cloud into every camera of a path with a z-buffer: the freeze-time "
                   "video for the grid sampler. Pixels no point covers are holes (mid-gray, and 1 in the mask).")
    CATEGORY = GRID_CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "holes")
    OUTPUT_TOOLTIPS = ("One rendered image per view (IMAGE batch, view order).",
                       "1 where no point landed (MASK batch), for the grid sampler's holes input.")
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scene": (SCENE, {"tooltip": "The scene with cameras."}),
            "cameras": (CAMERAS, {"tooltip": "From FourD Camera Path."}),
            "frame": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": "Which frame's points to render "
                              "(0 = the first frame, the grid's column 0)."}),
            "point_size": ("INT", {"default": 2, "min": 1, "max": 9, "tooltip": "Splat size in pixels (2-3 closes "
                                   "the cracks between neighbouring points)."}),
        }}

    def render(self, scene, cameras, frame, point_size):
        if (cameras.height, cameras.width) != scene.size:
            raise InputError(f"The cameras are for {cameras.width}x{cameras.height} images but the scene is "
                             f"{scene.size[1]}x{scene.size[0]}; make the path from this scene.")
        images, holes = render_scene_views(scene, cameras.cam_to_world, cameras.K, frame=frame, point_size=point_size)
        return (images, holes)


def _preview(latents: torch.Tensor):
    img = grid_latent_preview(latents).permute(2, 0, 1)[None]
    img = F.interpolate(img, scale_factor=8, mode="nearest")[0].permute(1, 2, 0)
    return to_pil(img)


class FourDGridSampler:
    DESCRIPTION = DIFFUSERS_NOTE + ("Generate the 4D grid (views x time) from a fixed-view video (row 0) and a freeze-time video "
                   "(column 0) with the loaded Wan2.1-I2V DiT, without the 4DNeX LoRA (load it with fuse off to "
                   "share the model): 4Real-Video two-stream sync or 4Real-Video-V2 fused attention, sliding "
                   "windows for large grids. Outputs every frame in row-major order (index = view * frames + time) "
                   "and one view's video.")
    CATEGORY = DIFFUSERS_CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", "INT", "INT")
    RETURN_NAMES = ("grid", "view_video", "views", "frames")
    OUTPUT_TOOLTIPS = ("All V x T frames, row-major: frame (view v, time t) at index v * T + t; "
                       "frames [v*T, (v+1)*T) are the video of view v.",
                       "The video of the chosen view (T frames).", "V, the number of views.", "T, frames per view.")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        syncs = [cb.NONE] + cb.file_list(SYNC_FOLDER) + [f for f in cb.file_list("loras") if "sync" in f.lower()]
        return {
            "required": {
                "model": (MODEL, {"tooltip": "Wan2.1-I2V (the 4DNeX model works if its LoRA is not fused)."}),
                "fixed_view": ("IMAGE", {"tooltip": "Row 0: the video from the first viewpoint (e.g. 4DNeX rgb_video). "
                                         "4k+1 frames when shorter than a window."}),
                "freeze_time": ("IMAGE", {"tooltip": "Column 0: the first instant from every viewpoint (e.g. FourD "
                                          "Render Views). Its first image is replaced by the video's first frame."}),
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Describe the scene (same prompt "
                                      "for every row and column)."}),
                "mode": grid_mode_widget(),
                "window_views": node_input(GridConfig, "window_views"),
                "window_frames": node_input(GridConfig, "window_frames"),
                "overlap_views": node_input(GridConfig, "overlap_views", tooltip="Views shared by consecutive windows "
                                            "(already generated = known); at most window_views - 1."),
                "overlap_frames": node_input(GridConfig, "overlap_frames", tooltip="Frames shared by consecutive windows "
                                             "(4k+1 fills whole latents); at most window_frames - 1."),
                "steps": node_input(GridConfig, "steps", tooltip="Denoising steps per window."),
                "cfg": node_input(GridConfig, "guidance_scale"),
                "shift": node_input(GridConfig, "shift"),
                "seed": node_input(GridConfig, "seed", tooltip="Noise seed (window k uses seed + k)."),
                "view": ("INT", {"default": -1, "min": -256, "max": 255, "tooltip": "Which view the view_video output "
                                 "shows (0 = the input video, -1 = the last view)."}),
            },
            "optional": {
                "holes": ("MASK", {"tooltip": "Holes of the freeze-time images (1 = unknown pixel), from FourD Render Views."}),
                "sync_weights": (syncs, {"tooltip": "Trained sync layers (.safetensors in models/fourd_sync/, or with "
                                         "'sync' in the name in models/loras/) for mode hard/soft; none = training-free."}),
                "scheduler": node_input(GridConfig, "scheduler"),
                "negative_prompt": node_input(GridConfig, "negative_prompt", multiline=True),
                "fused_backend": fused_backend_widget(),
                "fused_lora": ([cb.NONE] + [f for f in cb.file_list("loras") if "fused" in f.lower()], {
                    "tooltip": "Fused mode: a LoRA trained for the fused view-time attention (`python -m fourd_core "
                               "train fused`); (none) = the base model."}),
                "fused_lora_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                                  "tooltip": "Scale of the fused LoRA (1.0 = as trained)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, window_frames=None, overlap_frames=None):
        return v.check_all(v.config_value(GridConfig, "window_frames", window_frames),
                           v.config_value(GridConfig, "overlap_frames", overlap_frames))

    def sample(self, model, fixed_view, freeze_time, prompt, mode, window_views, window_frames, overlap_views,
               overlap_frames, steps, cfg, shift, seed, view, holes=None, sync_weights=cb.NONE, scheduler="unipc",
               negative_prompt="", fused_backend="auto", fused_lora=cb.NONE, fused_lora_strength=1.0):
        fixed, freeze = to_rgb(fixed_view), to_rgb(freeze_time)
        if not prompt.strip():
            raise InputError("The prompt is empty: describe the scene.")
        num_v, num_t = freeze.shape[0], fixed.shape[0]
        if not -num_v <= view < num_v:
            raise InputError(f"view {view} does not exist: the grid has {num_v} views (0..{num_v - 1}, or -1 for the last).")
        config = GridConfig(mode=mode, window_views=window_views, window_frames=window_frames,
                            overlap_views=min(overlap_views, window_views - 1),
                            overlap_frames=min(overlap_frames, window_frames - 1), steps=steps, guidance_scale=cfg,
                            shift=shift, scheduler=scheduler, seed=seed, negative_prompt=negative_prompt,
                            fused_backend=fused_backend)
        config.validate()
        pipe, _ = get_grid_pipeline(model)
        sync = None
        if sync_weights and sync_weights != cb.NONE:
            if grid_mode(mode).sync is None:
                raise InputError(f"Sync weights are for mode 'hard' or 'soft'; mode is {mode!r}. Choose one of those "
                                 "modes or set sync_weights to (none).")
            kind = SYNC_FOLDER if sync_weights in cb.file_list(SYNC_FOLDER) else "loras"
            sync = load_sync_weights(cb.resolve_model(kind, sync_weights), pipe.transformer, mode=mode)
        lora = None
        if fused_lora and fused_lora != cb.NONE:
            lora = read_fused_lora(cb.resolve_model("loras", fused_lora), pipe.transformer)
        windows = len(plan_windows(num_v, num_t, config))
        progress = cb.Progress(windows * steps)
        progress(0)
        result = generate_grid(pipe, fixed, freeze, prompt.strip(), config, holes=holes, sync=sync, fused_lora=lora,
                               fused_lora_strength=fused_lora_strength,
                               callback=lambda s, t, lat: progress(s, t, _preview(lat)))
        cb.soft_empty_cache()
        return (result.batch(), result.view(view).contiguous(), result.num_views, result.num_times)
