"""Novel-view video as 4DNeX makes it, on ComfyUI's own nodes: FourD Render Trajectory renders the
scene's dynamic point cloud along a camera path; its video, mask and size plug straight into core
``WanVaceToVideo`` (control_video, control_masks, width / height / length; reference_image = the
input photo), sampled by core KSampler on the user's Wan VACE checkpoint (then core TrimVideoLatent,
VAE Decode, SaveVideo)."""

from __future__ import annotations

import json
from pathlib import Path

from ..fourd_core.errors import InputError
from ..fourd_core.geometry.trajectory import FITS, HOLE_GRAY, TRAJECTORY_PATHS, render_novel_view
from . import comfy_bridge as cb
from . import validation as v
from .types import CAMERAS, CATEGORY, SCENE, FourDCameras


def cameras_folder(prefix: str) -> Path:
    """``<output>/<prefix>_cameras_NNNNN``, NNNNN being the number core SaveVideo gives its next file of
    the same prefix (``folder_paths.get_save_image_path``): the cameras and the video it is rendered
    into share the number. The ``_cameras_`` part keeps SaveVideo's counter from counting this folder.

    Raises:
        InputError: a prefix that leaves the output folder (:func:`comfy_bridge.prefix_problem`).
    """
    problem = cb.prefix_problem(prefix)
    if problem:
        raise InputError(problem)
    fp = cb._folder_paths()
    if fp is not None and hasattr(fp, "get_save_image_path"):
        full, name, counter, _, _ = fp.get_save_image_path(prefix, str(cb.output_directory()))
        return Path(full) / f"{name}_cameras_{counter:05d}"
    return cb.safe_output_folder(prefix + "_cameras")[0]  # without ComfyUI: the pack's own numbering


