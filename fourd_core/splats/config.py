"""Settings of the deformable 4D Gaussian fit (:func:`fourd_core.splats.fit.fit_gaussians`), in a room of
their own so the fit and its model (:mod:`.model`) both import them without importing each other."""

from __future__ import annotations

import dataclasses

from ..errors import InputError
from ..settings import MIN_CONFIDENCE, setting, validate

#: the training resolution of the CLI's ``gaussians --fit`` and of FourD Fit 4D Gaussians (interactive fits)
INTERACTIVE_RESOLUTION = 256


def _rasterizer_names():
    from .rasterize import rasterizer_names

    return rasterizer_names()

__all__ = ["FitConfig", "PixelSplatConfig"]


@dataclasses.dataclass
class PixelSplatConfig:
    """Settings of the pixel-aligned splats (:func:`fourd_core.splats.gaussians.pixel_aligned_gaussians`)."""

    stride: int = setting(1, help="keep every n-th pixel in both directions (2 = a quarter of the splats, each twice "
                          "as large)", low=1, high=64, integer=True, node_high=16)
    footprint: float = setting(0.4, help="splat standard deviation in pixels of its own frame (larger closes gaps in "
                               "other views, smaller keeps the frame sharp)", low=1e-3, high=64.0, node_low=0.05,
                               node_high=4.0, step=0.05)
    min_confidence: float = setting(0.0, **MIN_CONFIDENCE)


@dataclasses.dataclass
class FitConfig:
    """Settings of :func:`fit_gaussians` (defaults: the 3DGS reference's, scaled to short fits).

    Attributes:
        iterations: optimisation steps (one image each).
        resolution: longest image side used for training (0 = the scene's size).
        init_stride: pixel stride of the pixel-aligned initialisation (2 = a quarter of the pixels).
        keyframes: how many evenly spaced frames seed the canonical set.
        footprint: initial splat size in pixels (see :func:`pixel_aligned_gaussians`).
        ssim_weight: lambda of the loss.
        lr_*: Adam learning rates (``lr_means``/``lr_offsets`` are multiplied by the scene extent).
        view_offset_weight, time_smoothness: weights of the offset penalties (relative to extent^2).
        densify_from, densify_until: fractions of ``iterations`` between which density control runs.
        densify_every: steps between density-control passes. grad_threshold: NDC positional gradient.
        percent_dense: splats larger than this fraction of the extent are split, smaller ones cloned.
        prune_opacity: opacity below which splats are removed. max_gaussians: no densification past it.
        opacity_reset_every: steps between opacity resets to 0.01 (0 = off; reference: 3000).
        isotropic: spherical splats (4Real-Video's choice against artefacts in far views).
        backend: rasteriser, ``auto`` (gsplat on CUDA when importable), ``torch`` or ``gsplat``.
        seed: seeds the view order and splits. preview_every: steps between preview renders.
    """

    iterations: int = setting(2000, help="optimisation steps (one image each; CPU: ~0.05-0.5 s each at 128 px)", low=1,
                              high=10_000_000, integer=True, node_high=100_000)
    resolution: int = setting(0, help="longest image side used for training (0 = the scene's full size)", low=0,
                              high=16384, integer=True, node_high=4096, step=8)
    init_stride: int = setting(2, help="pixel stride of the pixel-aligned start (per keyframe)", low=1, high=64,
                               integer=True, node_high=16)
    keyframes: int = 3
    footprint: float = 0.5
    ssim_weight: float = 0.2
    lr_means: float = 1e-3
    lr_means_final: float = 1e-5
    lr_offsets: float = 2e-3
    lr_sh0: float = 0.0025
    lr_opacity: float = 0.05
    lr_scales: float = 0.005
    lr_quats: float = 0.001
    view_offset_weight: float = 100.0
    time_smoothness: float = 1.0
    densify_from: float = 0.1
    densify_until: float = 0.6
    densify_every: int = 100
    grad_threshold: float = 2e-4
    percent_dense: float = 0.01
    prune_opacity: float = 0.005
    max_gaussians: int = 2_000_000
    opacity_reset_every: int = 0
    isotropic: bool = setting(False, help="spherical splats (4Real-Video's choice: fewer artefacts far from the "
                              "training views)")
    backend: str = setting("auto", help="rasteriser (auto: gsplat on CUDA when installed, else torch)",
                           choices=_rasterizer_names)
    seed: int = setting(0, help="seeds the view order and the splits", low=0, high=2**31 - 1, integer=True)
    preview_every: int = 50

    def validate(self) -> None:
        """Raise :class:`InputError` naming a bad setting."""
        validate(self)
        if self.resolution < 0 or (0 < self.resolution < 8):
            raise InputError(f"resolution must be 0 (scene size) or >= 8 pixels; got {self.resolution}.")
        if self.init_stride < 1 or self.keyframes < 1 or self.densify_every < 1:
            raise InputError("init_stride, keyframes and densify_every must be >= 1.")
        if not 0 <= self.ssim_weight <= 1:
            raise InputError(f"ssim_weight must be in [0, 1]; got {self.ssim_weight}.")
