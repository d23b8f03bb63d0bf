"""``rgb.mp4`` and ``xyz.mp4``: the RGB video and the point map as false colour (R, G, B = x, y, z in [0, 1])."""

from __future__ import annotations

from ..video import write_video
from . import EXPORT_FORMATS, ExportFormat


@EXPORT_FORMATS.register("videos", help="rgb.mp4 and xyz.mp4 (point map as false colour)")
class Videos(ExportFormat):
    node = None

    def write(self, ctx):
        scene, fps = ctx.scene, ctx.options.fps
        ctx.say("videos", 0, 2)
        write_video(ctx.add("video", "rgb.mp4"), scene.rgb, fps)
        ctx.say("videos", 1, 2)
        write_video(ctx.add("video", "xyz.mp4"), scene.xyz.clamp(0, 1), fps)
