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
    pointclouds/frame_#####.ply / .glb   coloured world points per frame (GLB: POINTS + linear COLOR_0, y-up)
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

from ..errors import InputError
from ..interrupts import raise_if_stop_requested
from ..scene import Scene4D
from ..settings import MIN_CONFIDENCE, setting, validate
from ..util.atomic import staged_output
from .formats import EXPORT_FORMATS, ExportContext
from .pointcloud import needs_open3d, warn_if_open3d_unusable


@dataclasses.dataclass
class ExportOptions:
    """What to write and how to clean the point clouds.

    Attributes:
        formats: ``{format name: on/off}`` for the formats of
            :data:`fourd_core.io.formats.EXPORT_FORMATS`; a format not named takes its default (on; the
            pixel-aligned splats follow the point clouds). See :meth:`enabled`.
        frames: frame indices for point clouds and splats (None: all).
        fps, min_confidence, voxel_size, outlier_neighbors, outlier_std, max_points, gaussian_stride: the
            settings below (:func:`fourd_core.io.pointcloud.clean_points` for the cleaning ones).
    """

    fps: float = setting(24.0, help="frame rate of the MP4 files", low=1e-3, high=1000.0, node_low=1.0, node_high=120.0)
    formats: dict = dataclasses.field(default_factory=dict)
    frames: list[int] | None = None
    min_confidence: float = setting(0.0, **MIN_CONFIDENCE)
    voxel_size: float = setting(0.0, help="voxel down-sampling of the point clouds in scene units (0 = off; needs "
                                "open3d)", low=0.0, node_high=1.0, step=0.001)
    outlier_neighbors: int = setting(0, help="statistical outlier removal neighbours (0 = off; needs open3d, skipped "
                                     "with a warning without it)", low=0, integer=True, node_high=100)
    outlier_std: float = setting(2.0, help="outlier removal: standard deviations", low=1e-6)
    max_points: int | None = setting(None, help="at most this many points per frame file (None: all)", low=1,
                                     integer=True, allow_none=True)
    gaussian_stride: int = setting(2, help="pixel stride of the pixel-aligned splats", low=1, integer=True)

    @classmethod
    def with_formats(cls, **toggles) -> "ExportOptions":
        """``ExportOptions(formats=...)`` from keyword toggles, e.g. ``with_formats(videos=False, glb=False)``
        (every other keyword is an option field)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        options = {k: v for k, v in toggles.items() if k in fields}
        formats = {k: v for k, v in toggles.items() if k not in fields}
        for name in formats:
            EXPORT_FORMATS.get(name)                      # an unknown format names the known ones
        return cls(formats=formats, **options)

    def enabled(self, name: str) -> bool:
        """Whether format ``name`` is written: its toggle in :attr:`formats`, else its default."""
        fmt = EXPORT_FORMATS.get(name)()
        value = self.formats.get(name)
        if value is None:
            value = fmt.default if fmt.default is not None else fmt.default_for(self)
        return bool(value)

    def check(self, num_frames: int | None = None) -> None:
        """Validate the options before any work. When the point clouds' voxel/outlier clean-up needs
        open3d and it is unusable, warns that those steps will be skipped (``UserWarning``, at most
        once per process: :func:`~fourd_core.io.pointcloud.warn_if_open3d_unusable`).

        Raises:
            InputError: a setting out of range (:func:`fourd_core.settings.validate`), an unknown format,
                bad frame indices.
        """
        validate(self)
        for name in self.formats:
            EXPORT_FORMATS.get(name)
        if num_frames is not None and self.frames is not None and any(
                not 0 <= int(i) < num_frames for i in self.frames):
            raise InputError(f"Export frames must be in 0..{num_frames - 1}, got {self.frames}.")
        if (self.enabled("ply") or self.enabled("glb")) and needs_open3d(self.voxel_size, self.outlier_neighbors):
            warn_if_open3d_unusable()


def _import_writers() -> None:
    """Import every lazily imported writer library now, before the staging folder exists: an
    interrupt inside a first import would otherwise surface as an unrelated error later."""
    import imageio.v2  # noqa: F401
    import plyfile  # noqa: F401
    import safetensors.torch  # noqa: F401


def export_scene(scene: Scene4D, out_dir: str | Path, options: ExportOptions | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, list[str]]:
    """Write the scene's files into ``out_dir`` (see the module docstring), one registered format after
    the other (:data:`fourd_core.io.formats.EXPORT_FORMATS`).

    Args:
        progress: optional ``progress(stage, done, total)``, called before every file; raise in it to
            stop (a host's Stop button): nothing partial is committed.
    Returns:
        ``{kind: [paths]}`` of the written files (kinds: video, scene, cameras, images, depth, ply, glb, gaussians,
        and those of added formats).
    Raises:
        InputError: a geometry export was requested for a scene without cameras, bad options, or
            an output folder that cannot be written (checked before anything is written).
        DiskFullError: not enough room (checked first against a lower bound of the size, and while writing).
    """
    opt = options or ExportOptions()
    f = scene.num_frames
    opt.check(f)
    frames = list(range(f)) if opt.frames is None else [int(i) for i in opt.frames]
    chosen = [(name, EXPORT_FORMATS.get(name)()) for name in EXPORT_FORMATS if opt.enabled(name)]
    if any(fmt.needs_cameras for _, fmt in chosen) and not scene.has_cameras:
        raise InputError("The scene has no cameras/depth; run fit_cameras first or turn off the geometry exports "
                         f"({', '.join(n for n, fmt in chosen if fmt.needs_cameras)}).")
    report = progress or (lambda *a: None)

    def say(stage: str, done: int, total: int) -> None:
        raise_if_stop_requested()
        report(stage, done, total)

    written: dict[str, list[str]] = {}
    _import_writers()
    probe = ExportContext(scene, opt, frames, Path(out_dir), Path(out_dir), {}, say)
    needed = sum(fmt.size_lower_bound(probe) for _, fmt in chosen)
    with staged_output(out_dir, needed_bytes=needed) as (staging, out):
        ctx = ExportContext(scene, opt, frames, staging, out, written, say)
        for _, fmt in chosen:
            fmt.write(ctx)
    return written


def export_size_lower_bound(scene: Scene4D, opt: ExportOptions, frames: list[int]) -> int:
    """Bytes the export writes at least: the uncompressed files exactly (scene file, ``.npy`` arrays,
    PLY / GLB points and splats per kept pixel), compressed ones (MP4, PNG) and point clouds that the
    voxel / outlier clean-up thins out counted as 0. Checked against the free space before writing."""
    probe = ExportContext(scene, opt, frames, Path("."), Path("."), {}, lambda *a: None)
    return sum(EXPORT_FORMATS.get(n)().size_lower_bound(probe) for n in EXPORT_FORMATS if opt.enabled(n))
