"""``cameras.json`` (K and cam-to-world per frame, OpenCV axes) and nerfstudio's ``transforms.json``."""

from __future__ import annotations

from ..cameras import depth_png_scale, write_cameras_json, write_transforms_json
from . import EXPORT_FORMATS, ExportFormat
from .depth import depth_name
from .images import image_name


@EXPORT_FORMATS.register("cameras", help="cameras.json (OpenCV) and transforms.json (nerfstudio)")
class Cameras(ExportFormat):
    needs_cameras = True
    node = None

    def write(self, ctx):
        scene = ctx.scene
        f, h, w = scene.num_frames, *scene.size
        ctx.say("cameras", 0, 1)
        scale = depth_png_scale(scene.depth) if ctx.enabled("depth") else None
        extra = {"units": "scene units of the point map", "depth_png_scale": scale,
                 "prompt": scene.metadata.get("prompt"), "seed": scene.metadata.get("seed")}
        write_cameras_json(ctx.add("cameras", "cameras.json"), scene.K, scene.cam_to_world, h, w, extra)
        images = [image_name(i) for i in range(f)] if ctx.enabled("images") else [f"frame_{i:05d}" for i in range(f)]
        write_transforms_json(ctx.add("cameras", "transforms.json"), scene.K, scene.cam_to_world, h, w, images,
                              [depth_name(i) for i in range(f)] if ctx.enabled("depth") else None,
                              None if scale is None else 1.0 / scale)
