"""High-level entry points: one image -> :class:`~fourd_core.scene.Scene4D`.

These glue the pieces together for the CLI and the ComfyUI nodes; each piece stays usable alone
(``models.loading``, ``pipelines.fourdnex``, ``geometry.registration``, ``io.export``).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Callable

import torch

from . import __version__
from .errors import GeometryError
from .geometry.registration import fit_cameras, prepare_4dnex_points
from .geometry.solver.config import SolverConfig
from .pipelines.fourdnex import SamplingConfig, StepCallback, decode_6d, generate_latents
from .scene import Scene4D
from .settings import setting


@dataclasses.dataclass
class GeometryConfig(SolverConfig):
    """The camera/depth recovery step: the solver's options (:class:`~fourd_core.geometry.solver.config.SolverConfig`,
    defaults and rules there) plus what to do when it fails."""

    #: when the maps admit no perspective camera (e.g. random weights, a mirrored or flat map),
    #: fall back to reading them in the camera frame instead of raising (see :func:`camera_frame_fallback`)
    fallback: bool = setting(True, help="when the point maps admit no camera, read them in the camera frame with "
                             "confidence 0 and a warning (off: fail with the reason)", flag="--strict-geometry")

    def kwargs(self) -> dict:
        """The options users choose (CLI, FourD Recover Cameras), as recorded in a scene's metadata."""
        return {k: getattr(self, k) for k in REPORTED_OPTIONS}


#: the solver options a scene's ``metadata["geometry"]`` records
REPORTED_OPTIONS = ("shared_intrinsics", "square_pixels", "centered_principal_point", "robust", "temporal_smoothness")


def recover_geometry(scene: Scene4D, config: GeometryConfig | None = None, device=None,
                     callback: Callable[[int, int], None] | None = None) -> Scene4D:
    """Fit intrinsics, per-frame cam-to-world and depth to the scene's point maps (4DNeX Sec. 4.3).

    The 4DNeX point map (each axis in [0, 1]) is first mapped to the official registration frame
    (x, y shifted by -0.5, z kept >= 0; official 3DTopia/4DNeX @ 1101bc6: ``inference.py``). Returns a new Scene4D with K,
    cam_to_world, depth and confidence set; rgb, xyz and metadata are shared.

    Raises:
        GeometryError: NaN/degenerate point maps (the message says what to do).
    """
    config = config or GeometryConfig()
    t0 = time.perf_counter()
    points = prepare_4dnex_points(scene.xyz)
    meta = dict(scene.metadata)
    try:
        fit = fit_cameras(points, config, device=device, callback=callback)
        K, c2w, depth, conf, info = fit.K, fit.cam_to_world, fit.depth, fit.confidence, fit.info
    except GeometryError as exc:
        if not config.fallback or not torch.isfinite(points).all():
            raise
        warnings.warn(f"Camera recovery failed ({exc}); using the camera-frame fallback (confidence 0).")
        K, c2w, depth, conf = camera_frame_fallback(points)
        info = {"fallback": True, "fallback_reason": str(exc)}
    meta["geometry"] = {**config.kwargs(), "seconds": round(time.perf_counter() - t0, 3),
                        **{k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))}}
    if info.get("warnings"):
        meta["geometry"]["warnings"] = list(info["warnings"])
    return Scene4D(rgb=scene.rgb, xyz=scene.xyz, K=K, cam_to_world=c2w, depth=depth, confidence=conf, metadata=meta)


#: horizontal field of view (degrees) the camera-frame fallback's focal is clamped to
FALLBACK_FOV_DEGREES = (20.0, 120.0)


