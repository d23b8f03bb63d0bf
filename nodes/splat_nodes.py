"""Gaussian-splat nodes: pixel-aligned splats, fitted 4D Gaussians, PLY sequence export, preview."""

from __future__ import annotations


import torch

from ..fourd_core.errors import InputError
from ..fourd_core.util.atomic import atomic_directory, writable_output_dir
from ..fourd_core.splats.fit import FitConfig, fit_gaussians
from ..fourd_core.splats.gaussians import pixel_aligned_gaussians
from ..fourd_core.splats.orbit import render_orbit
from ..fourd_core.splats.ply import write_gaussians_sequence
from ..fourd_core.splats.rasterize import rasterizer_help, resolve_rasterizer
from ..fourd_core.splats.config import INTERACTIVE_RESOLUTION, PixelSplatConfig
from ..fourd_core.settings import node_input
from . import comfy_bridge as cb
from . import validation as v
from .scene_nodes import FourDPreview4D
from .types import CAMERAS, CATEGORY, GAUSSIANS, SCENE

SPLAT_CATEGORY = f"{CATEGORY}/gaussians"


class FourDGaussiansFromScene:
    DESCRIPTION = ("Instant Gaussian splats, no optimisation: one splat per pixel at its world point, coloured by the "
                   "pixel (SH degree 0), sized by the pixel footprint (depth / focal) and as opaque as the pixel's "
                   "confidence; one set per frame. Export with FourD Save Gaussians, view with FourD 4D "
                   "Preview, or refine with FourD Fit 4D Gaussians.")
    CATEGORY = SPLAT_CATEGORY
    RETURN_TYPES = (GAUSSIANS,)
    RETURN_NAMES = ("gaussians",)
    OUTPUT_TOOLTIPS = ("Pixel-aligned splats per frame, with the scene's cameras.",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scene": (SCENE, {"tooltip": "A scene with cameras and depth (FourD Recover Cameras or FourD Load Scene)."}),
            "stride": node_input(PixelSplatConfig, "stride"),
            "footprint": node_input(PixelSplatConfig, "footprint"),
            "min_confidence": node_input(PixelSplatConfig, "min_confidence"),
        }}

    def make(self, scene, stride, footprint, min_confidence):
        return (pixel_aligned_gaussians(scene, stride=stride, footprint=footprint, min_confidence=min_confidence),)


