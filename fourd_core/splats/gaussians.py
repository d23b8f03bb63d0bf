"""Gaussian splats: the 3DGS parameterisation, a 4D (per-frame) container and pixel-aligned splats.

Parameterisation (Kerbl et al. 2023, "3D Gaussian Splatting", Sec. 4, and its reference PLY layout):
a splat has a mean ``mu`` (world units), a rotation quaternion ``q`` (w, x, y, z; normalised on use),
log-scales ``s`` (the standard deviations are ``exp(s)``), a logit opacity (``sigmoid`` gives the
opacity in (0, 1)) and degree-0 spherical-harmonics colour coefficients ``f_dc`` (colour
``0.5 + SH_C0 * f_dc``, clamped at 0). Covariance ``Sigma = R S S^T R^T``.

Conventions: OpenCV camera axes, ``K`` in pixels with pixel (row i, column j) centred at (u, v) = (j, i),
``cam_to_world`` [4, 4] (the ones of :mod:`fourd_core.geometry.render`).
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import InputError
from ..settings import check
from .config import PixelSplatConfig

SH_C0 = 0.28209479177387814
"""Degree-0 real spherical-harmonics constant ``1 / (2 sqrt(pi))``."""

__all__ = ["SH_C0", "Gaussians", "Gaussians4D", "pixel_aligned_gaussians", "rgb_to_sh0", "sh0_to_rgb"]


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """Colours in [0, 1] ``[..., 3]`` -> degree-0 SH coefficients ``(rgb - 0.5) / SH_C0``."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """Degree-0 SH coefficients -> colours ``max(0, 0.5 + SH_C0 * sh0)`` (3DGS reference, no upper clamp)."""
    return (0.5 + SH_C0 * sh0).clamp_min(0.0)


@dataclasses.dataclass
class Gaussians:
    """A set of N 3D Gaussians (float32 tensors on one device).

    Attributes:
        means: ``[N, 3]`` world positions.
        log_scales: ``[N, 3]`` natural-log standard deviations along the rotated axes.
        quats: ``[N, 4]`` rotation quaternions (w, x, y, z), not necessarily normalised.
        logit_opacities: ``[N]`` opacity logits.
        sh0: ``[N, 3]`` degree-0 SH coefficients (``f_dc_0..2`` in the PLY).
    """

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    logit_opacities: torch.Tensor
    sh0: torch.Tensor

    def __post_init__(self):
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        want = {"means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "logit_opacities": (n,), "sh0": (n, 3)}
        for name, shape in want.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise InputError(f"Gaussians.{name} must have shape {list(shape)} (N = len(means)); got {got}.")

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def scales(self) -> torch.Tensor:
        """``[N, 3]`` standard deviations ``exp(log_scales)``."""
        return self.log_scales.exp()

    @property
    def opacities(self) -> torch.Tensor:
        """``[N]`` opacities ``sigmoid(logit_opacities)``."""
        return torch.sigmoid(self.logit_opacities)

    @property
    def colors(self) -> torch.Tensor:
        """``[N, 3]`` RGB from the degree-0 SH coefficients."""
        return sh0_to_rgb(self.sh0)

    @classmethod
    def from_values(cls, means: torch.Tensor, colors: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                    quats: torch.Tensor | None = None) -> Gaussians:
        """Build from linear values: colours in [0, 1] ``[N, 3]``, scales ``[N]`` (isotropic) or ``[N, 3]``
        (> 0), opacities ``[N]`` in (0, 1) (clamped to [1e-4, 1 - 1e-4]), quats ``[N, 4]`` (default identity)."""
        n = means.shape[0]
        scales = scales.float()
        if scales.ndim == 1:
            scales = scales[:, None].expand(n, 3)
        if quats is None:
            quats = torch.zeros(n, 4, device=means.device)
            quats[:, 0] = 1
        op = opacities.float().clamp(1e-4, 1 - 1e-4)
        return cls(means.float().contiguous(), scales.clamp_min(1e-12).log().contiguous(), quats.float().contiguous(),
                   torch.logit(op).contiguous(), rgb_to_sh0(colors.float()).contiguous())

    def subset(self, index: torch.Tensor) -> Gaussians:
        """The splats selected by a bool mask or an index tensor."""
        return Gaussians(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    def to(self, device=None, dtype=None) -> Gaussians:
        return Gaussians(*(getattr(self, f.name).to(device=device, dtype=dtype) for f in dataclasses.fields(self)))

    def detach(self) -> Gaussians:
        return Gaussians(*(getattr(self, f.name).detach() for f in dataclasses.fields(self)))

    @staticmethod
    def cat(items: list[Gaussians]) -> Gaussians:
        return Gaussians(*(torch.cat([getattr(g, f.name) for g in items]) for f in dataclasses.fields(Gaussians)))

    def translated(self, offsets: torch.Tensor) -> Gaussians:
        """The same splats with ``means + offsets`` (``[N, 3]``)."""
        return dataclasses.replace(self, means=self.means + offsets)


@dataclasses.dataclass
class Gaussians4D:
    """Gaussian splats over time: the pack's ``GAUSSIANS`` value.

    Either ``per_frame`` (independent sets, e.g. pixel-aligned splats, one per frame) or a deformable
    set (4Real-Video supplement Sec. 6): ``canonical`` splats, ``time_offsets`` ``[T, N, 3]`` (the
    temporal deformation ``dp^t``) and optionally ``view_offsets`` ``[V, N, 3]`` (the per-view
    deformation ``dp^v`` that absorbs the inconsistencies of generated views; view 0 is the scene's own
    camera and has zero offset). Frame ``t`` seen from view ``v`` has means
    ``canonical.means + time_offsets[t] + view_offsets[v]`` (Eq. 11); exports use view 0.

    Attributes:
        K: ``[T, 3, 3]`` intrinsics of the frames' cameras (pixels), or None.
        cam_to_world: ``[T, 4, 4]`` OpenCV cam-to-world of the frames, or None.
        height, width: image size of those cameras.
        metadata: JSON-serialisable dict (how the splats were made, fit metrics...).
    """

    per_frame: list[Gaussians] | None = None
    canonical: Gaussians | None = None
    time_offsets: torch.Tensor | None = None
    view_offsets: torch.Tensor | None = None
    K: torch.Tensor | None = None
    cam_to_world: torch.Tensor | None = None
    height: int = 0
    width: int = 0
    fps: float = 24.0
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if (self.per_frame is None) == (self.canonical is None):
            raise InputError("Gaussians4D needs either per_frame sets or a canonical set (not both).")
        if self.canonical is not None:
            n = len(self.canonical)
            if self.time_offsets is not None and (self.time_offsets.ndim != 3 or self.time_offsets.shape[1:] != (n, 3)):
                raise InputError(f"time_offsets must be [T, {n}, 3]; got {list(self.time_offsets.shape)}.")
            if self.view_offsets is not None and (self.view_offsets.ndim != 3 or self.view_offsets.shape[1:] != (n, 3)):
                raise InputError(f"view_offsets must be [V, {n}, 3]; got {list(self.view_offsets.shape)}.")

    @property
    def num_frames(self) -> int:
        if self.per_frame is not None:
            return len(self.per_frame)
        return 1 if self.time_offsets is None else int(self.time_offsets.shape[0])

    @property
    def is_deformable(self) -> bool:
        return self.canonical is not None

    def frame(self, t: int, view: int = 0) -> Gaussians:
        """The splats of frame ``t`` (seen from grid view ``view``; 0 = the scene's cameras).

        Raises:
            InputError: ``t`` or ``view`` out of range.
        """
        if not 0 <= t < self.num_frames:
            raise InputError(f"Frame {t} does not exist: these splats have {self.num_frames} frames.")
        if self.per_frame is not None:
            return self.per_frame[t]
        g = self.canonical
        off = torch.zeros_like(g.means)
        if self.time_offsets is not None:
            off = off + self.time_offsets[t]
        if view:
            if self.view_offsets is None or not 0 <= view < self.view_offsets.shape[0]:
                raise InputError(f"View {view} does not exist in these splats.")
            off = off + self.view_offsets[view]
        return g.translated(off)

    def counts(self) -> list[int]:
        """Number of splats per frame."""
        if self.per_frame is not None:
            return [len(g) for g in self.per_frame]
        return [len(self.canonical)] * self.num_frames


def _pixel_grid(h: int, w: int, stride: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(stride // 2, h, stride, device=device)
    cols = torch.arange(stride // 2, w, stride, device=device)
    return rows, cols


def pixel_aligned_gaussians(scene, stride: int = 1, footprint: float = 0.4, min_confidence: float = 0.0,
                            frames: list[int] | None = None, default_opacity: float = 0.99,
                            min_opacity: float = 0.01) -> Gaussians4D:
    """One isotropic Gaussian per kept pixel at its world point (no optimisation).

    For pixel (i, j) of frame f with depth ``d`` and focal length ``fx, fy``: mean = the unprojected
    world point ``R d K^-1 [j, i, 1]^T + t``; colour = the pixel's RGB (SH degree 0); standard deviation
    ``footprint * stride * d / sqrt(fx fy)`` (the pixel footprint at that depth, so the splat covers its
    pixel from the frame's own camera); opacity = the pixel's confidence clamped to [0.01, 0.99]
    (``default_opacity`` when the scene has none). The feed-forward Gaussian head of 4Real-Video-V2 and
    Splatt3R/pixelSplat predict such pixel-aligned splats; here they come straight from the point map.

    Args:
        scene: a :class:`~fourd_core.scene.Scene4D` with cameras and depth.
        stride: keep every ``stride``-th pixel in both directions (1 = all; the scale grows with it).
        footprint: standard deviation in pixels of one splat seen from its own camera.
        min_confidence: drop pixels below this confidence (0 keeps every pixel with a positive finite depth,
            including confidence-0 ones, e.g. a camera-frame fallback scene).
        min_opacity: lower bound of the opacity (the fit starts from 0.1, as the 3DGS reference does).
        frames: frame indices (default: all).

    Returns:
        :class:`Gaussians4D` with ``per_frame`` sets and the scene's cameras.

    Raises:
        InputError: the scene has no cameras/depth, bad stride/footprint/min_confidence
            (:class:`~fourd_core.splats.config.PixelSplatConfig`) or frame indices.
    """
    if not scene.has_cameras:
        raise InputError("Pixel-aligned splats need cameras and depth: put FourD Recover Cameras (or the CLI's "
                         "geometry step) before this.")
    stride = int(check(PixelSplatConfig, "stride", stride))
    footprint = float(check(PixelSplatConfig, "footprint", footprint))
    check(PixelSplatConfig, "min_confidence", min_confidence)
    f_all, h, w = scene.num_frames, *scene.size
    frames = list(range(f_all)) if frames is None else [int(i) for i in frames]
    if any(not 0 <= i < f_all for i in frames):
        raise InputError(f"frames must be in 0..{f_all - 1}; got {frames}.")
    rows, cols = _pixel_grid(h, w, stride, scene.depth.device)
    out = []
    for i in frames:
        pts = scene.points(i)[rows][:, cols].reshape(-1, 3).float()
        rgb = scene.rgb[i][rows][:, cols].reshape(-1, 3).float().clamp(0, 1)
        d = scene.depth[i][rows][:, cols].reshape(-1).float()
        if scene.confidence is not None:
            conf = scene.confidence[i][rows][:, cols].reshape(-1).float()
        else:
            conf = torch.full_like(d, default_opacity)
        keep = torch.isfinite(pts).all(-1) & torch.isfinite(d) & (d > 0) & (conf >= min_confidence)
        focal = (scene.K[i, 0, 0].float() * scene.K[i, 1, 1].float()).abs().sqrt()
        sigma = footprint * stride * d[keep] / focal
        out.append(Gaussians.from_values(pts[keep], rgb[keep], sigma, conf[keep].clamp(min_opacity, 0.99)))
    return Gaussians4D(per_frame=out, K=scene.K[frames].float(), cam_to_world=scene.cam_to_world[frames].float(),
                       height=h, width=w, fps=float(scene.metadata.get("fps", 24.0) or 24.0),
                       metadata={"kind": "pixel_aligned", "stride": stride, "footprint": footprint,
                                 "frames": frames})
