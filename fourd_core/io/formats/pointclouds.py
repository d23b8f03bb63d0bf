"""``pointclouds/frame_#####.ply`` and ``.glb``: coloured world points per frame (the cleaning options of
:class:`~fourd_core.io.export.ExportOptions`; the cleaned points are computed once for both formats)."""

from __future__ import annotations

import torch

from ..pointcloud import clean_points, glb_view, needs_open3d, write_glb, write_ply
from . import EXPORT_FORMATS, ExportFormat


def _cleaned(ctx, i: int):
    opt, scene = ctx.options, ctx.scene

    def make():
        conf = None if scene.confidence is None else scene.confidence[i]
        return clean_points(scene.points(i), scene.rgb[i], confidence=conf, min_confidence=opt.min_confidence,
                            voxel_size=opt.voxel_size, outlier_neighbors=opt.outlier_neighbors,
                            outlier_std=opt.outlier_std, max_points=opt.max_points, seed=i)

    return ctx.shared(("points", i), make)


def _points_lower_bound(ctx) -> int:
    """Points the clouds keep at least: finite, positive depth, above the confidence threshold (0 when the
    open3d clean-up may thin them)."""
    opt, scene = ctx.options, ctx.scene
    if needs_open3d(opt.voxel_size, opt.outlier_neighbors):
        return 0
    d = scene.depth[ctx.frames]
    keep = torch.isfinite(d) & (d > 0)
    if scene.confidence is not None:
        keep &= scene.confidence[ctx.frames] >= opt.min_confidence
    per_frame = keep.flatten(1).sum(1)
    if opt.max_points is not None:
        per_frame = per_frame.clamp_max(opt.max_points)
    return int(per_frame.sum())


class _PointCloud(ExportFormat):
    needs_cameras = True
    node = "required"
    suffix = ""
    bytes_per_point = 0

    def size_lower_bound(self, ctx):
        return _points_lower_bound(ctx) * self.bytes_per_point

    def write(self, ctx):
        (ctx.staging / "pointclouds").mkdir(exist_ok=True)
        for n, i in enumerate(ctx.frames):
            ctx.say("point clouds", n, len(ctx.frames))
            p, c = _cleaned(ctx, i)
            self.write_one(ctx.add(self.kind, f"pointclouds/frame_{i:05d}{self.suffix}"), p, c)


@EXPORT_FORMATS.register("ply", help="pointclouds/frame_#####.ply: binary PLY, float32 x y z and uchar colours, OpenCV "
                                     "world axes")
class Ply(_PointCloud):
    kind, suffix, bytes_per_point = "ply", ".ply", 15      # 3 float32 + 3 uint8

    def write_one(self, path, p, c):
        write_ply(path, p, c)


@EXPORT_FORMATS.register("glb", help="pointclouds/frame_#####.glb: glTF POINTS with linear COLOR_0 in glTF's y-up "
                                     "axes, scaled by their node to a 5-unit view (Preview3D, Blender, three.js)")
class Glb(_PointCloud):
    kind, suffix, bytes_per_point = "glb", ".glb", 20      # 3 float32 + RGBA16

    def size_lower_bound(self, ctx):
        # points beyond GLB_OUTLIER_RADII robust radii (a subset of the 2 % beyond the 98th percentile) are left out
        return int(_points_lower_bound(ctx) * 0.9) * self.bytes_per_point

    def write_one(self, path, p, c, ctx=None):
        # one placement for every frame (from the first exported frame), so the frames line up
        view = None if ctx is None else ctx.shared("glb_view", lambda: glb_view(_cleaned(ctx, ctx.frames[0])[0]))
        write_glb(path, p, c, view)

    def write(self, ctx):
        (ctx.staging / "pointclouds").mkdir(exist_ok=True)
        for n, i in enumerate(ctx.frames):
            ctx.say("point clouds", n, len(ctx.frames))
            p, c = _cleaned(ctx, i)
            self.write_one(ctx.add(self.kind, f"pointclouds/frame_{i:05d}{self.suffix}"), p, c, ctx)
