"""``images/frame_#####.png``: the RGB frames (8-bit PNG)."""

from __future__ import annotations

from ..video import to_uint8
from . import EXPORT_FORMATS, ExportFormat


def image_name(i: int) -> str:
    return f"images/frame_{i:05d}.png"


@EXPORT_FORMATS.register("images", help="images/frame_#####.png: the RGB frames")
class Images(ExportFormat):
    node = None

    def write(self, ctx):
        import imageio.v2 as imageio

        (ctx.staging / "images").mkdir()
        frames = to_uint8(ctx.scene.rgb)
        for i, frame in enumerate(frames):
            ctx.say("images", i, len(frames))
            imageio.imwrite(ctx.add("images", image_name(i)), frame, format="PNG")
