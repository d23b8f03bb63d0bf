"""Fit deformable 4D Gaussians to a scene's frames and, optionally, a 4D grid's views.

Model (4Real-Video supplement, Sec. 6, Eq. 11): canonical 3D Gaussians plus, per splat, a temporal
offset ``dp^t_j`` for every frame j and a view offset ``dp^v_i`` for every grid view i; frame (i, j) is
rendered with means ``mu + dp^v_i + dp^t_j``. View 0 is the scene's own camera (zero offset), so the
scene frames pin the canonical + temporal part and the view offsets only absorb what the generated
views disagree on. Deviations from the paper, all documented choices: the offsets are free tables
(one 3-vector per splat and frame/view) rather than an MLP / dense-tracking estimate, kept small by an
L2 penalty (view offsets) and a first-difference smoothness penalty (time offsets); the canonical set
is initialised from the pixel-aligned splats of a few keyframes (:func:`pixel_aligned_gaussians`)
instead of 3D tracking. ``isotropic=True`` constrains the splats to spheres as the paper does.

Optimisation follows the 3DGS reference (Kerbl et al. 2023, Sec. 5 and 7): one image per step, Adam with
per-parameter learning rates (position lr decayed exponentially, times the scene extent; the reference's
1.6e-4 -> 1.6e-6 is for 30k steps, the defaults here 1e-3 -> 1e-5 suit 0.3k-3k steps), loss ``0.8 L1 + 0.2 (1 - SSIM)``, adaptive density control every ``densify_every`` steps
(clone small splats / split large ones whose mean view-space positional gradient, in NDC units, exceeds
2e-4; prune opacity < 0.005) and optional periodic opacity resets.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..util.memory import release_freed_memory
from .config import FitConfig
from .gaussians import Gaussians, Gaussians4D, pixel_aligned_gaussians
from .losses import photometric_loss, psnr
from .model import DeformableModel, densify_and_prune
from .rasterize import resolve_rasterizer

__all__ = ["FitConfig", "Observations", "build_observations", "fallback_cameras", "fit_gaussians", "resize_camera"]


@dataclasses.dataclass
class Observations:
    """Training images with cameras: ``images`` ``[M, H, W, 3]``, ``K`` ``[M, 3, 3]``, ``cam_to_world``
    ``[M, 4, 4]``, ``time`` / ``view`` ``[M]`` int64 (view 0 = the scene's cameras)."""

    images: torch.Tensor
    K: torch.Tensor
    cam_to_world: torch.Tensor
    time: torch.Tensor
    view: torch.Tensor

    @property
    def num_views(self) -> int:
        return int(self.view.max()) + 1


def resize_camera(K: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """Intrinsics ``[..., 3, 3]`` for an image resized by (scale_x, scale_y), with pixel centres at integers:
    ``u' = s (u + 0.5) - 0.5``."""
    K = K.clone().float()
    K[..., 0, 0] *= scale_x
    K[..., 0, 1] *= scale_x
    K[..., 0, 2] = scale_x * (K[..., 0, 2] + 0.5) - 0.5
    K[..., 1, 1] *= scale_y
    K[..., 1, 2] = scale_y * (K[..., 1, 2] + 0.5) - 0.5
    return K


def _resize(images: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if images.shape[1:3] == (h, w):
        return images.float()
    x = images.float().permute(0, 3, 1, 2)
    return F.interpolate(x, size=(h, w), mode="area").permute(0, 2, 3, 1).contiguous()


def build_observations(scene, grid: torch.Tensor | None = None, grid_K: torch.Tensor | None = None,
                       grid_cam_to_world: torch.Tensor | None = None, resolution: int = 0) -> Observations:
    """Training views: every scene frame (view 0) plus, with a grid, its views 1..V-1 at every time.

    The grid is row-major (frame of view v at time t at index ``v * T + t``, the grid sampler's output)
    with ``T == scene.num_frames``; its cameras are a path ``grid_K`` ``[V, 3, 3]``,
    ``grid_cam_to_world`` ``[V, 4, 4]`` made around the scene frame 0 camera (FourD Camera Path). A
    grid frame (v, t) gets the camera ``cam_to_world_scene[t] @ inv(path[0]) @ path[v]``: the path's
    offset applied to each frame's own camera (identical to ``path[v]`` for a static camera).

    Raises:
        InputError: no cameras, grid size or camera count mismatch.
    """
    if not scene.has_cameras:
        raise InputError("Fitting Gaussians needs cameras and depth: run FourD Recover Cameras first.")
    f, h, w = scene.num_frames, *scene.size
    th, tw = (h, w) if not resolution else ((round(h * resolution / max(h, w)), round(w * resolution / max(h, w))))
    th, tw = max(th, 4), max(tw, 4)
    sx, sy = tw / w, th / h
    images = [_resize(scene.rgb, th, tw)]
    K = [resize_camera(scene.K.float(), sx, sy)]
    c2w = [scene.cam_to_world.float()]
    times = [torch.arange(f)]
    views = [torch.zeros(f, dtype=torch.int64)]
    if grid is not None:
        if grid_K is None or grid_cam_to_world is None:
            raise InputError("A grid needs its camera path (connect FourD Camera Path's cameras).")
        v = int(grid_cam_to_world.shape[0])
        if grid.ndim != 4 or grid.shape[-1] != 3 or grid.shape[0] != v * f:
            raise InputError(f"The grid must hold views x frames = {v} x {f} = {v * f} images (row-major, as the "
                             f"grid sampler outputs) for {v} cameras and a {f}-frame scene; got "
                             f"{list(grid.shape)}.")
        gh, gw = grid.shape[1:3]
        rel = torch.linalg.inv(grid_cam_to_world[0].double()) @ grid_cam_to_world.double()  # [V, 4, 4]
        for vi in range(1, v):
            images.append(_resize(grid[vi * f:(vi + 1) * f], th, tw))
            K.append(resize_camera(grid_K[vi].float(), tw / gw, th / gh).expand(f, 3, 3))
            c2w.append((scene.cam_to_world.double() @ rel[vi]).float())
            times.append(torch.arange(f))
            views.append(torch.full((f,), vi, dtype=torch.int64))
    return Observations(torch.cat(images).clamp(0, 1), torch.cat(K), torch.cat(c2w), torch.cat(times), torch.cat(views))


def _scene_extent(scene) -> float:
    """Spatial learning-rate scale: the larger of the camera-centre spread (the reference's 1.1 x radius)
    and 10 % of the median depth (generated videos often barely move the camera)."""
    centres = scene.cam_to_world[:, :3, 3].double()
    radius = float((centres - centres.mean(0)).norm(dim=-1).max()) * 1.1
    depth = scene.depth[scene.depth > 0]
    med = float(depth.float().median()) if depth.numel() else 1.0
    return max(radius, 0.1 * med, 1e-6)


def _initial_gaussians(scene, cfg: FitConfig) -> Gaussians:
    f = scene.num_frames
    k = min(cfg.keyframes, f)
    frames = sorted({round(i * (f - 1) / max(k - 1, 1)) for i in range(k)})
    g4 = pixel_aligned_gaussians(scene, stride=cfg.init_stride, footprint=cfg.footprint, frames=frames)
    init = Gaussians.cat(g4.per_frame)
    if len(init) == 0:
        raise InputError("The scene has no valid pixels (depth/confidence) to start the Gaussians from.")
    return init


def fit_gaussians(scene, config: FitConfig | None = None, grid: torch.Tensor | None = None,
                  grid_K: torch.Tensor | None = None, grid_cam_to_world: torch.Tensor | None = None,
                  device: str | torch.device | None = None,
                  callback: Callable[[int, int, torch.Tensor | None], None] | None = None,
                  init: Gaussians | None = None) -> Gaussians4D:
    """Optimise deformable 4D Gaussians to the scene frames (+ grid views); see the module docstring.

    Args:
        scene: :class:`~fourd_core.scene.Scene4D` with cameras and depth (its RGB frames are the targets).
        config: :class:`FitConfig` (validated here, before any work).
        grid, grid_K, grid_cam_to_world: optional 4D grid (``[V*T, H', W', 3]`` row-major) and its camera
            path (see :func:`build_observations`).
        device: where to optimise (default: CUDA when available, else CPU).
        callback: ``callback(step, total, preview)`` after each step; ``preview`` is an ``[H, W, 3]`` render
            of frame 0 every ``preview_every`` steps, else None. Raise in it to cancel (nothing is kept).
        init: optional splats to start from (world frame of the scene's cameras) instead of the pixel-aligned
            splats of ``keyframes`` frames (``init_stride``, ``footprint``).

    Returns:
        :class:`Gaussians4D` (deformable) with the scene's cameras; ``metadata["fit"]`` holds the final
        loss, training PSNR, splat count and seconds per iteration.

    Warns:
        UserWarning: the scene's cameras are the low-confidence camera-frame fallback of a failed
            camera recovery (:func:`fourd_core.api.camera_frame_fallback`): the splats follow them.
    Raises:
        InputError: bad config, scene without cameras, mismatched grid, an empty or non-finite ``init``;
            gsplat requested but missing.

    Host memory the fit freed is handed back to the system when it ends
    (:func:`fourd_core.util.memory.release_freed_memory`), so repeated fits in one server do not grow it.
    """
    try:
        return _fit_gaussians(scene, config, grid, grid_K, grid_cam_to_world, device, callback, init)
    finally:
        release_freed_memory()


def fallback_cameras(scene) -> bool:
    """True when ``scene``'s cameras are the camera-frame fallback of a failed camera recovery
    (its metadata says so, or every confidence is 0)."""
    geometry = (scene.metadata or {}).get("geometry") or {}
    if geometry.get("fallback"):
        return True
    return scene.confidence is not None and scene.confidence.numel() > 0 and float(scene.confidence.max()) == 0.0


def _fit_gaussians(scene, config, grid, grid_K, grid_cam_to_world, device, callback, init=None) -> Gaussians4D:
    if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
        # hosts such as ComfyUI run nodes under torch.inference_mode(): fitting needs autograd, and
        # tensors created in inference mode cannot be saved for backward, so work on plain copies
        with torch.inference_mode(False), torch.enable_grad():
            fields = {f.name: getattr(scene, f.name) for f in dataclasses.fields(scene)}
            plain = type(scene)(**{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in fields.items()})
            return _fit_gaussians(plain, config, *(None if t is None else t.clone() for t in (grid, grid_K, grid_cam_to_world)),
                                  device, callback, None if init is None else Gaussians(*(getattr(init, f.name).clone() for f in dataclasses.fields(init))))
    cfg = config or FitConfig()
    cfg.validate()
    if init is not None:
        fields = (init.means, init.log_scales, init.quats, init.logit_opacities, init.sh0)
        if len(init) == 0 or not all(bool(torch.isfinite(t).all()) for t in fields):
            raise InputError("The splats to start the fit from are empty or hold NaN/inf values; connect other splats "
                             "or none (the fit then starts from the scene's pixels).")
    if fallback_cameras(scene):
        reason = ((scene.metadata or {}).get("geometry") or {}).get("fallback_reason", "")
        warnings.warn("The scene's cameras are a low-confidence fallback (camera recovery found no camera that explains "
                      f"its point maps{': ' + reason[:160] if reason else ''}); the fitted Gaussians follow those "
                      "cameras and may be meaningless. Fit a scene whose camera recovery succeeded.")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    backend_name, backend = resolve_rasterizer(cfg.backend, device)
    raster = backend.rasterize
    obs = build_observations(scene, grid, grid_K, grid_cam_to_world, cfg.resolution)
    extent = _scene_extent(scene)
    start = _initial_gaussians(scene, cfg) if init is None else init
    model = DeformableModel(start, scene.num_frames, obs.num_views, cfg, extent, device)
    images = obs.images.to(device)
    Ks, c2ws = obs.K.to(device), obs.cam_to_world.to(device)
    m, th, tw = images.shape[:3]
    gen = torch.Generator().manual_seed(int(cfg.seed))
    order: list[int] = []
    total = cfg.iterations
    d_from, d_until = int(cfg.densify_from * total), int(cfg.densify_until * total)
    accum = torch.zeros(len(model), device=device)
    denom = torch.zeros(len(model), device=device)
    bg = torch.zeros(3, device=device)
    t0 = time.perf_counter()
    last_loss = float("nan")
    for step in range(1, total + 1):
        frac = (step - 1) / max(total - 1, 1)
        lr = math.exp((1 - frac) * math.log(cfg.lr_means) + frac * math.log(cfg.lr_means_final)) * extent
        for group in model.opt.param_groups:
            if group["name"] == "means":
                group["lr"] = lr
        if not order:
            order = torch.randperm(m, generator=gen).tolist()
        i = order.pop()
        t, v = int(obs.time[i]), int(obs.view[i])
        p = model.params
        means = model.frame_means(t, v)
        out = raster(means, p["quats"], model.scales(), torch.sigmoid(p["logit_opacities"]),
                     (0.5 + 0.28209479177387814 * p["sh0"]).clamp_min(0), Ks[i], c2ws[i], th, tw, bg)
        m2d = out["means2d"]
        loss = photometric_loss(out["image"], images[i], cfg.ssim_weight)
        if "time_offsets" in p and cfg.time_smoothness > 0:
            off = p["time_offsets"]
            nb = [j for j in (t - 1, t + 1) if 0 <= j < off.shape[0]]
            loss = loss + cfg.time_smoothness * sum(((off[t] - off[j]) ** 2).sum(-1).mean() for j in nb) / extent ** 2
        if v > 0 and cfg.view_offset_weight > 0:
            loss = loss + cfg.view_offset_weight * (p["view_offsets"][v - 1] ** 2).sum(-1).mean() / extent ** 2
        loss.backward()
        last_loss = float(loss.detach())
        with torch.no_grad():
            if step <= d_until and m2d.grad is not None:
                g2 = m2d.grad.reshape(-1, 2) * torch.tensor([tw / 2.0, th / 2.0], device=device)
                vis = out["radii"].reshape(-1) > 0
                accum[vis] += g2[vis].norm(dim=-1)
                denom[vis] += 1
            model.opt.step()
            model.opt.zero_grad(set_to_none=True)
            if d_from <= step <= d_until and step % cfg.densify_every == 0:
                accum, denom = densify_and_prune(model, accum, denom, cfg, extent, gen)
            if cfg.opacity_reset_every and step % cfg.opacity_reset_every == 0 and step <= d_until:
                lo = torch.logit(torch.tensor(0.01))
                model.params["logit_opacities"].clamp_(max=float(lo))
        if callback is not None:
            preview = None
            if cfg.preview_every and (step % cfg.preview_every == 0 or step == total):
                with torch.no_grad():
                    preview = raster(model.frame_means(0, 0), p["quats"], model.scales(),
                                     torch.sigmoid(p["logit_opacities"]), (0.5 + 0.28209479177387814 * p["sh0"]).clamp_min(0),
                                     Ks[0], c2ws[0], th, tw, bg)["image"].clamp(0, 1).cpu()
            callback(step, total, preview)
    seconds = time.perf_counter() - t0
    g = model.gaussians().to("cpu")
    time_offsets = model.params.get("time_offsets")
    view_offsets = model.params.get("view_offsets")
    if view_offsets is not None:
        view_offsets = torch.cat([torch.zeros_like(view_offsets[:1]), view_offsets]).detach().cpu()
    train_psnr = _train_psnr(model, obs, raster, images, Ks, c2ws, bg)
    meta = {"kind": "fitted", "fit": {"iterations": total, "gaussians": len(g), "final_loss": last_loss,
                                      "train_psnr": train_psnr, "seconds": round(seconds, 3),
                                      "seconds_per_iteration": seconds / total, "backend": backend_name,
                                      "resolution": [th, tw], "views": obs.num_views, "isotropic": cfg.isotropic}}
    return Gaussians4D(canonical=g, time_offsets=None if time_offsets is None else time_offsets.detach().cpu(),
                       view_offsets=view_offsets, K=scene.K.float().cpu(), cam_to_world=scene.cam_to_world.float().cpu(),
                       height=scene.size[0], width=scene.size[1], fps=float(scene.metadata.get("fps", 24.0) or 24.0),
                       metadata=meta)


@torch.no_grad()
def _train_psnr(model, obs, raster, images, Ks, c2ws, bg, max_views: int = 8) -> float:
    p = model.params
    idx = torch.linspace(0, len(images) - 1, min(max_views, len(images))).round().long().unique().tolist()
    vals = []
    for i in idx:
        out = raster(model.frame_means(int(obs.time[i]), int(obs.view[i])), p["quats"], model.scales(),
                     torch.sigmoid(p["logit_opacities"]), (0.5 + 0.28209479177387814 * p["sh0"]).clamp_min(0),
                     Ks[i], c2ws[i], images.shape[1], images.shape[2], bg)
        vals.append(psnr(out["image"].clamp(0, 1), images[i]))
    return float(sum(vals) / len(vals))
