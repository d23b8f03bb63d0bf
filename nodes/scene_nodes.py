"""Geometry (cameras + depth), exports, scene files and the interactive 4D preview."""

from __future__ import annotations

import json

import torch

from ..fourd_core.api import GeometryConfig, recover_geometry
from ..fourd_core.errors import InputError
from ..fourd_core.io.export import ExportOptions, export_scene
from ..fourd_core.io.formats import EXPORT_FORMATS
from ..fourd_core.settings import from_node, node_input
from ..fourd_core.io.viewer_asset import gaussians_viewer_asset_bytes, viewer_asset_bytes
from ..fourd_core.scene import Scene4D
from . import comfy_bridge as cb
from . import file3d
from . import validation as v
from .types import CATEGORY, GAUSSIANS, SCENE

#: FourD Export's typed File3D outputs: (types, names, tooltips), all empty on builds without them.
_FILE3D_TYPES, _FILE3D_NAMES, _FILE3D_TOOLTIPS = file3d.extra_outputs()


def depth_to_image(depth: torch.Tensor) -> torch.Tensor:
    """``[F, H, W]`` depth -> ``[F, H, W, 3]`` gray IMAGE, near = bright, normalised by the 1-99 % range."""
    d = depth.float()
    flat = d.reshape(-1)[:: max(1, d.numel() // 1_000_000)]
    lo, hi = torch.quantile(flat, 0.01), torch.quantile(flat, 0.99)
    v = 1 - ((d - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    return v[..., None].expand(*v.shape, 3).contiguous()


#: widget value -> GeometryConfig field (None: chosen from the data by the solver's model selection)


class FourDRecoverCameras:
    DESCRIPTION = ("Recover intrinsics, per-frame cameras (OpenCV cam-to-world) and depth from the generated point "
                   "maps (4DNeX post-optimisation, Sec. 4.3) with a direct robust solver: about a second for 49 "
                   "frames, where the official Adam loop takes minutes and barely moves the focal length.")
    CATEGORY = f"{CATEGORY}/geometry"
    RETURN_TYPES = (SCENE, "IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("scene", "depth", "confidence", "cameras_json")
    OUTPUT_TOOLTIPS = ("The scene with cameras and depth.", "Depth as a gray video (near = bright).",
                       "Per-pixel confidence in [0, 1].", "Cameras as JSON text (K and cam_to_world per frame).")
    FUNCTION = "recover"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scene": (SCENE, {"tooltip": "From FourD Decode 6D or FourD Load Scene."}),
            "intrinsics": node_input(GeometryConfig, "shared_intrinsics"),
            "square_pixels": node_input(GeometryConfig, "square_pixels", tooltip="fx = fy."),
            "principal_point": node_input(GeometryConfig, "centered_principal_point"),
            "robust_loss": node_input(GeometryConfig, "robust"),
            "temporal_smoothness": node_input(GeometryConfig, "temporal_smoothness"),
        }}

    def recover(self, scene, intrinsics, square_pixels, principal_point, robust_loss, temporal_smoothness):
        cfg = GeometryConfig(shared_intrinsics=from_node(GeometryConfig, "shared_intrinsics", intrinsics),
                             square_pixels=square_pixels,
                             centered_principal_point=from_node(GeometryConfig, "centered_principal_point", principal_point),
                             robust=robust_loss, temporal_smoothness=temporal_smoothness)
        progress = cb.Progress(1)
        out = recover_geometry(scene, cfg, device="cuda" if torch.cuda.is_available() else None,
                               callback=lambda s, t: progress(s, t))
        cams = {"K": out.K.tolist(), "cam_to_world": out.cam_to_world.tolist(), "convention": "opencv"}
        return (out, depth_to_image(out.depth), out.confidence.float(), json.dumps(cams))


class FourDExport:
    DESCRIPTION = ("Write the scene into ComfyUI's output folder: rgb.mp4, xyz.mp4, per-frame PLY and GLB point "
                   "clouds, pixel-aligned Gaussian splats (gaussians/frame_#####.ply, every 2nd pixel), cameras.json, "
                   "nerfstudio transforms.json, 16-bit depth PNGs + depth.npy, and the scene file. Outputs the frame-0 "
                   "GLB path for the core Preview3D node (and, on ComfyUI builds with 3D file types, the frame-0 GLB "
                   "and PLY as File3D for SaveGLB / PreviewPointCloud).")
    CATEGORY = f"{CATEGORY}/export"
    RETURN_TYPES = ("STRING", "STRING") + _FILE3D_TYPES
    RETURN_NAMES = ("glb_path", "folder") + _FILE3D_NAMES
    OUTPUT_TOOLTIPS = ("Frame-0 GLB, relative to the output folder (connect to Preview3D's model_file).",
                       "The export folder, relative to the output folder.") + _FILE3D_TOOLTIPS
    OUTPUT_NODE = True
    FUNCTION = "export"

    @classmethod
    def INPUT_TYPES(cls):
        toggles = {where: {name: ("BOOLEAN", {"default": True, "tooltip": EXPORT_FORMATS.help(name)})
                           for name in EXPORT_FORMATS if EXPORT_FORMATS.get(name).node == where}
                   for where in ("required", "optional")}
        return {"required": {
            "scene": (SCENE, {"tooltip": "A scene with cameras (FourD Recover Cameras)."}),
            "filename_prefix": ("STRING", {"default": "fourd/scene", "tooltip": "Folder name inside the output folder; "
                                "a number is appended. Cannot leave the output folder."}),
            "fps": node_input(ExportOptions, "fps"),
            **toggles["required"],
            "min_confidence": node_input(ExportOptions, "min_confidence"),
            "voxel_size": node_input(ExportOptions, "voxel_size"),
            "outlier_neighbors": node_input(ExportOptions, "outlier_neighbors"),
            "max_points": node_input(ExportOptions, "max_points", default=0, min=0, max=10_000_000,
                                     tooltip="At most this many points per frame file (0 = all)."),
        }, "optional": toggles["optional"]}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        return v.filename_prefix(filename_prefix)

    def export(self, scene, filename_prefix, fps, min_confidence, voxel_size, outlier_neighbors, max_points, **toggles):
        if not scene.has_cameras:
            raise InputError("This scene has no cameras yet: put FourD Recover Cameras before FourD Export.")
        folder, rel = cb.safe_output_folder(filename_prefix)
        opts = ExportOptions(fps=fps, formats={k: bool(val) for k, val in toggles.items() if k in EXPORT_FORMATS},
                             min_confidence=min_confidence, voxel_size=voxel_size, outlier_neighbors=outlier_neighbors,
                             max_points=max_points or None)
        export_scene(scene, folder, opts, progress=lambda stage, done, total: cb.check_interrupt())
        glb, ply = opts.enabled("glb"), opts.enabled("ply")
        glb_rel = f"{rel}/pointclouds/frame_00000.glb" if glb else ""
        result = (glb_rel, rel)
        if file3d.available():
            result += (file3d.file3d(folder / "pointclouds" / "frame_00000.glb" if glb else None, "glb"),
                       file3d.file3d(folder / "pointclouds" / "frame_00000.ply" if ply else None, "ply"))
        return {"ui": {"text": [rel]}, "result": result}


class FourDSaveScene:
    DESCRIPTION = "Save the scene as one .safetensors file (no pickle) in the output folder, to reload later."
    CATEGORY = f"{CATEGORY}/export"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("The scene file, relative to the output folder.",)
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scene": (SCENE, {"tooltip": "Any 4D scene."}),
            "filename_prefix": ("STRING", {"default": "fourd/scene", "tooltip": "Name inside the output folder."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        return v.filename_prefix(filename_prefix)

    def save(self, scene, filename_prefix):
        folder, rel = cb.safe_output_folder(filename_prefix)
        # name + ".safetensors" (not with_suffix: a prefix like "run.v2" has a dot of its own)
        scene.save(folder.parent / (folder.name + ".safetensors"))
        return {"ui": {"text": [rel + ".safetensors"]}, "result": (rel + ".safetensors",)}


class FourDLoadScene:
    DESCRIPTION = "Load a scene .safetensors written by FourD Save Scene / FourD Export / the CLI."
    CATEGORY = f"{CATEGORY}/export"
    RETURN_TYPES = (SCENE, "IMAGE", "IMAGE")
    RETURN_NAMES = ("scene", "rgb_video", "xyz_video")
    OUTPUT_TOOLTIPS = ("The scene.", "RGB frames.", "XYZ point maps as colours.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": "fourd/scene_00001/scene.safetensors",
                                                 "tooltip": "Path relative to the output folder, or absolute."})}}

    def load(self, path):
        from pathlib import Path

        p = Path(path).expanduser()
        if not p.is_absolute():
            p = cb.output_directory() / p
        scene = Scene4D.load(p)
        return (scene, scene.rgb, scene.xyz.clamp(0, 1))


class FourDPreview4D:
    DESCRIPTION = ("Interactive 4D viewer inside the node (three.js + Spark, offline): a scene's point cloud as "
                   "points and/or Gaussian splats as true anisotropic, depth-sorted splats, over time. Orbit / pan / "
                   "zoom, a time slider with play/pause, point size, camera frusta. Connect a scene, splats, or both; "
                   "each frame is subsampled for the browser.")
    CATEGORY = f"{CATEGORY}/preview"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "preview"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {},
            "optional": {
                "scene": (SCENE, {"tooltip": "A scene with cameras (world points), or without (raw point maps); "
                                  "shown as points."}),
                "points_per_frame": ("INT", {"default": 40000, "min": 1000, "max": 400000, "step": 1000,
                                             "tooltip": "Subsample each frame of the scene to this many points."}),
                "min_confidence": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                             "tooltip": "Hide points below this confidence."}),
                "gaussians": (GAUSSIANS, {"tooltip": "Splats (FourD Gaussians from Scene or FourD Fit 4D Gaussians); "
                                          "shown as Gaussian splats."}),
                "splats_per_frame": ("INT", {"default": 100000, "min": 1000, "max": 1_000_000, "step": 1000,
                                             "tooltip": "Subsample each frame to at most this many splats (a random "
                                             "subset; fewer splats look thinner)."}),
                "min_opacity": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Hide splats below this opacity (0 shows every fitted splat)."}),
                **file3d.splat_input(),
            },
        }

    def preview(self, scene=None, points_per_frame=40000, min_confidence=0.0, gaussians=None,
                splats_per_frame=100000, min_opacity=0.0, splat=None):
        if gaussians is not None and splat is not None:
            raise InputError("FourD 4D Preview shows one set of splats: connect gaussians or splat, not both.")
        if splat is not None:
            gaussians = file3d.from_core_splat(splat)
        if scene is None and gaussians is None:
            raise InputError("FourD 4D Preview shows nothing: connect a scene, Gaussians, or both.")
        if gaussians is None:
            data = viewer_asset_bytes(scene, points_per_frame=points_per_frame, min_confidence=min_confidence)
            return cb.preview_asset_ui("fourd_preview/scene", data)
        data = gaussians_viewer_asset_bytes(gaussians, splats_per_frame=splats_per_frame, min_opacity=min_opacity,
                                            scene=scene, points_per_frame=points_per_frame,
                                            min_confidence=min_confidence)
        return cb.preview_asset_ui("fourd_preview/gaussians", data)
