"""Gaussian-splat nodes: pixel-aligned splats, fitted 4D Gaussians, PLY sequence export, preview."""

from __future__ import annotations


import torch

from ..fourd_core.errors import InputError
from ..fourd_core.util.atomic import atomic_directory, writable_output_dir
from ..fourd_core.splats.fit import FitConfig, fit_gaussians
from ..fourd_core.splats.gaussians import Gaussians, pixel_aligned_gaussians
from ..fourd_core.splats.orbit import render_orbit
from ..fourd_core.io.pointcloud import write_splat_centres_glb
from ..fourd_core.splats.ply import write_gaussians_sequence
from ..fourd_core.splats.rasterize import rasterizer_help, resolve_rasterizer
from ..fourd_core.splats.config import INTERACTIVE_RESOLUTION, PixelSplatConfig
from ..fourd_core.settings import node_input
from . import comfy_bridge as cb
from . import file3d
from . import validation as v
from .scene_nodes import FourDPreview4D
from .types import CAMERAS, CATEGORY, GAUSSIANS, SCENE

SPLAT_CATEGORY = f"{CATEGORY}/gaussians"
#: the core SPLAT output the splat nodes append where this ComfyUI has the type (empty tuples otherwise)
_SPLAT_TYPES, _SPLAT_NAMES, _SPLAT_TOOLTIPS = file3d.splat_outputs()
#: FourD Save Gaussians' File3D output (frame-0 splat PLY) where this ComfyUI has File3D
_PLY_FILE3D = ((file3d.splat_file_io_type(),), ("splat_ply",),
               ("Frame-0 splat PLY as a File3D (core PreviewGaussianSplat, SaveGaussianSplat).",)) \
    if file3d.available() else ((), (), ())


def _with_splat(gaussians, *rest) -> tuple:
    """``(gaussians, *rest)`` plus the core SPLAT form of ``gaussians`` where this ComfyUI has the type."""
    return (gaussians, *rest) + ((file3d.to_core_splat(gaussians),) if file3d.splat_available() else ())


def _fit_init_input() -> dict:
    """Fit 4D Gaussians' optional core SPLAT input (only where this ComfyUI has the type)."""
    spec = file3d.splat_input()
    if spec:
        spec["splat"][1]["tooltip"] = ("Optional core SPLAT to start from instead of the scene's pixels (all batch items "
                                       "together, in the scene's world frame).")
    return spec


class FourDGaussiansFromScene:
    DESCRIPTION = ("Instant Gaussian splats, no optimisation: one splat per pixel at its world point, coloured by the "
                   "pixel (SH degree 0), sized by the pixel footprint (depth / focal) and as opaque as the pixel's "
                   "confidence; one set per frame. Export with FourD Save Gaussians, view with FourD 4D "
                   "Preview, or refine with FourD Fit 4D Gaussians.")
    CATEGORY = SPLAT_CATEGORY
    RETURN_TYPES = (GAUSSIANS,) + _SPLAT_TYPES
    RETURN_NAMES = ("gaussians",) + _SPLAT_NAMES
    OUTPUT_TOOLTIPS = ("Pixel-aligned splats per frame, with the scene's cameras.",) + _SPLAT_TOOLTIPS
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
        return _with_splat(pixel_aligned_gaussians(scene, stride=stride, footprint=footprint, min_confidence=min_confidence))


class FourDFit4DGaussians:
    DESCRIPTION = ("Fit deformable 4D Gaussians (4Real-Video supp. Sec. 6, Eq. 11): canonical splats started from the "
                   "pixel-aligned ones, a per-frame offset for motion and, with a grid, a per-view offset that absorbs "
                   "what the generated views disagree on. Trained on the scene's frames (and the grid's views) with "
                   "L1 + SSIM and 3DGS densify/prune. Uses gsplat on CUDA when installed, else a pure-torch "
                   "rasteriser (CPU works at small resolutions).")
    CATEGORY = SPLAT_CATEGORY
    RETURN_TYPES = (GAUSSIANS, "IMAGE") + _SPLAT_TYPES
    RETURN_NAMES = ("gaussians", "orbit") + _SPLAT_NAMES
    OUTPUT_TOOLTIPS = ("The fitted 4D Gaussians (deformable set, exports one PLY per frame).",
                       "An orbit render of the result (views sweep the camera while time runs).") + _SPLAT_TOOLTIPS
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
                **_fit_init_input(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, iterations=None, resolution=None):
        res = True if resolution in (None, 0) else v.int_range("resolution", resolution, 8, 4096,
                                                                        form="0 (full size) or an integer")
        return v.check_all(v.config_value(FitConfig, "iterations", iterations), res)

    def fit(self, scene, iterations, resolution, isotropic, seed, grid=None, cameras=None, init_stride=2,
            backend="auto", splat=None):
        if (grid is None) != (cameras is None):
            raise InputError("Connect both the grid and its cameras (FourD Camera Path), or neither.")
        init = None if splat is None else Gaussians.cat(file3d.from_core_splat(splat).per_frame)
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
                            callback=on_step, init=init)
        h, w = scene.size
        s = min(1.0, 384 / max(h, w))
        images = render_orbit(g4d, degrees=30.0, steps=8, height=max(8, round(h * s)), width=max(8, round(w * s)),
                              device=device)
        cb.soft_empty_cache()
        return _with_splat(g4d, images)


class FourDSaveGaussians:
    DESCRIPTION = ("Write the splats as a sequence of standard 3DGS PLY files (one per frame: float32, log-scales, "
                   "logit opacity, SH degree 0) for SuperSplat, gsplat, nerfstudio or ComfyUI's 3D viewers, plus the "
                   "first frame's splat centres as a coloured GLB point cloud that core Preview3D shows on every "
                   "frontend (frontends before 2026 do not open .ply files).")
    CATEGORY = f"{SPLAT_CATEGORY}"
    RETURN_TYPES = ("STRING", "STRING", "STRING") + _PLY_FILE3D[0]
    RETURN_NAMES = ("ply_path", "folder", "glb_path") + _PLY_FILE3D[1]
    OUTPUT_TOOLTIPS = ("The first frame's PLY, relative to the output folder (Preview3D on frontends that open "
                       "splat PLY files).",
                       "The folder of frame_#####.ply files, relative to the output folder.",
                       "The first frame's splat centres in their colours as GLB (frame_00000_centres.glb), relative "
                       "to the output folder: connect to Preview3D's model_file.") + _PLY_FILE3D[2]
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
            write_splat_centres_glb(staging / "frame_00000_centres.glb", gaussians.frame(0))
        first = f"{rel}/frame_00000.ply"
        result = (first, rel, f"{rel}/frame_00000_centres.glb")
        if file3d.available():
            result += (file3d.file3d(folder / "frame_00000.ply", "ply"),)
        return {"ui": {"text": [rel]}, "result": result}


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
