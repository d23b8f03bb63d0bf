"""``gaussians/frame_#####.ply``: pixel-aligned Gaussian splats per frame, standard 3DGS PLY
(:func:`fourd_core.splats.pixel_aligned_gaussians`, every ``gaussian_stride``-th pixel)."""

from __future__ import annotations

from . import EXPORT_FORMATS, ExportFormat


@EXPORT_FORMATS.register("gaussians", help="gaussians/frame_#####.ply: pixel-aligned splats, standard 3DGS PLY "
                                           "(default: whenever a point cloud is written)")
class PixelSplats(ExportFormat):
    needs_cameras = True
    default = None
    node = None

    def default_for(self, options):
        return options.enabled("ply") or options.enabled("glb")

    def size_lower_bound(self, ctx):
        s, scene = ctx.options.gaussian_stride, ctx.scene
        d = scene.depth[ctx.frames][:, s // 2::s, s // 2::s]
        keep = (d > 0) & d.isfinite()
        if scene.confidence is not None:
            keep &= scene.confidence[ctx.frames][:, s // 2::s, s // 2::s] >= ctx.options.min_confidence
        return int(keep.sum()) * 17 * 4                       # 17 float32 properties per splat

    def write(self, ctx):
        from ...splats import pixel_aligned_gaussians, write_gaussians_ply

        splats = pixel_aligned_gaussians(ctx.scene, stride=ctx.options.gaussian_stride,
                                         min_confidence=ctx.options.min_confidence, frames=ctx.frames)
        for n, i in enumerate(ctx.frames):
            ctx.say("gaussians", n, len(ctx.frames))
            write_gaussians_ply(ctx.add("gaussians", f"gaussians/frame_{i:05d}.ply"), splats.frame(n))
