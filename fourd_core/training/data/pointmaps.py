"""The 4DNeX XYZ recipe: world points of a clip -> the normalised point-map video the LoRA was
trained on (4DNeX ``build_wan_dataset.py`` at f8edd58 and ``core/annotation.py`` at e2840a1, 3DTopia/4DNeX).

Steps (all in float64 here; the official code runs them in float32 numpy/torch)::

    1. P_t  <- inverse(cam_to_world[0]) P_t                      first-camera axes (OpenCV)
    2. P_t  <- clip(P_t, q_t(p), q_t(100 - p))  per frame t and axis, q = np.percentile (linear), p = 2
    3. c_t  = (min_t + max_t) / 2                               per-frame bounding-box centre
    4. s    = max over frames and axes of (max_t - min_t) / 2   one global scale
    5. X_t  = (P_t - c_t) / s                                    in [-1, 1]
    6. nearest resize to cover height x width (sized from the RGB video's aspect), centre crop
    7. ping-pong pad / cut to num_frames

The scale of step 4 is taken over every frame read (``max_frames`` = 81 officially), not only the
``num_frames`` kept. Unprojection of depth maps (:func:`unproject`): the official dynamic-set code
uses ``X = d (u - W // 2) / fx, Y = d (v - H // 2) / fx, Z = d`` with pixel centres at integer
``(u, v)`` - ``fy``, ``cx`` and ``cy`` are ignored - then ``cam_to_world``. ``mode="full"`` uses the
whole pinhole model. The RGB video is cover-resized bilinearly with antialiasing and centre-cropped
(:func:`~fourd_core.training.data.frames.resize_cover_crop`).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import InputError
from .clips import FourDNeXDataConfig, RGBXYZClip
from .frames import ping_pong, resize_cover_crop


def quaternion_wxyz_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices from quaternions stored ``(w, x, y, z)`` (normalised first, as scipy's
    ``Rotation.from_quat`` does).

    Args:
        q: ``[N, 4]``. Returns: ``[N, 3, 3]`` float64.
    Raises:
        InputError: a zero or non-finite quaternion.
    """
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.isfinite(q).all() or (n < 1e-12).any():
        raise InputError("A camera quaternion is zero or not finite; the trajectory file is damaged.")
    w, x, y, z = np.moveaxis(q / n, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def tum_to_cam_to_world(rows: np.ndarray) -> np.ndarray:
    """MonST3R ``pred_traj.txt`` rows ``t, tx, ty, tz, qw, qx, qy, qz`` -> ``[N, 4, 4]`` float64
    camera-to-world (the official ``_cam_to_RT``: the quaternion is reordered from w, x, y, z)."""
    rows = np.asarray(rows, dtype=np.float64)
    out = np.tile(np.eye(4), (rows.shape[0], 1, 1))
    out[:, :3, :3] = quaternion_wxyz_to_matrix(rows[:, 4:8])
    out[:, :3, 3] = rows[:, 1:4]
    return out


def unproject(depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray, mode: str = "official") -> np.ndarray:
    """World points of z-depth maps (pixel centres at integer ``(u, v)``, OpenCV axes).

    Args:
        depth: ``[T, H, W]`` z-depth. K: ``[T, 3, 3]`` pixels. cam_to_world: ``[T, 4, 4]``.
        mode: ``"official"`` (``fx`` only, principal point ``(W // 2, H // 2)``; 4DNeX
            ``Monst3RAnno._get_point_cloud``) or ``"full"`` (``fx, fy, cx, cy``).
    Returns:
        ``[T, H, W, 3]`` float64 world points.
    Raises:
        InputError: mismatched shapes, non-finite values, a zero focal length.
    """
    depth = np.asarray(depth, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    c2w = np.asarray(cam_to_world, dtype=np.float64)
    if depth.ndim != 3 or K.shape != (depth.shape[0], 3, 3) or c2w.shape != (depth.shape[0], 4, 4):
        raise InputError(f"Need depth [T, H, W], K [T, 3, 3] and cam_to_world [T, 4, 4], got {list(depth.shape)}, "
                         f"{list(K.shape)} and {list(c2w.shape)}.")
    if not (np.isfinite(depth).all() and np.isfinite(K).all() and np.isfinite(c2w).all()):
        raise InputError("The depth maps or cameras contain NaN or inf; fill or drop those frames.")
    t, h, w = depth.shape
    fx = K[:, 0, 0]
    if mode == "official":
        fy, cx, cy = fx, np.full(t, float(w // 2)), np.full(t, float(h // 2))
    elif mode == "full":
        fy, cx, cy = K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    else:
        raise InputError(f"unprojection must be 'official' or 'full', got {mode!r}.")
    if (np.abs(fx) < 1e-12).any() or (np.abs(fy) < 1e-12).any():
        raise InputError("A focal length is zero; the intrinsics are damaged.")
    u = np.arange(w, dtype=np.float64)[None, None, :]
    v = np.arange(h, dtype=np.float64)[None, :, None]
    x = depth * (u - cx[:, None, None]) / fx[:, None, None]
    y = depth * (v - cy[:, None, None]) / fy[:, None, None]
    cam = np.stack([x, y, depth], -1)
    return np.einsum("tij,thwj->thwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]


def to_first_camera(points: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    """``inverse(cam_to_world[0])`` applied to world points ``[T, ..., 3]`` (float64)."""
    w2f = np.linalg.inv(np.asarray(cam_to_world, dtype=np.float64)[0])
    p = np.asarray(points, dtype=np.float64)
    return p @ w2f[:3, :3].T + w2f[:3, 3]


def normalize_pointmaps(points: np.ndarray, cam_to_world: np.ndarray, percentile: float = 2.0
                        ) -> tuple[np.ndarray, np.ndarray, float]:
    """Steps 1-5 of the module docstring.

    Args:
        points: ``[T, H, W, 3]`` world points. cam_to_world: ``[T, 4, 4]`` (only frame 0 is used).
        percentile: clipping percentile ``p`` (per frame, per axis: ``[p, 100 - p]``).
    Returns:
        ``(xyz [T, H, W, 3] float64 in [-1, 1], center [T, 3], scale)``.
    Raises:
        InputError: non-finite points or cameras, a singular first camera, or a point map that
            is a single point (zero extent: nothing to normalise).
    """
    p = np.asarray(points, dtype=np.float64)
    c2w = np.asarray(cam_to_world, dtype=np.float64)
    if p.ndim != 4 or p.shape[-1] != 3:
        raise InputError(f"Point maps must be [T, H, W, 3], got {list(p.shape)}.")
    if not np.isfinite(p).all() or not np.isfinite(c2w).all():
        raise InputError("The point maps or cameras contain NaN or inf; fill or drop those frames.")
    if abs(np.linalg.det(c2w[0, :3, :3])) < 1e-12:
        raise InputError("The first camera-to-world matrix is singular; the poses are damaged.")
    t, h, w, _ = p.shape
    flat = to_first_camera(p.reshape(t, h * w, 3), c2w)
    lo = np.percentile(flat, percentile, axis=1, keepdims=True)
    hi = np.percentile(flat, 100.0 - percentile, axis=1, keepdims=True)
    flat = np.clip(flat, lo, hi)
    mn, mx = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    center = (mn + mx) / 2
    scale = float(((mx - mn) / 2).max())
    if not scale > 0:
        raise InputError("The point maps have zero extent (every point is the same); the depth or points are empty.")
    return ((flat - center) / scale).reshape(t, h, w, 3), center[:, 0], scale


def build_rgbxyz_clip(name: str, rgb: torch.Tensor, points: np.ndarray, cam_to_world: np.ndarray,
                      config: FourDNeXDataConfig, caption: str = "", source: dict | None = None) -> RGBXYZClip:
    """An :class:`RGBXYZClip` from a clip's RGB frames and world points (module docstring, steps 1-7).

    Args:
        name: the sample name.
        rgb: ``[T_rgb, H, W, 3]`` float in [0, 1] at the video's own resolution, ``T_rgb >= T``.
        points: ``[T, Hp, Wp, 3]`` world points (any resolution, e.g. the depth maps'); T frames
            already cut to the clip (``max_frames``).
        cam_to_world: ``[T, 4, 4]`` OpenCV camera-to-world.
        config: sizes, frames, percentile. caption: without the suffix.
    Returns:
        the clip: ``rgb`` and ``xyz`` ``[num_frames, height, width, 3]`` float32.
    Raises:
        InputError: fewer RGB frames than point maps, too short a clip for ping-pong padding, or
            any error of :func:`normalize_pointmaps`; messages start with ``name``.
    """
    try:
        t = int(points.shape[0])
        if rgb.shape[0] < t:
            raise InputError(f"the video has {rgb.shape[0]} frames but the annotation {t}; use the matching video.")
        xyz, center, scale = normalize_pointmaps(points, cam_to_world, config.percentile)
        size = tuple(rgb.shape[1:3])
        rgb_out = resize_cover_crop(rgb[:t].float(), config.height, config.width, "bilinear")
        xyz_out = resize_cover_crop(torch.from_numpy(xyz), config.height, config.width, "nearest", size_from=size)
        rgb_out = ping_pong(rgb_out, config.num_frames, "The clip")
        xyz_out = ping_pong(xyz_out, config.num_frames, "The clip")
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    return RGBXYZClip(name=name, rgb=rgb_out.contiguous(), xyz=xyz_out.float().contiguous(), caption=caption,
                      center=torch.from_numpy(center), scale=scale, source=source or {})
