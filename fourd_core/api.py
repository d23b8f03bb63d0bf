"""High-level entry points: one image -> :class:`~fourd_core.scene.Scene4D`.

These glue the pieces together for the CLI and the ComfyUI nodes; each piece stays usable alone
(``models.loading``, ``pipelines.fourdnex``, ``geometry.registration``, ``io.export``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch

from . import __version__
from .geometry.registration import fit_cameras, prepare_4dnex_points
from .pipelines.fourdnex import SamplingConfig, StepCallback, decode_6d, generate_latents
from .scene import Scene4D


@dataclasses.dataclass
class GeometryConfig:
    """Options of the camera/depth recovery (see :func:`fourd_core.geometry.registration.fit_cameras`)."""

    shared_intrinsics: bool = True
    square_pixels: bool = True
    centered_principal_point: bool = True
    robust: str = "huber"
    temporal_smoothness: float = 0.0

    def kwargs(self) -> dict:
        return dataclasses.asdict(self)


def recover_geometry(scene: Scene4D, config: GeometryConfig | None = None, device=None,
                     callback: Callable[[int, int], None] | None = None) -> Scene4D:
    """Fit intrinsics, per-frame cam-to-world and depth to the scene's point maps (4DNeX Sec. 4.3).

    The 4DNeX point map (each axis in [0, 1]) is first mapped to the official registration frame
    (x, y shifted by -0.5, z kept >= 0; 4dnex.md sec. 7). Returns a new Scene4D with K,
    cam_to_world, depth and confidence set; rgb, xyz and metadata are shared.

    Raises:
        GeometryError: NaN/degenerate point maps (the message says what to do).
    """
    config = config or GeometryConfig()
    t0 = time.perf_counter()
    fit = fit_cameras(prepare_4dnex_points(scene.xyz), device=device, callback=callback, **config.kwargs())
    meta = dict(scene.metadata)
    meta["geometry"] = {**config.kwargs(), "seconds": round(time.perf_counter() - t0, 3),
                        **{k: v for k, v in fit.info.items() if isinstance(v, (int, float, str, bool))}}
    return Scene4D(rgb=scene.rgb, xyz=scene.xyz, K=fit.K, cam_to_world=fit.cam_to_world, depth=fit.depth,
                   confidence=fit.confidence, metadata=meta)


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
