"""Latent caches of the tiny preset for the trainer tests: a grid cache (pseudo-4D grids of 4 synthetic clips,
3 views x 5 frames at 32 x 48) and a 4DNeX cache (3 synthetic scenes, 5 frames at 32 x 48)."""

from __future__ import annotations

import dataclasses

import imageio.v2 as imageio
import numpy as np
import pytest

GRID_SIZE = dict(views=3, frames=5, height=32, width=48)


def write_clips(folder, n, frames=5, h=32, w=48, bad=()):
    """``n`` clips of numbered PNG frames with a caption each (smooth moving patterns); the indices in ``bad``
    are written as corrupt ``clip<k>.mp4`` files instead."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    for k in range(n):
        if k in bad:
            (folder / f"clip{k}.mp4").write_bytes(b"definitely not a video" * 8)
            continue
        d = folder / f"clip{k}"
        d.mkdir()
        for t in range(frames):
            f = np.stack([(x + 0.1 * t + 0.3 * k) % 1, y, 0.5 + 0.3 * np.sin(4 * x * (k + 1) + t)], -1)
            imageio.imwrite(d / f"{t:03d}.png", (f * 255 + 0.5).astype(np.uint8))
        (folder / f"clip{k}.txt").write_text(f"clip number {k}")
    return folder


def write_scenes(folder, n, frames=5, h=32, w=48):
    from fourd_core.testing.synthetic_scene import write_pointmap_scenes

    return write_pointmap_scenes(folder, n, frames, h, w)


@pytest.fixture(scope="session")
def grid_cache(tmp_path_factory, tiny_pipe):
    from fourd_core.training.data import (CacheConfig, CacheEncoders, GridDataConfig, PseudoGridConfig,
                                          PseudoGridSource, prepare)

    root = tmp_path_factory.mktemp("grid_cache")
    src = PseudoGridSource(write_clips(root / "videos", 4), GridDataConfig(**GRID_SIZE), PseudoGridConfig(seed=1))
    prepare(src, root / "cache", CacheEncoders(tiny_pipe, "cpu"), CacheConfig(latent="mode"), rank=0, world_size=1,
            log=lambda m: None)
    return root / "cache"


@pytest.fixture(scope="session")
def xyz_cache(tmp_path_factory, tiny_pipe):
    from fourd_core.training.data import CacheConfig, CacheEncoders, FourDNeXDataConfig, SceneSource, prepare

    root = tmp_path_factory.mktemp("xyz_cache")
    src = SceneSource(write_scenes(root / "scenes", 3), FourDNeXDataConfig(height=32, width=48, num_frames=5))
    prepare(src, root / "cache", CacheEncoders(tiny_pipe, "cpu"), CacheConfig(latent="mode"), rank=0, world_size=1,
            log=lambda m: None)
    return root / "cache"


@pytest.fixture
def capture_build(monkeypatch):
    """Record what :func:`fourd_core.training.runner.build` builds during a run: ``{"pipe", "obj"}``."""
    from fourd_core.training import runner

    built = {}
    real = runner.build

    def capture(cfg, device):
        built["pipe"], built["obj"] = real(cfg, device)
        built["frozen"] = {n: p.detach().clone() for n, p in built["obj"].named_parameters() if not p.requires_grad}
        built["trained0"] = {n: p.detach().clone() for n, p in built["obj"].named_parameters() if p.requires_grad}
        return built["pipe"], built["obj"]

    monkeypatch.setattr(runner, "build", capture)
    return built


@pytest.fixture
def make_cfg(tiny_base, grid_cache, xyz_cache, tmp_path):
    """``make_cfg(objective, **changes)``: a small, fast TrainConfig on the tiny base and the matching cache."""
    from fourd_core.training.config import TrainConfig

    def make(objective="sync", **changes):
        base = dict(objective=objective, cache=str(xyz_cache if objective == "lora" else grid_cache),
                    out=str(tmp_path / f"run_{objective}"), base=str(tiny_base), steps=4, warmup=1, lr=1e-3,
                    lora_rank=4, lora_alpha=8.0, validate_every=0, preview_steps=0, checkpoint_every=100,
                    log_every=1, validation_fraction=0.0)
        return dataclasses.replace(TrainConfig(**base), **changes)

    return make
