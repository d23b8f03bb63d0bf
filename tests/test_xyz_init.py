"""XYZ condition from a user depth map (pinhole back-projection + 4DNeX training normalisation)."""

from __future__ import annotations

import pytest
import torch

from fourd_core.errors import InputError
from fourd_core.pipelines.xyz_init import (XYZ_LATENT_MEAN, XYZ_LATENT_STD, denormalize_xyz_latents,
                                          normalize_xyz_latents, xyz_from_depth)


def test_xyz_from_depth_is_a_normalised_perspective_map():
    h, w = 20, 30
    i = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    depth = 2.0 + 0.05 * i  # a tilted plane
    xyz = xyz_from_depth(depth, fov_deg=60.0, percentile=0.0)
    assert xyz.shape == (h, w, 3) and xyz.abs().max() <= 1 + 1e-6
    half = (xyz.reshape(-1, 3).max(0).values - xyz.reshape(-1, 3).min(0).values) / 2
    assert half.max() == pytest.approx(1.0, abs=1e-5)  # one global scale: largest half-extent is 1
    mid = (xyz.reshape(-1, 3).max(0).values + xyz.reshape(-1, 3).min(0).values) / 2
    assert torch.allclose(mid, torch.zeros(3), atol=1e-5)  # bounding-box centred
    # perspective: x = (j - cx) / f * d, so along a column x scales with depth (x is centred at 0)
    j = 3
    assert torch.allclose(xyz[:, j, 0] / xyz[0, j, 0], depth[:, j] / depth[0, j], atol=1e-4)
    # z is affine in depth with the same scale as x: dz/dd == dx/dd / ((j - cx) / f)
    f = (w / 2) / torch.tan(torch.deg2rad(torch.tensor(30.0)))
    dz = (xyz[-1, j, 2] - xyz[0, j, 2]) / (depth[-1, j] - depth[0, j])
    dx = (xyz[-1, j, 0] - xyz[0, j, 0]) / (depth[-1, j] - depth[0, j])
    assert float(dx / dz) == pytest.approx(float((j - (w - 1) / 2) / f), rel=1e-4)


@pytest.mark.parametrize("bad,msg", [(torch.full((8, 8), float("nan")), "NaN"), (-torch.ones(8, 8), "positive"),
                                     (torch.ones(8, 8), "constant"), (torch.ones(2, 8, 8), r"\[H, W\]")])
def test_xyz_from_depth_rejects_bad_maps(bad, msg):
    with pytest.raises(InputError, match=msg):
        xyz_from_depth(bad)


def test_latent_normalisation_constants_round_trip():
    z = torch.randn(2, 16, 3, 4, 5)
    assert torch.allclose(normalize_xyz_latents(z), (z + 0.13) / 1.70)
    assert torch.allclose(denormalize_xyz_latents(normalize_xyz_latents(z)), z, atol=1e-6)
    assert (XYZ_LATENT_MEAN, XYZ_LATENT_STD) == (-0.13, 1.70)