def camera_frame_fallback(points: torch.Tensor, min_depth: float = 1e-3):
    """Cameras for point maps that admit no perspective camera: read them in the camera frame.

    Every frame gets ``cam_to_world = I`` and ``depth = max(z, min_depth * max z)``; one shared
    ``K`` (fx = fy, centred principal point) is fitted in closed form to
    ``u - cx = f x / z`` and ``v - cy = f y / z`` by least squares over points with z > 0, falling back
    to a 60 degree horizontal field of view when that is not positive and clamped to a horizontal
    field of view in [:data:`FALLBACK_FOV_DEGREES`] (maps that admit no camera, such as random
    weights' output, can give a focal of a fraction of a pixel: a ~180 degree view whose unprojected
    points and splats are absurd). Confidence is 0 everywhere, marking the geometry as unreliable.

    Args:
        points: ``[F, H, W, 3]`` finite point maps (4DNeX registration frame).
    Returns:
        ``(K [F,3,3], cam_to_world [F,4,4], depth [F,H,W], confidence [F,H,W])`` float32.
    """
    f_, h, w, _ = points.shape
    p = points.double()
    cx, cy = (w - 1) / 2, (h - 1) / 2
    u = torch.arange(w, dtype=torch.float64).view(1, 1, w).expand(f_, h, w) - cx
    v = torch.arange(h, dtype=torch.float64).view(1, h, 1).expand(f_, h, w) - cy
    z = p[..., 2]
    ok = z > 1e-6 * z.abs().max().clamp_min(1e-12)
    a = torch.cat([(p[..., 0] / z)[ok], (p[..., 1] / z)[ok]])
    b = torch.cat([u[ok], v[ok]])
    focal = float((a * b).sum() / (a * a).sum().clamp_min(1e-12)) if ok.any() else 0.0
    if not (math.isfinite(focal) and focal > 0):
        focal = (w / 2) / math.tan(math.radians(30))
    lo, hi = ((w / 2) / math.tan(math.radians(fov / 2)) for fov in sorted(FALLBACK_FOV_DEGREES, reverse=True))
    focal = min(max(focal, lo), hi)
    K = torch.tensor([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], dtype=torch.float32).expand(f_, 3, 3).clone()
    zmax = float(z.max()) if float(z.max()) > 0 else 1.0
    depth = z.clamp_min(min_depth * zmax).float()
    return K, torch.eye(4).expand(f_, 4, 4).clone(), depth, torch.zeros(f_, h, w)


def image_to_4d(pipe, image: torch.Tensor, prompt: str, sampling: SamplingConfig | None = None, *,
                geometry: GeometryConfig | None = None, xyz_condition: torch.Tensor | None = None,
                callback: StepCallback | None = None, model_info: dict | None = None) -> Scene4D:
    """Generate a 4D scene from one prepared image.

    Args:
        pipe: a loaded :class:`~fourd_core.pipelines.fourdnex.FourDNeXPipeline`.
        image: ``[H, W, 3]`` float in [0, 1] at the sampling size (``io.images.prepare_image``).
        prompt: text prompt (the 4DNeX suffix is added inside).
        geometry: camera/depth recovery options; None skips it (the scene then has no cameras).
        xyz_condition: optional first-frame XYZ ``[H, W, 3]`` in [-1, 1] (default: sloped plane).
        callback: per-step ``callback(step, total, latents)``; raise to cancel.
        model_info: what was loaded (goes into the metadata).
    Returns:
        :class:`Scene4D` with ``rgb`` and ``xyz`` ``[F, H, W, 3]`` (+ cameras when ``geometry``).
    """
    sampling = sampling or SamplingConfig()
    t0 = time.perf_counter()
    latents = generate_latents(pipe, image, prompt, sampling, xyz_condition=xyz_condition, callback=callback)
    t1 = time.perf_counter()
    rgb, xyz = decode_6d(pipe, latents)
    t2 = time.perf_counter()
    meta = {"prompt": prompt, "seed": sampling.seed, "sampling": dataclasses.asdict(sampling),
            "fourd_version": __version__, "models": model_info or {},
            "timings": {"sampling_s": round(t1 - t0, 3), "decode_s": round(t2 - t1, 3)},
            "xyz_meaning": "4DNeX point map in [0,1]: first-camera OpenCV axes, per-frame centred, one global scale"}
    scene = Scene4D(rgb=rgb, xyz=xyz, metadata=meta)
    if geometry is not None:
        scene = recover_geometry(scene, geometry)
    return scene
