"""Novel-view render of a dynamic scene along a camera trajectory: output frame ``t`` shows the
point cloud of scene frame ``s(t)`` seen from pose ``t`` of a camera path.

This is the render 4DNeX turns into its novel-view videos (4DNeX paper, Sec. 5.1 and Appendix A:
the generated 4D point cloud is rendered along a new trajectory, then a video model cleans it up).
Unlike the freeze-time render of :mod:`.novel_view` (one frame, many views, for the grid sampler),
time and camera move together here.

Paths (built by :mod:`.camera_paths` about the scene centre in front of the first camera, the
median depth of frame 0 on its optical axis):

* ``orbit``: constant angular speed about an axis of the first camera;
* ``arc``: eased azimuth (+ optional elevation);
* ``dolly``: straight along the optical axis (``distance`` is a fraction of the scene depth);
* ``static``: the first camera held still;
* any poses given by the caller (e.g. ``FourD Camera Path``).

With ``follow_scene=True`` the path is an *offset* of the scene's own cameras: pose
``t = C_s(t) @ inv(P_0) @ P_t`` where ``C`` are the scene's (recovered) cameras and ``P`` the path,
so a handheld source camera keeps its motion and the path is added on top (``static`` then gives
the scene's own cameras, i.e. a re-render of the input video).

The output size may differ from the scene's: intrinsics are rescaled about the image centre,
``fit="cover"`` (uniform scale so the source view covers the output, cropping the overflow: no
extra holes) or ``"contain"`` (the whole source view fits inside; the rest is holes to be
generated).  Pixel centres are at integer coordinates, so with scale ``k``:
``fx' = k fx``, ``cx' = k (cx - (W - 1) / 2) + (W' - 1) / 2`` (and likewise for y).

Rendering is :func:`~fourd_core.geometry.render.zbuffer_splat` (square splats of ``point_size``
output pixels, nearest point wins) per frame; holes get ``background`` (mid-gray, which is "no
information" for Wan VACE's control video) and 1 in the hole mask.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..errors import InputError
from .camera_paths import arc, dolly, look_at_center, orbit
from .render import background_color, gather_colors, zbuffer_splat

__all__ = ["TRAJECTORY_PATHS", "FITS", "TrajectoryRender", "output_intrinsics", "source_frame_indices",
           "trajectory_cameras", "render_trajectory", "render_novel_view"]

TRAJECTORY_PATHS = ("orbit", "arc", "dolly", "static")
FITS = ("cover", "contain")
HOLE_GRAY = 0.5


@dataclasses.dataclass
class TrajectoryRender:
    """A trajectory render and the cameras that made it.

    Attributes:
        video: ``[T, H, W, 3]`` float32 in [0, 1]; holes hold the background gray.
        holes: ``[T, H, W]`` float32, 1 where no point was rendered (what a video model must generate).
        K: ``[T, 3, 3]`` float32 intrinsics in pixels of the output size.
        cam_to_world: ``[T, 4, 4]`` float32 OpenCV camera-to-world poses (scene units).
        source_frames: ``[T]`` int64, the scene frame rendered in each output frame.
        settings: JSON-serialisable description (path, angles, sizes, point size...).
    """

    video: torch.Tensor
    holes: torch.Tensor
    K: torch.Tensor
    cam_to_world: torch.Tensor
    source_frames: torch.Tensor
    settings: dict = dataclasses.field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the output."""
        return int(self.video.shape[1]), int(self.video.shape[2])

    @property
    def hole_fraction(self) -> float:
        return float(self.holes.mean())


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or int(value) < 1:
        raise InputError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def output_intrinsics(K: torch.Tensor, source_size: tuple[int, int], output_size: tuple[int, int],
                      fit: str = "cover") -> torch.Tensor:
    """Intrinsics of a source camera for another output size (same optical axis and centre).

    Args:
        K: ``[..., 3, 3]`` intrinsics in pixels of an image of ``source_size`` ``(H, W)``.
        output_size: ``(H', W')`` of the output image.
        fit: ``"cover"`` (scale ``k = max(H'/H, W'/W)``: the source view covers the output) or
            ``"contain"`` (``k = min(...)``: the whole source view is inside the output).

    Returns:
        ``[..., 3, 3]`` float32: ``fx, fy, skew`` times ``k``; ``c' = k (c - (S - 1) / 2) + (S' - 1) / 2``
        (pixel centres at integer coordinates).

    Raises:
        InputError: non-positive sizes or an unknown ``fit``.
    """
    (h, w), (ho, wo) = [(_positive_int(a, "height"), _positive_int(b, "width")) for a, b in (source_size, output_size)]
    if fit not in FITS:
        raise InputError(f"fit must be one of {FITS}; got {fit!r}.")
    k = (max if fit == "cover" else min)(ho / h, wo / w)
    K2 = torch.as_tensor(K).to(torch.float64).clone()
    K2[..., 0, 0] *= k
    K2[..., 0, 1] *= k
    K2[..., 1, 1] *= k
    K2[..., 0, 2] = k * (K2[..., 0, 2] - (w - 1) / 2) + (wo - 1) / 2
    K2[..., 1, 2] = k * (K2[..., 1, 2] - (h - 1) / 2) + (ho - 1) / 2
    return K2.to(torch.float32)


