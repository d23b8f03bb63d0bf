"""Export a :class:`~fourd_core.scene.Scene4D` to the files users work with.

Layout under the output folder::

    rgb.mp4                    RGB video
    xyz.mp4                    point map as false colour (R = x, G = y, B = z, each in [0, 1])
    scene.safetensors          the whole scene, reloadable without pickle (Scene4D.load)
    cameras.json               K and cam-to-world per frame, OpenCV axes
    transforms.json            the same cameras for nerfstudio (OpenGL axes), with images/ and depth/
    images/frame_#####.png     RGB frames
    depth/depth_#####.png      16-bit depth, value = depth * depth_png_scale (in cameras.json); 0 = invalid
    depth.npy                  [F, H, W] float32 depth
    confidence.npy             [F, H, W] float32 confidence
    pointclouds/frame_#####.ply / .glb   coloured world points per frame (GLB: POINTS + COLOR_0)
    gaussians/frame_#####.ply  pixel-aligned Gaussian splats per frame (standard 3DGS PLY, SH degree 0)

Everything is written into a hidden staging folder inside the output folder and moved into place
only when all files are complete, so a failure leaves no half-written or partial outputs. The
staging folder is removed on every exit path (errors, Ctrl-C, SIGTERM through the CLI's handler);
leftovers of a killed process are removed by the next export into the same folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from ..errors import InputError
from ..interrupts import raise_if_stop_requested
from ..scene import Scene4D
from ..settings import check as check_setting
from ..util.atomic import staged_output
from .cameras import depth_png_scale, write_cameras_json, write_depth_png, write_npy, write_transforms_json
from .pointcloud import clean_points, needs_open3d, warn_if_open3d_unusable, write_glb, write_ply
from .video import to_uint8, write_video


@dataclasses.dataclass
class ExportOptions:
    """What to write and how to clean the point clouds.

    Attributes:
        fps: video frame rate. videos / scene_file / cameras / images / depth: toggles.
        ply, glb: per-frame point-cloud formats. frames: frame indices for point clouds (None: all).
        gaussians, gaussian_stride: per-frame pixel-aligned splats (fourd_core.splats), every n-th pixel;
            ``gaussians=None`` (default) writes them whenever a point-cloud format (ply or glb) is written.
        min_confidence, voxel_size, outlier_neighbors, outlier_std, max_points: see
            :func:`fourd_core.io.pointcloud.clean_points`.
    """

    fps: float = 24.0
    videos: bool = True
    scene_file: bool = True
    cameras: bool = True
    images: bool = True
    depth: bool = True
    ply: bool = True
    glb: bool = True
    gaussians: bool | None = None
    gaussian_stride: int = 2
    frames: list[int] | None = None
    min_confidence: float = 0.0
    voxel_size: float = 0.0
    outlier_neighbors: int = 0
    outlier_std: float = 2.0
    max_points: int | None = None

    def check(self, num_frames: int | None = None) -> None:
        """Validate the options before any work. When the point clouds' voxel/outlier clean-up needs
        open3d and it is unusable, warns that those steps will be skipped (``UserWarning``, at most
        once per process: :func:`~fourd_core.io.pointcloud.warn_if_open3d_unusable`).

        Raises:
            InputError: negative sizes, fps <= 0, bad frame indices.
        """
        check_setting("fps", self.fps)
        check_setting("min_confidence", self.min_confidence)
        if self.voxel_size < 0 or self.outlier_neighbors < 0 or self.outlier_std <= 0:
            raise InputError("voxel_size and outlier_neighbors must be >= 0 and outlier_std > 0.")
        if self.max_points is not None and self.max_points < 1:
            raise InputError(f"max_points must be >= 1 (or None for all), got {self.max_points}.")
        if self.gaussian_stride < 1:
            raise InputError(f"gaussian_stride must be >= 1, got {self.gaussian_stride}.")
        if num_frames is not None and self.frames is not None and any(
                not 0 <= int(i) < num_frames for i in self.frames):
            raise InputError(f"Export frames must be in 0..{num_frames - 1}, got {self.frames}.")
        if (self.ply or self.glb) and needs_open3d(self.voxel_size, self.outlier_neighbors):
            warn_if_open3d_unusable()


def _import_writers() -> None:
    """Import every lazily imported writer library now, before the staging folder exists: an
    interrupt inside a first import would otherwise surface as an unrelated error later."""
    import imageio.v2  # noqa: F401
    import plyfile  # noqa: F401
    import safetensors.torch  # noqa: F401
    import trimesh  # noqa: F401


def export_scene(scene: Scene4D, out_dir: str | Path, options: ExportOptions | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, list[str]]:
    """Write the scene's files into ``out_dir`` (see the module docstring).

    Args:
        progress: optional ``progress(stage, done, total)``, called before every file; raise in it to
            stop (a host's Stop button): nothing partial is committed.
    Returns:
        ``{kind: [paths]}`` of the written files (kinds: video, scene, cameras, images, depth, ply, glb, gaussians).
    Raises:
        InputError: a geometry export was requested for a scene without cameras, bad options, or
            an output folder that cannot be written (checked before anything is written).
    """
    opt = options or ExportOptions()
    f = scene.num_frames
    opt.check(f)
    frames = list(range(f)) if opt.frames is None else [int(i) for i in opt.frames]
    if opt.gaussians is None:
        opt = dataclasses.replace(opt, gaussians=opt.ply or opt.glb)
    needs_geometry = opt.cameras or opt.depth or opt.ply or opt.glb or opt.gaussians
    if needs_geometry and not scene.has_cameras:
        raise InputError("The scene has no cameras/depth; run fit_cameras first or turn off the geometry exports.")
    report = progress or (lambda *a: None)

    def say(stage: str, done: int, total: int) -> None:
        raise_if_stop_requested()
        report(stage, done, total)

    written: dict[str, list[str]] = {}
    _import_writers()
    with staged_output(out_dir, needed_bytes=export_size_lower_bound(scene, opt, frames)) as (staging, out):
        _export_into(scene, staging, out, opt, frames, written, say)
    return written


def export_size_lower_bound(scene: Scene4D, opt: ExportOptions, frames: list[int]) -> int:
    """Bytes the export writes at least: the uncompressed files exactly (scene file, ``.npy`` arrays,
    PLY / GLB points and splats per kept pixel), compressed ones (MP4, PNG) and point clouds that the
    voxel / outlier clean-up thins out counted as 0. Checked against the free space before writing."""
    f, h, w = scene.num_frames, *scene.size
    n = 0
    if opt.scene_file:
        n += f * h * w * (3 + 12) + sum(getattr(scene, k).numel() * 4 for k in ("K", "cam_to_world", "depth")
                                        if getattr(scene, k) is not None)
        n += 0 if scene.confidence is None else f * h * w * 2
    if scene.depth is None:
        return n
    if opt.depth:
        n += f * h * w * 4 * (1 if scene.confidence is None else 2)
    keep = torch.isfinite(scene.depth[frames]) & (scene.depth[frames] > 0)
    if scene.confidence is not None:
        keep &= scene.confidence[frames] >= opt.min_confidence
    if (opt.ply or opt.glb) and not needs_open3d(opt.voxel_size, opt.outlier_neighbors):
        per_frame = keep.flatten(1).sum(1)
        if opt.max_points is not None:
            per_frame = per_frame.clamp_max(opt.max_points)
        points = int(per_frame.sum())
        n += points * (15 * opt.ply + 16 * bool(opt.glb))  # PLY: 3 float32 + 3 uint8; GLB: + 1 byte padding
    if opt.gaussians:
        s = opt.gaussian_stride
        n += int(keep[:, s // 2::s, s // 2::s].sum()) * 17 * 4  # 17 float32 properties per splat (3DGS PLY)
    return n


def _export_into(scene: Scene4D, staging: Path, out: Path, opt: ExportOptions, frames: list[int], written: dict,
                 say) -> None:
    f, h, w = scene.num_frames, *scene.size

    def add(kind: str, rel: str) -> None:
        written.setdefault(kind, []).append(str(out / rel))

    if opt.videos:
        say("videos", 0, 2)
        write_video(staging / "rgb.mp4", scene.rgb, opt.fps)
        say("videos", 1, 2)
        write_video(staging / "xyz.mp4", scene.xyz.clamp(0, 1), opt.fps)
        add("video", "rgb.mp4"), add("video", "xyz.mp4")
    if opt.scene_file:
        say("scene file", 0, 1)
        scene.save(staging / "scene.safetensors")
        add("scene", "scene.safetensors")
    image_rel = [f"images/frame_{i:05d}.png" for i in range(f)]
    depth_rel = [f"depth/depth_{i:05d}.png" for i in range(f)]
    if opt.images:
        import imageio.v2 as imageio

        (staging / "images").mkdir()
        for i, frame in enumerate(to_uint8(scene.rgb)):
            say("images", i, f)
            imageio.imwrite(staging / image_rel[i], frame, format="PNG")
            add("images", image_rel[i])
    scale = None
    if opt.depth:
        depth = scene.depth
        scale = depth_png_scale(depth)
        (staging / "depth").mkdir()
        for i in range(f):
            say("depth", i, f)
            write_depth_png(staging / depth_rel[i], depth[i], scale)
            add("depth", depth_rel[i])
        write_npy(staging / "depth.npy", depth.float())
        add("depth", "depth.npy")
        if scene.confidence is not None:
            write_npy(staging / "confidence.npy", scene.confidence.float())
            add("depth", "confidence.npy")
    if opt.cameras:
        say("cameras", 0, 1)
        extra = {"units": "scene units of the point map", "depth_png_scale": scale,
                 "prompt": scene.metadata.get("prompt"), "seed": scene.metadata.get("seed")}
        write_cameras_json(staging / "cameras.json", scene.K, scene.cam_to_world, h, w, extra)
        add("cameras", "cameras.json")
        write_transforms_json(staging / "transforms.json", scene.K, scene.cam_to_world, h, w,
                              image_rel if opt.images else [f"frame_{i:05d}" for i in range(f)],
                              depth_rel if opt.depth else None,
                              None if scale is None else 1.0 / scale)
        add("cameras", "transforms.json")
    if opt.ply or opt.glb:
        (staging / "pointclouds").mkdir()
        for n, i in enumerate(frames):
            say("point clouds", n, len(frames))
            conf = None if scene.confidence is None else scene.confidence[i]
            p, c = clean_points(scene.points(i), scene.rgb[i], confidence=conf, min_confidence=opt.min_confidence,
                                voxel_size=opt.voxel_size, outlier_neighbors=opt.outlier_neighbors,
                                outlier_std=opt.outlier_std, max_points=opt.max_points, seed=i)
            if opt.ply:
                write_ply(staging / f"pointclouds/frame_{i:05d}.ply", p, c)
                add("ply", f"pointclouds/frame_{i:05d}.ply")
            if opt.glb:
                write_glb(staging / f"pointclouds/frame_{i:05d}.glb", p, c)
                add("glb", f"pointclouds/frame_{i:05d}.glb")
    if opt.gaussians:
        from ..splats import pixel_aligned_gaussians, write_gaussians_ply

        splats = pixel_aligned_gaussians(scene, stride=opt.gaussian_stride, min_confidence=opt.min_confidence,
                                         frames=frames)
        for n, i in enumerate(frames):
            say("gaussians", n, len(frames))
            write_gaussians_ply(staging / f"gaussians/frame_{i:05d}.ply", splats.frame(n))
            add("gaussians", f"gaussians/frame_{i:05d}.ply")
