"""Pseudo-4D grids (4Real-Video Sec. 3.3 (1)): every cell equals an independent warp of its frame.

The independent warp is PIL's ``Image.transform(AFFINE, BILINEAR)`` on float ("F") images, with
its coefficients composed here in numpy from the drawn parameters (rotation, scale, shear,
translation) by the formula of the module docstring - not from the code's matrices.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fourd_core.errors import InputError
from fourd_core.training.data.clips import GridDataConfig
from fourd_core.training.data.pseudo_grid import (PseudoGridConfig, PseudoGridSource, make_pseudo_grid,
                                                  view_transforms)

TOL = 1e-4  # float32 bilinear vs PIL's float64 bilinear on values in [0, 1]


def _forward_matrix(angle_deg, scale, shear_deg, tx_px, ty_px, h, w):
    th, k = math.radians(angle_deg), math.radians(shear_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    m = scale * rot @ np.array([[1.0, math.tan(k)], [0.0, 1.0]])
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    a = np.eye(3)
    a[:2, :2] = m
    a[:2, 2] = c - m @ c + np.array([tx_px, ty_px])
    return a


def _pil_warp(image: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """PIL affine warp of a float image [H, W, C]: PIL maps output (x+.5, y+.5) to input coords."""
    h, w, _ = image.shape
    inv = np.linalg.inv(forward)
    lin, off = inv[:2, :2], inv[:2, 2]
    shift = off - lin @ np.array([0.5, 0.5]) + 0.5          # integer-centre -> PIL's +0.5 convention
    data = (lin[0, 0], lin[0, 1], shift[0], lin[1, 0], lin[1, 1], shift[1])
    out = [np.asarray(Image.fromarray(image[..., ch].astype(np.float32), mode="F").transform(
        (w, h), Image.AFFINE, data, resample=Image.BILINEAR)) for ch in range(image.shape[-1])]
    return np.stack(out, -1)


def _valid_and_margin(forward, h, w):
    inv = np.linalg.inv(forward)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    valid = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
    margin = np.minimum.reduce([np.abs(sx), np.abs(sx - (w - 1)), np.abs(sy), np.abs(sy - (h - 1))])
    far_out = (sx < -1) | (sx > w) | (sy < -1) | (sy > h)
    return valid, margin, far_out


def test_every_cell_equals_an_independent_pil_warp():
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(3, 40, 56, 3, generator=g)
    cfg = PseudoGridConfig(max_rotation_deg=12, max_scale=0.2, max_translation=0.1, max_shear_deg=6, seed=0)
    grid = make_pseudo_grid(clip, 5, cfg, seed=11)
    tf = grid.transforms
    assert grid.frames.shape == (5, 3, 40, 56, 3)
    assert torch.equal(grid.frames[0], clip)            # row 0 is the clip itself, bit-exact
    assert grid.valid[0].all()
    some_invalid = 0
    for v in range(5):
        fwd = _forward_matrix(float(tf.rotation_deg[v]), float(tf.scale[v]), float(tf.shear_deg[v]),
                              float(tf.tx[v]), float(tf.ty[v]), 40, 56)
        valid, margin, far_out = _valid_and_margin(fwd, 40, 56)
        got_valid = grid.valid[v].numpy()
        assert np.all((got_valid == valid) | (margin < 1e-6)), f"view {v}: validity differs"
        some_invalid += int((~valid).sum())
        for t in range(3):
            ref = _pil_warp(clip[t].numpy(), fwd)
            got = grid.frames[v, t].numpy()
            err = np.abs(got - ref)[valid]
            assert err.max() < TOL, f"cell ({v}, {t}): max error {err.max():.2e}"
            # pixels whose source is more than a pixel outside the frame hold the fill exactly
            assert np.allclose(got[far_out], cfg.fill, atol=1e-6)
        # column 0 = the first frame under the view transform (the freeze-time video)
        assert np.abs(grid.frames[v, 0].numpy() - _pil_warp(clip[0].numpy(), fwd))[valid].max() < TOL
    assert some_invalid > 0                               # the test exercised the mask


def test_transform_path_is_smooth_seeded_and_in_range():
    cfg = PseudoGridConfig(max_rotation_deg=10, max_scale=0.25, max_translation=0.1, max_shear_deg=5,
                           curvature=1.0)
    for seed in range(20):
        tf = view_transforms(8, 48, 64, cfg, seed)
        assert torch.allclose(tf.matrices[0], torch.eye(3, dtype=torch.float64), atol=1e-12)  # A_0 = identity
        for vals, r in ((tf.rotation_deg, 10), (tf.shear_deg, 5), (tf.tx / 64, 0.1), (tf.ty / 48, 0.1),
                        (tf.scale.log(), math.log(1.25))):
            assert vals[0] == 0 and vals.abs().max() <= r + 1e-12
            d = vals.diff()
            assert torch.all(d * vals[-1].sign() >= -1e-12)       # monotone towards the endpoint
            # smooth: no step exceeds twice the mean step (p(u) = e u (1 + b (1 - u)), |b| <= 1)
            assert d.abs().max() <= 2 * abs(float(vals[-1])) / 7 + 1e-12
    a = view_transforms(6, 32, 32, cfg, 5).matrices
    assert torch.equal(a, view_transforms(6, 32, 32, cfg, 5).matrices)
    assert not torch.allclose(a, view_transforms(6, 32, 32, cfg, 6).matrices)


def _write_clip(path, frames):
    import imageio.v2 as imageio

    path.mkdir(parents=True)
    for i, f in enumerate(frames):
        imageio.imwrite(path / f"{i:03d}.png", (f.numpy() * 255 + 0.5).astype(np.uint8))


def test_source_reads_clips_resized_and_seeded(tmp_path):
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(9, 40, 60, 3, generator=g)
    _write_clip(tmp_path / "clip_a", frames)
    (tmp_path / "clip_a.txt").write_text("a red ball\n")
    src = PseudoGridSource(tmp_path, GridDataConfig(views=3, frames=5, height=32, width=48, frame_stride=2),
                           PseudoGridConfig(seed=7))
    assert src.names() == ["clip_a"]
    s = src.read(0)
    assert s.frames.shape == (3, 5, 32, 48, 3) and s.prompt == "a red ball"
    # row 0 = frames 0, 2, 4, 6, 8 resized to cover 32x48 (40x60 -> 32x48: no crop), bilinear antialias
    q = torch.from_numpy((frames.numpy() * 255 + 0.5).astype(np.uint8)).float() / 255
    ref = torch.nn.functional.interpolate(q[::2].permute(0, 3, 1, 2), size=(32, 48), mode="bilinear",
                                          antialias=True, align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(s.frames[0], ref, atol=1e-6)
    assert torch.equal(src.read(0).frames, s.frames)  # reproducible


def test_source_bad_input(tmp_path):
    with pytest.raises(InputError, match="No videos"):
        PseudoGridSource(tmp_path)
    _write_clip(tmp_path / "short", torch.rand(4, 32, 32, 3))
    src = PseudoGridSource(tmp_path, GridDataConfig(views=2, frames=5, height=32, width=32))
    with pytest.raises(InputError, match="short: the clip has 4 frames but a grid of 5 frames"):
        src.read(0)
    with pytest.raises(InputError, match="multiple of 16"):
        PseudoGridSource(tmp_path, GridDataConfig(views=2, frames=5, height=40, width=32))
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    src = PseudoGridSource(tmp_path, GridDataConfig(views=2, frames=5, height=32, width=32))
    i = src.names().index("broken")
    with pytest.raises(InputError, match="broken: Could not read video .*corrupt"):
        src.read(i)
    with pytest.raises(InputError, match="max_rotation_deg"):
        PseudoGridConfig(max_rotation_deg=-1).validate()
