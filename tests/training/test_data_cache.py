"""The latent cache (prepare) and its datasets, on the tiny preset (CPU).

The cached tensors are checked against the samplers' own code paths, which this cache must match:
the grid sampler's ``encode_rows`` and ``_clip``-style CLIP calls, the 4DNeX pipeline's
``prepare_latents`` condition and mask, diffusers' ``encode_prompt`` and ``encode_image``.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from fourd_core.errors import InputError
from fourd_core.pipelines.xyz_init import XYZ_LATENT_MEAN, XYZ_LATENT_STD
from fourd_core.pipelines.fourdnex import PROMPT_SUFFIX, to_pil
from fourd_core.pipelines.grid import encode_rows
from fourd_core.scene import Scene4D
from fourd_core.training.data.cache import CacheConfig, CacheEncoders, prepare
from fourd_core.training.data.clips import FourDNeXDataConfig, GridDataConfig, SampleSource
from fourd_core.training.data.datasets import (FourDNeXLatentDataset, GridLatentDataset, collate_latent_samples,
                                               open_latent_dataset)
from fourd_core.training.data.pseudo_grid import PseudoGridConfig, PseudoGridSource
from fourd_core.training.data.rgbd import SceneSource

from conftest import write_clips

GRID = GridDataConfig(views=3, frames=5, height=32, width=48)


def _no_models():
    raise AssertionError("models were loaded")


def test_grid_cache_matches_the_grid_sampler(tmp_path, tiny_pipe):
    src = PseudoGridSource(write_clips(tmp_path / "videos", 2), GRID, PseudoGridConfig(max_rotation_deg=15, seed=3))
    enc = CacheEncoders(tiny_pipe, "cpu")
    rep = prepare(src, tmp_path / "cache", enc, CacheConfig(latent="mode"), rank=0, world_size=1, log=lambda m: None)
    assert (rep.written, rep.skipped, rep.bad) == (2, 0, [])
    ds = GridLatentDataset(tmp_path / "cache")
    assert ds.names == ["clip0", "clip1"]
    s = ds[1]
    clip = src.read(1)
    known = clip.known()
    with torch.no_grad():
        video = clip.frames.permute(0, 4, 1, 2, 3) * 2 - 1
        ref_lat = encode_rows(tiny_pipe, video)
        ref_cond = encode_rows(tiny_pipe, video * known[:, None])
    assert s.latents.shape == (3, 16, 2, 4, 6)
    assert torch.allclose(s.latents, ref_lat, atol=1e-5) and torch.allclose(s.condition, ref_cond, atol=1e-5)
    # masks by hand: row 0 known; column 0 known where its 8x8 patch is valid; the rest unknown
    patch_valid = clip.valid.float().reshape(3, 4, 8, 6, 8).amin(dim=(2, 4))       # [V, h, w]
    assert s.mask[0].eq(1).all() and s.mask[1:, :, 1:].eq(0).all()
    assert torch.equal(s.mask[1:, :, 0], patch_valid[1:, None].expand(2, 4, 4, 6))
    assert torch.equal(s.valid, patch_valid[:, None].expand(3, 2, 4, 6)) and (s.valid[1:] == 0).any()
    assert s.known[0].all() and not s.known[1:].any()          # column 0 has warped-in holes here
    with torch.no_grad():
        rows = tiny_pipe.encode_image([to_pil(im) for im in clip.frames[:, 0]], "cpu")
        cols = tiny_pipe.encode_image([to_pil(clip.frames[0, 0]), to_pil(clip.frames[0, 4])], "cpu")
        text, _ = tiny_pipe.encode_prompt("clip number 1", do_classifier_free_guidance=False,
                                          max_sequence_length=512, device="cpu")
        empty, _ = tiny_pipe.encode_prompt("", do_classifier_free_guidance=False, max_sequence_length=512, device="cpu")
    assert torch.allclose(s.clip_rows, rows, atol=1e-6) and torch.allclose(s.clip_cols, cols, atol=1e-6)
    assert torch.allclose(s.text_embeds, text[0], atol=1e-6) and s.text_embeds.shape == (512, 32)
    assert s.text_embeds[s.text_tokens:].eq(0).all() and s.text_embeds[s.text_tokens - 1].ne(0).any()
    assert torch.allclose(ds.empty_text()[0], empty[0], atol=1e-6)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_latent_samples)))
    assert batch.latents.shape == (2, 3, 16, 2, 4, 6) and batch.name == ["clip0", "clip1"]
    assert batch.text_tokens.shape == (2,) and batch.known.dtype == torch.bool


def test_posterior_sample_is_seeded_per_sample(tmp_path, tiny_pipe):
    from fourd_core.pipelines.decode import vae_latent_stats
    from fourd_core.training.data.frames import seed_for

    src = PseudoGridSource(write_clips(tmp_path / "videos", 1), GridDataConfig(views=2, frames=5, height=32, width=48))
    enc = CacheEncoders(tiny_pipe, "cpu")
    for d in ("a", "b"):
        prepare(src, tmp_path / d, enc, CacheConfig(latent="sample", seed=5), rank=0, world_size=1, log=lambda m: None)
    a, b = GridLatentDataset(tmp_path / "a")[0], GridLatentDataset(tmp_path / "b")[0]
    assert torch.equal(a.latents, b.latents)
    gen = torch.Generator().manual_seed(seed_for(5, "clip0"))
    clip = src.read(0)
    with torch.no_grad():
        for v in range(2):
            dist = tiny_pipe.vae.encode((clip.frames[v].permute(3, 0, 1, 2)[None] * 2 - 1)).latent_dist
            z = dist.sample(gen)
            mean, inv = vae_latent_stats(tiny_pipe.vae, z)
            assert torch.allclose(a.latents[v], ((z - mean) * inv)[0], atol=1e-5)
            assert not torch.allclose(a.latents[v], ((dist.mode() - mean) * inv)[0], atol=1e-3)


def _scene(path, seed, frames=5, h=32, w=48, prompt="a scene"):
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    xyz = torch.stack([x, y, 0.5 + 0.2 * torch.sin(3 * x + seed)], -1).expand(frames, h, w, 3).clone()
    xyz += 0.01 * torch.rand(frames, h, w, 3, generator=g)
    rgb = torch.rand(frames, h, w, 3, generator=g)
    Scene4D(rgb=rgb, xyz=xyz.clamp(0, 1), metadata={"prompt": prompt}).save(path)


def test_fourdnex_cache_matches_the_inference_pipeline(tmp_path, tiny_pipe):
    from fourd_core.pipelines.decode import vae_latent_stats

    _scene(tmp_path / "scenes" / "s0" / "scene.safetensors", 0, prompt="a red cube")
    cfg = FourDNeXDataConfig(height=32, width=48, num_frames=5)
    src = SceneSource(tmp_path / "scenes", cfg)
    prepare(src, tmp_path / "cache", CacheEncoders(tiny_pipe, "cpu"), CacheConfig(latent="mode"), rank=0,
            world_size=1, log=lambda m: None)
    ds = open_latent_dataset(tmp_path / "cache")
    assert isinstance(ds, FourDNeXLatentDataset)
    s = ds[0]
    clip = src.read(0)
    assert s.prompt == "a red cube" + PROMPT_SUFFIX
    with torch.no_grad():
        def enc(x):
            z = tiny_pipe.vae.encode(x.permute(3, 0, 1, 2)[None]).latent_dist.mode()
            m, inv = vae_latent_stats(tiny_pipe.vae, z)
            return ((z - m) * inv)[0]
        rgb, xyz = enc(clip.rgb * 2 - 1), enc(clip.xyz)
        target = torch.cat([rgb, (xyz - XYZ_LATENT_MEAN) / XYZ_LATENT_STD], dim=-1)
        # the inference pipeline's own condition and mask for the 8-bit first frame
        image = torch.floor(clip.rgb[0] * 255) / 255
        _, cond = tiny_pipe.prepare_latents(image.permute(2, 0, 1)[None] * 2 - 1, 1, 16, 32, 48, 5,
                                            torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
        clip_ref = tiny_pipe.encode_image(to_pil(image), "cpu")
        text, _ = tiny_pipe.encode_prompt("a red cube" + PROMPT_SUFFIX, do_classifier_free_guidance=False,
                                          max_sequence_length=512, device="cpu")
    assert s.target.shape == (16, 2, 4, 12)
    assert torch.allclose(s.target, target, atol=1e-5)
    assert torch.allclose(s.condition, cond[0, 4:], atol=1e-5) and torch.equal(s.mask, cond[0, :4])
    assert torch.allclose(s.clip, clip_ref[0], atol=1e-6) and torch.allclose(s.text_embeds, text[0], atol=1e-6)
    assert torch.allclose(s.image, image, atol=1e-6)
    with pytest.raises(InputError, match="is a 'fourdnex' cache"):
        GridLatentDataset(tmp_path / "cache")


def test_prepare_is_resumable_split_over_ranks_and_atomic(tmp_path, tiny_pipe, monkeypatch):
    src = PseudoGridSource(write_clips(tmp_path / "videos", 3), GridDataConfig(views=2, frames=5, height=32, width=48))
    enc = CacheEncoders(tiny_pipe, "cpu")
    cache = tmp_path / "cache"
    r0 = prepare(src, cache, enc, rank=0, world_size=2, log=lambda m: None)
    assert r0.written == 2 and sorted(p.stem for p in (cache / "samples").glob("*.safetensors")) == ["clip0", "clip2"]
    # a killed rank 1: the write of its sample dies half way (atomic: no partial file is left)
    import safetensors.torch as st

    real = st.save_file

    def dies(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, cache, enc, rank=1, world_size=2, log=lambda m: None)
    monkeypatch.setattr(st, "save_file", real)
    assert not (cache / "samples" / "clip1.safetensors").exists()
    assert not [p for p in (cache / "samples").iterdir() if p.name.startswith(".")]
    # a SIGKILLed process' temporary (dead pid) is cleaned by the next run
    stale = cache / "samples" / ".fourd-tmp-999999999-clip1.x.tmp.safetensors"
    stale.write_bytes(b"junk")
    mtimes = {p.name: p.stat().st_mtime_ns for p in (cache / "samples").glob("clip*.safetensors")}
    r = prepare(src, cache, enc, rank=0, world_size=1, log=lambda m: None)
    assert (r.written, r.skipped) == (1, 2) and not stale.exists()
    assert all((cache / "samples" / n).stat().st_mtime_ns == m for n, m in mtimes.items())
    # everything finished: a third run skips all and never loads a model
    r = prepare(src, cache, _no_models, rank=0, world_size=1, log=lambda m: None)
    assert (r.written, r.skipped) == (0, 3)
    # a damaged finished file is recomputed
    p = cache / "samples" / "clip2.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    r = prepare(src, cache, enc, rank=0, world_size=1, log=lambda m: None)
    assert (r.written, r.skipped) == (1, 2) and len(GridLatentDataset(cache)) == 3
    reports = sorted(p.name for p in (cache / "reports").iterdir())
    assert reports == ["prepare-rank00000-of-00001.json", "prepare-rank00000-of-00002.json"]
    # other settings: refused, naming them
    with pytest.raises(InputError, match="other settings .*cache.latent"):
        prepare(src, cache, enc, CacheConfig(latent="mode"), rank=0, world_size=1, log=lambda m: None)


def test_bad_samples_are_named_and_counted_and_all_bad_loads_nothing(tmp_path, tiny_pipe):
    # all bad: corrupt videos and a clip shorter than the grid -> error before any model, nothing written
    vids = write_clips(tmp_path / "bad", 3, bad=(0, 1))
    (vids / "clip2").rename(vids / "clip2_long")
    for f in sorted((vids / "clip2_long").iterdir())[3:]:
        f.unlink()
    src = PseudoGridSource(vids, GridDataConfig(views=2, frames=5, height=32, width=48))
    with pytest.raises(InputError, match=r"None of the samples could be read \(3 bad\): clip0: Could not read video"):
        prepare(src, tmp_path / "out" / "cache", _no_models, rank=0, world_size=1, log=lambda m: None)
    assert not (tmp_path / "out").exists()
    # one good among bad ones: the bad are reported by name, the good one is cached
    good = write_clips(tmp_path / "mixed", 2, bad=(1,))
    src = PseudoGridSource(good, GridDataConfig(views=2, frames=5, height=32, width=48))
    logs = []
    rep = prepare(src, tmp_path / "cache", lambda: CacheEncoders(tiny_pipe, "cpu"), rank=0, world_size=1, log=logs.append)
    assert rep.written == 1 and [b["name"] for b in rep.bad] == ["clip1"]
    assert any("bad sample (1): clip1: Could not read video" in m for m in logs)
    report = json.loads((tmp_path / "cache" / "reports" / "prepare-rank00000-of-00001.json").read_text())
    assert report["bad"][0]["name"] == "clip1" and GridLatentDataset(tmp_path / "cache").names == ["clip0"]
    # an empty dataset, a missing cache, a bad config
    class Empty(SampleSource):
        kind = "grid"

    with pytest.raises(InputError, match="empty"):
        prepare(Empty(), tmp_path / "c2", _no_models, rank=0, world_size=1)
    with pytest.raises(InputError, match="No latent cache"):
        GridLatentDataset(tmp_path / "nowhere")
    with pytest.raises(InputError, match="latent must be"):
        prepare(src, tmp_path / "c3", _no_models, CacheConfig(latent="mean"), rank=0, world_size=1)
    with pytest.raises(InputError, match="rank must be in"):
        prepare(src, tmp_path / "c3", _no_models, rank=2, world_size=2)
    assert not (tmp_path / "c2").exists() and not (tmp_path / "c3").exists()
    # a damaged sample file is named when read, never swapped
    p = tmp_path / "cache" / "samples" / "clip0.safetensors"
    p.write_bytes(p.read_bytes()[:64])
    with pytest.raises(InputError, match="Cached sample clip0 cannot be read"):
        GridLatentDataset(tmp_path / "cache")[0]
    assert os.environ.get("RANK") is None  # nothing here ran distributed


def test_unwritable_cache_folder_is_refused_before_reading(tmp_path):
    src = PseudoGridSource(write_clips(tmp_path / "videos", 1), GridDataConfig(views=2, frames=5, height=32, width=48))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        prepare(src, tmp_path / "afile" / "cache", _no_models, rank=0, world_size=1)
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        try:
            with pytest.raises(InputError, match="not writable"):
                prepare(src, tmp_path / "ro" / "cache", _no_models, rank=0, world_size=1)
        finally:
            (tmp_path / "ro").chmod(0o755)
