"""``depth/depth_#####.png`` (16-bit, value = depth x ``depth_png_scale``), ``depth.npy`` and ``confidence.npy``."""

from __future__ import annotations

from ..cameras import depth_png_scale, write_depth_png, write_npy
from . import EXPORT_FORMATS, ExportFormat


def depth_name(i: int) -> str:
    return f"depth/depth_{i:05d}.png"


@EXPORT_FORMATS.register("depth", help="depth/depth_#####.png (16-bit), depth.npy and confidence.npy")
class Depth(ExportFormat):
    needs_cameras = True
    node = None

    def size_lower_bound(self, ctx):
        f, h, w = ctx.scene.num_frames, *ctx.scene.size
        return f * h * w * 4 * (1 if ctx.scene.confidence is None else 2)

    def write(self, ctx):
        scene = ctx.scene
        depth = scene.depth
        scale = depth_png_scale(depth)
        (ctx.staging / "depth").mkdir()
        for i in range(scene.num_frames):
            ctx.say("depth", i, scene.num_frames)
            write_depth_png(ctx.add("depth", depth_name(i)), depth[i], scale)
        write_npy(ctx.add("depth", "depth.npy"), depth.float())
        if scene.confidence is not None:
            write_npy(ctx.add("depth", "confidence.npy"), scene.confidence.float())