class FourDFit4DGaussians:
    DESCRIPTION = ("Fit deformable 4D Gaussians (4Real-Video supp. Sec. 6, Eq. 11): canonical splats started from the "
                   "pixel-aligned ones, a per-frame offset for motion and, with a grid, a per-view offset that absorbs "
                   "what the generated views disagree on. Trained on the scene's frames (and the grid's views) with "
                   "L1 + SSIM and 3DGS densify/prune. Uses gsplat on CUDA when installed, else a pure-torch "
                   "rasteriser (CPU works at small resolutions).")
    CATEGORY = SPLAT_CATEGORY
    RETURN_TYPES = (GAUSSIANS, "IMAGE")
    RETURN_NAMES = ("gaussians", "orbit")
    OUTPUT_TOOLTIPS = ("The fitted 4D Gaussians (deformable set, exports one PLY per frame).",
                       "An orbit render of the result (views sweep the camera while time runs).")
    FUNCTION = "fit"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "scene": (SCENE, {"tooltip": "The scene with cameras: its RGB frames are the training images."}),
                "iterations": node_input(FitConfig, "iterations"),
                "resolution": node_input(FitConfig, "resolution", default=INTERACTIVE_RESOLUTION),
                "isotropic": node_input(FitConfig, "isotropic"),
                "seed": node_input(FitConfig, "seed"),
            },
            "optional": {
                "grid": ("IMAGE", {"tooltip": "A 4D grid (views x frames, row-major) from FourD 4D Grid Sampler, made "
                                   "from this scene's video."}),
                "cameras": (CAMERAS, {"tooltip": "The grid's camera path (FourD Camera Path)."}),
                "init_stride": node_input(FitConfig, "init_stride"),
                "backend": node_input(FitConfig, "backend", tooltip=rasterizer_help()),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, iterations=None, resolution=None):
        res = True if resolution in (None, 0) else v.int_range("resolution", resolution, 8, 4096,
                                                                        form="0 (full size) or an integer")
        return v.check_all(v.config_value(FitConfig, "iterations", iterations), res)

    def fit(self, scene, iterations, resolution, isotropic, seed, grid=None, cameras=None, init_stride=2,
            backend="auto"):
        if (grid is None) != (cameras is None):
            raise InputError("Connect both the grid and its cameras (FourD Camera Path), or neither.")
        cfg = FitConfig(iterations=iterations, resolution=resolution, isotropic=isotropic, seed=seed,
                        init_stride=init_stride, backend=backend, densify_every=max(10, min(100, iterations // 20)))
        cfg.validate()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        resolve_rasterizer(backend, device)              # an unavailable rasteriser is refused before the fit
        progress = cb.Progress(iterations)
        progress(0, iterations)
        from ..fourd_core.pipelines.fourdnex import to_pil

        def on_step(step, total, preview):
            progress(step, total, None if preview is None else to_pil(preview))

        g4d = fit_gaussians(scene, cfg, grid=grid, grid_K=None if cameras is None else cameras.K,
                            grid_cam_to_world=None if cameras is None else cameras.cam_to_world, device=device,
                            callback=on_step)
        h, w = scene.size
        s = min(1.0, 384 / max(h, w))
        images = render_orbit(g4d, degrees=30.0, steps=8, height=max(8, round(h * s)), width=max(8, round(w * s)),
                              device=device)
        cb.soft_empty_cache()
        return (g4d, images)


class FourDSaveGaussians:
    DESCRIPTION = ("Write the splats as a sequence of standard 3DGS PLY files (one per frame: float32, log-scales, "
                   "logit opacity, SH degree 0) for SuperSplat, gsplat, nerfstudio or ComfyUI's 3D preview.")
    CATEGORY = f"{SPLAT_CATEGORY}"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("ply_path", "folder")
    OUTPUT_TOOLTIPS = ("The first frame's PLY, relative to the output folder (connect to Preview 3D's model_file).",
                       "The folder of frame_#####.ply files, relative to the output folder.")
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "gaussians": (GAUSSIANS, {"tooltip": "Splats from FourD Gaussians from Scene or FourD Fit 4D Gaussians."}),
            "filename_prefix": ("STRING", {"default": "fourd/gaussians", "tooltip": "Folder name inside the output "
                                           "folder; a number is appended."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        return v.filename_prefix(filename_prefix)

    def save(self, gaussians, filename_prefix):
        folder, rel = cb.safe_output_folder(filename_prefix)
        progress = cb.Progress(gaussians.num_frames)
        # removes folders it made if writing fails; the staging folder replaces `folder` only when complete
        with writable_output_dir(folder.parent), atomic_directory(folder) as staging:
            write_gaussians_sequence(gaussians, staging, progress=lambda d, t: progress(d, t))
        first = f"{rel}/frame_00000.ply"
        return {"ui": {"text": [rel]}, "result": (first, rel)}


class FourDPreviewGaussians:
    """Kept so that saved workflows that use it still load and run: FourD 4D Preview took its place."""

    DESCRIPTION = ("Deprecated: use FourD 4D Preview (it takes splats, a scene, or both). Shows Gaussian splats in "
                   "the same viewer.")
    CATEGORY = f"{CATEGORY}/preview"
    DEPRECATED = True
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "preview"

    @classmethod
    def INPUT_TYPES(cls):
        opt = FourDPreview4D.INPUT_TYPES()["optional"]
        return {"required": {"gaussians": opt["gaussians"], "splats_per_frame": opt["splats_per_frame"],
                             "min_opacity": opt["min_opacity"]}}

    def preview(self, gaussians, splats_per_frame=100000, min_opacity=0.0):
        return FourDPreview4D().preview(gaussians=gaussians, splats_per_frame=splats_per_frame,
                                        min_opacity=min_opacity)
