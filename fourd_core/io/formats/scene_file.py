"""``scene.safetensors``: the whole scene, reloadable without pickle (:meth:`fourd_core.scene.Scene4D.load`)."""

from __future__ import annotations

from . import EXPORT_FORMATS, ExportFormat


@EXPORT_FORMATS.register("scene", help="scene.safetensors: the whole scene, reloadable (Scene4D.load)")
class SceneFile(ExportFormat):
    node = None

    def size_lower_bound(self, ctx):
        s = ctx.scene
        f, h, w = s.num_frames, *s.size
        n = f * h * w * (3 + 12) + sum(getattr(s, k).numel() * 4 for k in ("K", "cam_to_world", "depth")
                                       if getattr(s, k) is not None)
        return n + (0 if s.confidence is None else f * h * w * 2)

    def write(self, ctx):
        ctx.say("scene file", 0, 1)
        ctx.scene.save(ctx.add("scene", "scene.safetensors"))
