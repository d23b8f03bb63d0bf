"""Multi-view video folders and the grid folders this pack writes (4Real-Video Sec. 3.3 (2))."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from fourd_core.errors import InputError
from fourd_core.pipelines.grid_canvas import grid_to_batch
from fourd_core.training.data.clips import GridDataConfig
from fourd_core.training.data.multiview import MultiViewSource, read_grid_folder, write_grid_sample


def _levels(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).float() / 255  # exact 8-bit values


def _write_frames(folder, frames):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        imageio.imwrite(folder / f"{i}.png", (f.numpy() * 255 + 0.5).astype(np.uint8))


def test_written_grid_reads_back_exactly_with_cameras(tmp_path):
    frames = _levels((3, 5, 32, 48, 3))
    K = torch.tensor([[40.0, 0, 23.5], [0, 40.0, 15.5], [0, 0, 1]]).expand(3, 3, 3).clone()
    c2w = torch.eye(4).expand(3, 4, 4).clone()
    c2w[:, 0, 3] = torch.tensor([0.0, 0.1, 0.2])
    write_grid_sample(tmp_path / "data" / "s1", frames, prompt="a dancer", K=K, cam_to_world=c2w)
    # the row-major IMAGE batch of the grid nodes, written through views=
    write_grid_sample(tmp_path / "data" / "s2", grid_to_batch(frames), views=3)
    src = MultiViewSource(tmp_path / "data", GridDataConfig(views=3, frames=5, height=32, width=48))
    assert src.names() == ["s1", "s2"]
    a, b = src.read(0), src.read(1)
    assert torch.equal(a.frames, frames) and torch.equal(b.frames, frames)
    assert a.prompt == "a dancer" and b.prompt == ""
    assert torch.allclose(a.K, K) and torch.allclose(a.cam_to_world, c2w)
    meta = json.loads((tmp_path / "data" / "s1" / "grid.json").read_text())
    assert meta["views"] == 3 and meta["frames"] == 5
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_hand_built_folders_views_in_numeric_order_and_batch_layout(tmp_path):
    frames = _levels((11, 5, 32, 32, 3), seed=1)
    for k in range(11):
        _write_frames(tmp_path / "views" / f"view_{k}", frames[k])     # view_10 sorts after view_9
    (tmp_path / "views" / "prompt.txt").write_text("clouds\n")
    s = read_grid_folder(tmp_path / "views", GridDataConfig(views=11, frames=5, height=32, width=32))
    assert torch.equal(s.frames, frames) and s.prompt == "clouds" and s.valid is None
    # stride 2 over 9 frames, first 2 views only
    long = _levels((2, 9, 32, 32, 3), seed=2)
    _write_frames(tmp_path / "batch" / "grid", grid_to_batch(long))
    (tmp_path / "batch" / "grid.json").write_text(json.dumps({"views": 2}))
    s = read_grid_folder(tmp_path / "batch", GridDataConfig(views=2, frames=5, height=32, width=32, frame_stride=2))
    assert torch.equal(s.frames, long[:, ::2])
    # known pixels as the sampler is given them: row 0 and column 0
    known = s.known()
    assert known[0].all() and known[1, 0].all() and not known[1, 1:].any()


def test_mp4_views_round_trip_approximately(tmp_path):
    y, x = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 48), indexing="ij")
    frames = torch.stack([torch.stack([(x + 0.1 * t) % 1, y, 0.5 + 0 * x], -1) for t in range(5)])
    grid = torch.stack([frames, frames.flip(2)])
    write_grid_sample(tmp_path / "g", grid, image_format="mp4")
    s = read_grid_folder(tmp_path / "g", GridDataConfig(views=2, frames=5, height=32, width=48))
    assert (s.frames - grid).abs().mean() < 0.03


def test_multiview_bad_input(tmp_path):
    cfg = GridDataConfig(views=2, frames=5, height=32, width=32)
    with pytest.raises(InputError, match="No multi-view sample folders"):
        MultiViewSource(tmp_path, cfg)
    frames = _levels((3, 5, 32, 32, 3))
    _write_frames(tmp_path / "gap" / "view_0", frames[0])
    _write_frames(tmp_path / "gap" / "view_2", frames[2])
    with pytest.raises(InputError, match=r"gap: views \[1\] are missing"):
        read_grid_folder(tmp_path / "gap", cfg)
    _write_frames(tmp_path / "short" / "view_0", frames[0, :3])
    _write_frames(tmp_path / "short" / "view_1", frames[1, :3])
    with pytest.raises(InputError, match="short: View 0 .* has 3 frames; frames 0..4 are needed"):
        read_grid_folder(tmp_path / "short", cfg)
    with pytest.raises(InputError, match="has 2 views but the grid needs 3"):
        read_grid_folder(tmp_path / "short", GridDataConfig(views=3, frames=5, height=32, width=32))
    _write_frames(tmp_path / "sizes" / "view_0", frames[0])
    _write_frames(tmp_path / "sizes" / "view_1", torch.rand(5, 48, 32, 3))
    with pytest.raises(InputError, match="different frame sizes"):
        read_grid_folder(tmp_path / "sizes", cfg)
    (tmp_path / "corrupt").mkdir()
    _write_frames(tmp_path / "corrupt" / "view_0", frames[0])
    (tmp_path / "corrupt" / "view_1.mp4").write_bytes(b"not a video at all" * 20)
    with pytest.raises(InputError, match="corrupt: Could not read view 1 .*corrupt"):
        read_grid_folder(tmp_path / "corrupt", cfg)
    (tmp_path / "nometa").mkdir()
    _write_frames(tmp_path / "nometa" / "grid", frames.reshape(15, 32, 32, 3))
    (tmp_path / "nometa" / "grid.json").write_text("{}")
    with pytest.raises(InputError, match="must give its number of views"):
        read_grid_folder(tmp_path / "nometa", cfg)
    write_grid_sample(tmp_path / "cams", frames[:2])
    (tmp_path / "cams" / "cameras.json").write_text(json.dumps(
        {"frames": [{"K": np.eye(3).tolist(), "cam_to_world": np.eye(4).tolist()}] * 3}))
    with pytest.raises(InputError, match="has 3 cameras; expected one per view"):
        read_grid_folder(tmp_path / "cams", cfg)
    with pytest.raises(InputError, match="multiple of 16"):
        MultiViewSource(tmp_path, GridDataConfig(views=2, frames=5, height=30, width=32))
    with pytest.raises(InputError, match="4k\\+1"):
        MultiViewSource(tmp_path, GridDataConfig(views=2, frames=6, height=32, width=32))


def test_open_source_layouts_and_sampler_inputs(tmp_path):
    from fourd_core.training.data import LAYOUTS, MultiViewSource, PseudoGridSource, open_source

    frames = _levels((2, 5, 32, 32, 3))
    write_grid_sample(tmp_path / "mv" / "a", frames)
    _write_frames(tmp_path / "videos" / "clip", frames[0])
    cfg = GridDataConfig(views=2, frames=5, height=32, width=32)
    assert isinstance(open_source("multiview", tmp_path / "mv", grid=cfg), MultiViewSource)
    src = open_source("videos", tmp_path / "videos", grid=cfg)
    assert isinstance(src, PseudoGridSource) and set(LAYOUTS) == {"videos", "multiview", "4dnex10m", "rgbd", "scenes"}
    g = src.read(0)
    fixed, freeze, holes = g.sampler_inputs()
    assert torch.equal(fixed, frames[0]) and torch.equal(freeze[1], g.frames[1, 0])
    assert torch.equal(holes, (~g.valid).float())
    with pytest.raises(InputError, match="Unknown data layout 'video'"):
        open_source("video", tmp_path)
