"""Gaussian splats from 4D scenes and grids (3DGS, Kerbl et al. 2023; 4Real-Video supp. Sec. 6).

* :mod:`.gaussians` - the 3DGS parameterisation, :class:`Gaussians4D` (the ``GAUSSIANS`` value) and
  instant pixel-aligned splats from a scene;
* :mod:`.rasterize` - a pure-torch differentiable rasteriser (CPU/GPU), gsplat when importable on CUDA;
* :mod:`.config` - the fit's settings (:class:`~fourd_core.splats.config.FitConfig`);
* :mod:`.fit` - deformable 4D Gaussians fitted to the scene frames and a 4D grid's views
  (4Real-Video supplement Sec. 6, Eq. 11);
* :mod:`.ply` - the standard 3DGS PLY (float32, log-scales, logit opacity, SH degree 0);
* :mod:`.orbit` - orbit renders of splats (previews, README picture).
"""

from .gaussians import Gaussians, Gaussians4D, pixel_aligned_gaussians
from .ply import read_gaussians_ply, write_gaussians_ply, write_gaussians_sequence
from .rasterize import render_gaussians

__all__ = [
           "Gaussians",
           "Gaussians4D",
           "pixel_aligned_gaussians",
           "read_gaussians_ply",
           "render_gaussians",
           "write_gaussians_ply",
           "write_gaussians_sequence",
]