def source_frame_indices(num_output: int, num_scene: int) -> torch.Tensor:
    """Which scene frame each output frame shows: ``round(t (F - 1) / (T - 1))`` (uniform in time,
    first to last; ``t`` itself when ``T == F``; frame 0 when ``T == 1``). ``[T]`` int64.

    Raises:
        InputError: a count below 1.
    """
    T = _positive_int(num_output, "frames")
    F = _positive_int(num_scene, "scene frames")
    if T == 1:
        return torch.zeros(1, dtype=torch.int64)
    t = torch.arange(T, dtype=torch.float64)
    return torch.floor(t * (F - 1) / (T - 1) + 0.5).to(torch.int64)


def _check_scene(scene) -> None:
    if not getattr(scene, "has_cameras", False):
        raise InputError("The scene has no cameras/depth yet: run FourD Recover Cameras (or `python -m fourd_core "
                         "geometry`) on it first.")


def trajectory_cameras(scene, path: str = "orbit", frames: int | None = None, height: int | None = None,
                       width: int | None = None, *, degrees: float = 30.0, axis: str = "y", distance: float = 0.3,
                       elevation_degrees: float = 0.0, follow_scene: bool = False, fit: str = "cover",
                       path_poses: torch.Tensor | None = None, path_K: torch.Tensor | None = None,
                       path_size: tuple[int, int] | None = None):
    """The cameras of a trajectory render (see the module docstring for the paths).

    Args:
        scene: a :class:`~fourd_core.scene.Scene4D` with cameras.
        path: one of :data:`TRAJECTORY_PATHS` (ignored when ``path_poses`` is given).
        frames: output frames ``T`` (default: the scene's frame count). Output frame ``t`` shows
            scene frame :func:`source_frame_indices` ``[t]``.
        height, width: output size in pixels (default: the scene's).
        degrees, axis: orbit/arc angle and axis (``"x"``, ``"y"``, ``"z"`` of the first camera).
        distance: dolly travel as a fraction of the scene depth (positive = forward).
        elevation_degrees: arc elevation (see :func:`~fourd_core.geometry.camera_paths.arc`).
        follow_scene: offset the scene's own cameras by the path instead of moving from frame 0's camera.
        fit: intrinsics rescaling to the output size, ``"cover"`` or ``"contain"`` (:func:`output_intrinsics`).
        path_poses: optional ``[T, 4, 4]`` OpenCV poses to use as the path (e.g. FourD Camera Path's);
            ``T`` must equal ``frames`` when both are given.
        path_K, path_size: the intrinsics ``[T, 3, 3]`` or ``[3, 3]`` and image size ``(H, W)`` of
            ``path_poses`` (default: frame 0's K and the scene size).

    Returns:
        ``(K [T, 3, 3], cam_to_world [T, 4, 4], source_frames [T])``: float32 OpenCV cameras at the
        output size, int64 scene frame indices.

    Raises:
        InputError: no cameras, zero frames, a bad size, path, fit or pose shape.
    """
    _check_scene(scene)
    for name, value in (("degrees", degrees), ("elevation_degrees", elevation_degrees), ("distance", distance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise InputError(f"{name} must be a finite number; got {value!r}.")
    if fit not in FITS:
        raise InputError(f"fit must be one of {FITS}; got {fit!r}.")
    F = scene.num_frames
    sh, sw = scene.size
    H = sh if height is None else _positive_int(height, "height")
    W = sw if width is None else _positive_int(width, "width")
    if path_poses is not None:
        poses = torch.as_tensor(path_poses).to(torch.float64)
        if poses.ndim != 3 or tuple(poses.shape[1:]) != (4, 4) or poses.shape[0] < 1:
            raise InputError(f"path_poses must be [T, 4, 4] with T >= 1; got {list(poses.shape)}.")
        if not torch.isfinite(poses).all():
            raise InputError("path_poses contain NaN or inf.")
        if frames is not None and _positive_int(frames, "frames") != poses.shape[0]:
            raise InputError(f"The camera path has {poses.shape[0]} poses but {frames} frames were asked for; make "
                             f"the path with {frames} steps.")
        T = poses.shape[0]
        ph, pw = path_size if path_size is not None else (sh, sw)
        Kp = scene.K[0] if path_K is None else torch.as_tensor(path_K)
        Kp = torch.as_tensor(Kp).to(torch.float64)
        if Kp.ndim == 2:
            Kp = Kp.expand(T, 3, 3)
        if tuple(Kp.shape) != (T, 3, 3):
            raise InputError(f"path_K must be [3, 3] or [{T}, 3, 3]; got {list(Kp.shape)}.")
    else:
        T = F if frames is None else _positive_int(frames, "frames")
        c2w0 = scene.cam_to_world[0].to(torch.float64)
        depth0 = scene.depth[0].to(torch.float64)
        if path == "orbit":
            poses = orbit(depth0, c2w0, degrees=degrees, steps=T, axis=axis)
        elif path == "arc":
            poses = arc(depth0, c2w0, degrees=degrees, steps=T, axis=axis, elevation_degrees=elevation_degrees)
        elif path == "dolly":
            scale = float((look_at_center(c2w0, depth0) - c2w0[:3, 3]).norm())
            poses = dolly(c2w0, float(distance) * scale, steps=T)
        elif path == "static":
            poses = c2w0.expand(T, 4, 4).clone()
        else:
            raise InputError(f"path must be one of {TRAJECTORY_PATHS}; got {path!r}.")
        poses = poses.to(torch.float64)
        ph, pw = sh, sw
        Kp = scene.K[0].to(torch.float64).expand(T, 3, 3)
    src = source_frame_indices(T, F)
    if follow_scene:
        offsets = torch.linalg.inv(poses[0]) @ poses  # the path relative to its first pose, camera frame
        c2w = scene.cam_to_world.to(torch.float64)[src] @ offsets
        K = output_intrinsics(scene.K.to(torch.float64)[src], (sh, sw), (H, W), fit)
    else:
        c2w = poses
        K = output_intrinsics(Kp, (int(ph), int(pw)), (H, W), fit)
    return K, c2w.to(torch.float32), src


def render_trajectory(scene, K: torch.Tensor, cam_to_world: torch.Tensor, height: int, width: int, *,
                      source_frames: torch.Tensor | None = None, point_size: int = 2,
                      background: float = HOLE_GRAY, min_confidence: float = 0.0, device=None,
                      settings: dict | None = None) -> TrajectoryRender:
    """Render output frame ``t`` = scene frame ``source_frames[t]``'s points from camera ``t``.

    Args:
        scene: a Scene4D with cameras (points: ``scene.points(s)``, colours ``scene.rgb[s]``).
        K: ``[T, 3, 3]`` intrinsics at the output size; cam_to_world: ``[T, 4, 4]`` OpenCV poses.
        height, width: output size in pixels.
        source_frames: ``[T]`` scene frame per output frame (default: :func:`source_frame_indices`).
        point_size: splat side in output pixels (2-3 closes the cracks of a magnified view).
        background: gray level of holes (0.5: neutral for VACE).
        min_confidence: points whose scene confidence is below this are not rendered.
        device: where to splat (default: the scene tensors' device; CUDA is faster).
        settings: stored in the result's ``settings``.

    Returns:
        :class:`TrajectoryRender` (tensors on the CPU).

    Raises:
        InputError: no cameras, mismatched shapes, bad sizes or frame indices.
    """
    _check_scene(scene)
    c2w = torch.as_tensor(cam_to_world).to(torch.float32)
    if c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4) or c2w.shape[0] < 1:
        raise InputError(f"cam_to_world must be [T, 4, 4] with T >= 1 (a path with zero frames cannot be "
                         f"rendered); got {list(c2w.shape)}.")
    T = c2w.shape[0]
    Ks = torch.as_tensor(K).to(torch.float32)
    if Ks.ndim == 2:
        Ks = Ks.expand(T, 3, 3)
    if tuple(Ks.shape) != (T, 3, 3):
        raise InputError(f"K must be [3, 3] or [{T}, 3, 3]; got {list(Ks.shape)}.")
    H, W = _positive_int(height, "height"), _positive_int(width, "width")
    point_size = _positive_int(point_size, "point_size")
    src = source_frame_indices(T, scene.num_frames) if source_frames is None else \
        torch.as_tensor(source_frames).to(torch.int64).flatten()
    if src.numel() != T or bool((src < 0).any()) or bool((src >= scene.num_frames).any()):
        raise InputError(f"source_frames must be {T} scene frame indices in [0, {scene.num_frames - 1}].")
    if not math.isfinite(float(min_confidence)):
        raise InputError(f"min_confidence must be a number; got {min_confidence}.")
    dev = torch.device(device) if device is not None else scene.depth.device
    bg = background_color(background, dev)
    video = torch.empty(T, H, W, 3, dtype=torch.float32)
    holes = torch.empty(T, H, W, dtype=torch.float32)
    # Points are splatted in their own camera's frame with the relative pose inv(C_s) @ pose_t: the
    # same projection as world points through pose_t (scene.points() is C_s applied to d K^-1 [u, v, 1]),
    # without unprojecting into the world first.
    C = scene.cam_to_world.to(torch.float64)
    jj, ii = torch.meshgrid(torch.arange(scene.size[1], dtype=torch.float64), torch.arange(scene.size[0], dtype=torch.float64),
                            indexing="xy")
    pix = torch.stack([jj, ii, torch.ones_like(jj)], -1).reshape(-1, 3)
    rays_for: tuple[torch.Tensor, torch.Tensor] | None = None
    current: tuple[int, torch.Tensor, torch.Tensor] | None = None
    for t in range(T):
        s = int(src[t])
        if current is None or current[0] != s:  # consecutive output frames may show the same scene frame
            Ksrc = scene.K[s].to(torch.float64)
            if rays_for is None or not torch.equal(rays_for[0], Ksrc):
                ray = pix @ torch.linalg.inv(Ksrc).T
                rays_for = (Ksrc, (ray / ray[:, 2:3]).to(dev, torch.float32))
            d = scene.depth[s].to(dev, torch.float32).reshape(-1)
            if min_confidence > 0 and scene.confidence is not None:
                d = torch.where(scene.confidence[s].to(dev).reshape(-1) >= min_confidence, d,
                                torch.full((), float("nan"), device=dev))
            current = (s, rays_for[1] * d[:, None], scene.rgb[s].to(dev).reshape(-1, 3))
        _, pts, col = current
        relative = torch.linalg.inv(C[s]) @ c2w[t].to(torch.float64)
        index, _ = zbuffer_splat(pts, Ks[t], relative, H, W, point_size=point_size)
        video[t] = gather_colors(col, index, bg).cpu()
        holes[t] = (index < 0).to(torch.float32).cpu()
    return TrajectoryRender(video=video, holes=holes, K=Ks.clone(), cam_to_world=c2w.clone(), source_frames=src,
                            settings=dict(settings or {}, height=H, width=W, point_size=int(point_size),
                                          frames=T, min_confidence=float(min_confidence)))


def render_novel_view(scene, path: str = "orbit", frames: int | None = None, height: int | None = None,
                      width: int | None = None, *, degrees: float = 30.0, axis: str = "y", distance: float = 0.3,
                      elevation_degrees: float = 0.0, follow_scene: bool = False, fit: str = "cover",
                      point_size: int = 2, background: float = HOLE_GRAY, min_confidence: float = 0.0,
                      path_poses: torch.Tensor | None = None, path_K: torch.Tensor | None = None,
                      path_size: tuple[int, int] | None = None, device=None) -> TrajectoryRender:
    """The trajectory render of a scene in one call (what ``FourD Render Trajectory`` and the
    ``novel-view`` CLI run): :func:`trajectory_cameras` then :func:`render_trajectory`.

    Arguments are those two functions'. Returns a :class:`TrajectoryRender` whose ``settings``
    record the path. Raises :class:`~fourd_core.errors.InputError` on bad input, before rendering.
    """
    K, c2w, src = trajectory_cameras(scene, path, frames, height, width, degrees=degrees, axis=axis,
                                     distance=distance, elevation_degrees=elevation_degrees,
                                     follow_scene=follow_scene, fit=fit, path_poses=path_poses, path_K=path_K,
                                     path_size=path_size)
    H, W = (scene.size[0] if height is None else int(height)), (scene.size[1] if width is None else int(width))
    settings = {"path": "custom" if path_poses is not None else path, "degrees": float(degrees), "axis": axis,
                "distance": float(distance), "elevation_degrees": float(elevation_degrees),
                "follow_scene": bool(follow_scene), "fit": fit, "source_size": list(scene.size)}
    return render_trajectory(scene, K, c2w, H, W, source_frames=src, point_size=point_size, background=background,
                             min_confidence=min_confidence, device=device, settings=settings)