class FourDRenderTrajectory:
    DESCRIPTION = ("Render the scene's moving point cloud along a camera path: output frame t shows scene frame t "
                   "from pose t (z-buffered square splats). The video (holes mid-gray), the hole mask (1 = nothing "
                   "rendered = what VACE generates) and width / height / length connect straight to core "
                   "WanVaceToVideo's control_video, control_masks, width, height and length; give it the input photo "
                   "as reference_image. The path's cameras are saved as cameras.json / transforms.json beside SaveVideo's video.")
    CATEGORY = f"{CATEGORY}/novel view"
    RETURN_TYPES = ("IMAGE", "MASK", CAMERAS, "STRING", "INT", "INT", "INT")
    RETURN_NAMES = ("video", "holes", "cameras", "cameras_json", "width", "height", "length")
    OUTPUT_TOOLTIPS = ("The trajectory render (IMAGE batch, one image per frame; holes are mid-gray).",
                       "1 where no point landed (MASK batch): WanVaceToVideo's control_masks (1 = generate).",
                       "The path's cameras (K at the output size + OpenCV cam-to-world per frame).",
                       "The same cameras as JSON text (cameras.json format).",
                       "Output width, for WanVaceToVideo.", "Output height, for WanVaceToVideo.",
                       "Number of frames, for WanVaceToVideo's length.")
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "scene": (SCENE, {"tooltip": "A scene with cameras (FourD Recover Cameras or FourD Load Scene)."}),
                "path": (list(TRAJECTORY_PATHS), {"tooltip": "orbit: constant speed about the axis; arc: eased "
                         "(+ elevation); dolly: along the optical axis; static: the first camera held (with "
                         "follow_scene: the scene's own cameras)."}),
                "degrees": ("FLOAT", {"default": 30.0, "min": -360.0, "max": 360.0, "step": 1.0,
                                      "tooltip": "Total turn of orbit/arc over the video (one photo shows one side: "
                                      "15-45 degrees)."}),
                "axis": (["y", "x", "z"], {"tooltip": "Axis of the first camera: y = horizontal orbit, x = vertical."}),
                "distance": ("FLOAT", {"default": 0.3, "min": -0.95, "max": 5.0, "step": 0.05,
                                       "tooltip": "Dolly travel as a fraction of the scene depth (positive = forward)."}),
                "elevation": ("FLOAT", {"default": 0.0, "min": -89.0, "max": 89.0, "step": 1.0,
                                        "tooltip": "Arc only: final elevation in degrees (negative rises above)."}),
                "follow_scene": ("BOOLEAN", {"default": False, "tooltip": "Offset the scene's own (recovered) "
                                 "cameras by the path, keeping the source camera's motion; off: move from frame 0's "
                                 "camera."}),
                "frames": ("INT", {"default": 49, "min": 1, "max": 1025, "step": 4,
                                   "tooltip": "Output frames, 4k+1 for Wan VACE (49 = the 4DNeX clip; other counts "
                                   "resample the scene's frames uniformly in time)."}),
                "width": ("INT", {"default": 832, "min": 32, "max": 2048, "step": 16,
                                  "tooltip": "Output width (multiple of 16; Wan VACE 480p: 832)."}),
                "height": ("INT", {"default": 480, "min": 32, "max": 2048, "step": 16,
                                   "tooltip": "Output height (multiple of 16; Wan VACE 480p: 480)."}),
                "fit": (list(FITS), {"tooltip": "cover: the source view fills the output (edges cropped); contain: "
                        "all of it inside, the rest left for VACE to generate."}),
                "point_size": ("INT", {"default": 2, "min": 1, "max": 9, "tooltip": "Splat size in output pixels "
                               "(2-3 closes the cracks between neighbouring points)."}),
                "filename_prefix": ("STRING", {"default": "fourd/novel_view", "tooltip": "Saves "
                                    "<prefix>_cameras_NNNNN/cameras.json and transforms.json in the output folder, "
                                    "numbered like SaveVideo's next <prefix>_NNNNN_.mp4 (give both the same prefix); "
                                    "empty: do not save."}),
            },
            "optional": {
                "cameras": (CAMERAS, {"tooltip": "A path from FourD Camera Path instead of the settings above (its "
                            "steps must equal frames)."}),
                "min_confidence": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                             "tooltip": "Do not render points below this confidence."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, frames=None, width=None, height=None, point_size=None, filename_prefix=None):
        return v.check_all(v.frames_4k1("frames", frames, lo=1, hi=1025), v.size_16("width", width, lo=32),
                           v.size_16("height", height, lo=32), v.int_range("point_size", point_size, 1, 9),
                           True if not filename_prefix else v.filename_prefix(filename_prefix))

    def render(self, scene, path, degrees, axis, distance, elevation, follow_scene, frames, width, height, fit,
               point_size, filename_prefix, cameras=None, min_confidence=0.0):
        if frames < 1:
            raise InputError(f"frames must be >= 1, got {frames} (a path with zero frames cannot be rendered).")
        if filename_prefix and cb.prefix_problem(filename_prefix):
            raise InputError(cb.prefix_problem(filename_prefix))
        kw = {}
        if cameras is not None:
            kw = dict(path_poses=cameras.cam_to_world, path_K=cameras.K, path_size=(cameras.height, cameras.width))
        r = render_novel_view(scene, path, frames, height, width, degrees=degrees, axis=axis, distance=distance,
                              elevation_degrees=elevation, follow_scene=follow_scene, fit=fit, point_size=point_size,
                              background=HOLE_GRAY, min_confidence=min_confidence, **kw)
        cams = FourDCameras(K=r.K, cam_to_world=r.cam_to_world, height=height, width=width)
        from ..fourd_core.io.cameras import cameras_dict, transforms_dict

        extra = {"units": "scene units of the point map", "source_frames": r.source_frames.tolist(),
                 "render": r.settings}
        doc = cameras_dict(r.K, r.cam_to_world, height, width, extra)
        text = json.dumps(doc)
        if filename_prefix:
            from ..fourd_core.util.atomic import atomic_directory, write_text_atomic

            with atomic_directory(cameras_folder(filename_prefix)) as tmp:
                write_text_atomic(tmp / "cameras.json", json.dumps(doc, indent=1))
                tr = transforms_dict(r.K, r.cam_to_world, height, width, [f"frame_{i:05d}" for i in range(r.num_frames)])
                write_text_atomic(tmp / "transforms.json", json.dumps(tr, indent=1))
        return (r.video, r.holes, cams, text, width, height, r.num_frames)
