"""Core ComfyUI EasyCache / LazyCache (comfy_extras/nodes_easycache.py) on a MODEL patched by FourD Apply
4DNeX (native) and by FourD Grid Model (native), sampled with the core sampler on the tiny weights:
the 4DNeX patches (shared-RoPE forward, block-0 domain embeddings) apply in every evaluation that
reaches the DiT, an evaluation the cache skips runs no block, and a zero threshold gives the
uncached latents exactly. EasyCache of a ComfyUI before 0.3.70 (it caches the I2V condition channels)
is refused with its reason."""

from __future__ import annotations

import pytest
import torch

from comfy_fixtures import comfy, pack  # noqa: F401  (fixtures)

H, W, FRAMES, STEPS = 32, 32, 5, 8
V, LAT_T, LAT_H, LAT_W = 3, 2, 4, 6


@pytest.fixture(scope="module")
def files(comfy, tmp_path_factory):
    from fourd_core.native.tiny_wan import save_native_tiny

    return save_native_tiny(tmp_path_factory.mktemp("cache_tiny"))


def _cache_node(kind: str):
    import comfy_extras.nodes_easycache as ec

    return {"EasyCache": ec.EasyCacheNode, "LazyCache": ec.LazyCacheNode}[kind]


def easycache_refused(kind: str) -> bool:
    """EasyCache before ComfyUI 0.3.70 (no ``output_channels``) is refused on I2V models (fourd_core.native.caches)."""
    import comfy_extras.nodes_easycache as ec

    return kind == "EasyCache" and not hasattr(ec.EasyCacheHolder(0.1, 0.0, 1.0, 8, False), "output_channels")


def with_cache(model, kind, threshold):
    """The core node's own ``execute`` (what the graph runs): a clone with the cache's wrappers."""
    return _cache_node(kind).execute(model, threshold, 0.15, 0.95, False).result[0]


class Counter:
    """Per denoiser evaluation the sampler asks for (an outermost PREDICT_NOISE wrapper, installed on the
    stock MODEL before any FourD or cache node; LazyCache skips at that level, EasyCache inside the
    DiT call): how many blocks ran, and how many times the 4DNeX shared RoPE and domain embeddings
    were applied (the pack's own functions, counted)."""

    def __init__(self, comfy, pack, model, monkeypatch):
        from comfy.patcher_extension import WrappersMP

        self.evals = []
        dm = model.model.diffusion_model
        self.blocks_run = 0
        self.handles = [b.register_forward_hook(self._on_block) for b in dm.blocks]
        patches = pack.nodes.native.patches
        self.applied = {"rope": 0, "domain": 0}
        for name, key in (("shared_rope", "rope"), ("add_domain_embeddings", "domain")):
            fn = getattr(patches, name)

            def counted(*a, _fn=fn, _key=key, **k):
                self.applied[_key] += 1
                return _fn(*a, **k)

            monkeypatch.setattr(patches, name, counted)
        self.model = model.clone()
        self.model.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, "test_counter", self._wrapper)

    def _on_block(self, module, args, output):
        self.blocks_run += 1

    def _wrapper(self, executor, *args, **kwargs):
        before = (self.blocks_run, dict(self.applied))
        out = executor(*args, **kwargs)
        self.evals.append({"blocks": self.blocks_run - before[0],
                           **{k: self.applied[k] - before[1][k] for k in self.applied}})
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


def _fourdnex_inputs(pack, files):
    from fourd_core.native.tiny_wan import TinyWanVAE

    g = torch.Generator().manual_seed(11)
    image = torch.rand(1, H, W, 3, generator=g)
    text, neg = torch.randn(1, 512, 4096, generator=g) * 0.5, torch.randn(1, 512, 4096, generator=g) * 0.5
    cvo = pack.nodes.native.demo_standins.clip_vision_output(torch.randn(1, 257, 1280, generator=g))
    pos, negc, latent = pack.NODE_CLASS_MAPPINGS["FourD4DNeXConditioningNative"]().encode(
        [[text, {}]], [[neg, {}]], TinyWanVAE(0), cvo, image, FRAMES, 1)
    return pos, negc, latent["samples"]


def _sample(comfy, model, pos, neg, latent, seed=5):
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, STEPS, 5.0, "euler", "simple", pos, neg, latent, denoise=1.0,
                                   disable_pbar=True, seed=seed).clone()


def _fourdnex_model(comfy, pack, files, counter_factory=None):
    from fourd_core.native.tiny_wan import TINY_MODEL_NAME, TINY_RELEASE_NAME

    stock = comfy.sd.load_diffusion_model(str(files / "diffusion_models" / TINY_MODEL_NAME))
    counter = counter_factory(stock) if counter_factory else None
    base = counter.model if counter else stock
    patched = pack.NODE_CLASS_MAPPINGS["FourDApply4DNeXNative"]().apply(
        base, str(files / "loras" / TINY_RELEASE_NAME), "(beside the LoRA)", 1.0)[0]
    return patched, counter


@pytest.mark.parametrize("kind", ["EasyCache", "LazyCache"])
def test_cache_on_native_4dnex_skips_whole_evaluations_and_keeps_the_patches(comfy, pack, files, monkeypatch, kind):
    patched, counter = _fourdnex_model(comfy, pack, files, lambda m: Counter(comfy, pack, m, monkeypatch))
    n_blocks = len(patched.model.diffusion_model.blocks)
    pos, neg, latent = _fourdnex_inputs(pack, files)
    try:
        if easycache_refused(kind):
            with pytest.raises(Exception, match="before 0.3.70"):
                _sample(comfy, with_cache(patched, kind, 3.0), pos, neg, latent)
            return
        _sample(comfy, with_cache(patched, kind, 3.0), pos, neg, latent)
    finally:
        counter.remove()
    evals = counter.evals
    computed = [e for e in evals if e["blocks"]]
    skipped = [e for e in evals if not e["blocks"]]
    print(f"{kind} on FourD Apply 4DNeX (native): {len(skipped)} of {len(evals)} evaluations skipped")
    assert len(evals) == STEPS and skipped and computed  # the threshold made it skip, but not everything
    # one DiT call per step (core batches the cond and uncond passes): every block once, both patches once
    assert all(e == {"blocks": n_blocks, "rope": 1, "domain": 1} for e in computed), evals
    assert all(e == {"blocks": 0, "rope": 0, "domain": 0} for e in skipped), evals


@pytest.mark.parametrize("kind", ["EasyCache", "LazyCache"])
def test_zero_threshold_equals_uncached_native_4dnex(comfy, pack, files, kind):
    patched, _ = _fourdnex_model(comfy, pack, files)
    pos, neg, latent = _fourdnex_inputs(pack, files)
    ref = _sample(comfy, patched, pos, neg, latent)
    if easycache_refused(kind):
        with pytest.raises(Exception, match="Update ComfyUI to 0.3.70 or later, or use LazyCache"):
            _sample(comfy, with_cache(patched, kind, 0.0), pos, neg, latent)
        return
    out = _sample(comfy, with_cache(patched, kind, 0.0), pos, neg, latent)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def _grid_inputs(pack):
    g = torch.Generator().manual_seed(7)
    cond_raw = torch.randn(V, 16, LAT_T, LAT_H, LAT_W, generator=g) * 2
    known = torch.zeros(V, 4, LAT_T, LAT_H, LAT_W)
    known[0] = 1.0
    text, neg = torch.randn(1, 512, 4096, generator=g) * 0.5, torch.randn(1, 512, 4096, generator=g) * 0.5
    values = {"concat_latent_image": cond_raw, "concat_mask": 1 - known,
              "clip_vision_output": pack.nodes.native.demo_standins.clip_vision_output(torch.randn(V, 257, 1280, generator=g))}
    return [[text, dict(values)]], [[neg, dict(values)]], torch.zeros(V, 16, LAT_T, LAT_H, LAT_W)


@pytest.mark.parametrize("kind", ["EasyCache", "LazyCache"])
@pytest.mark.parametrize("mode", ["soft_avg", "fused"])
def test_cache_on_native_grid_model(comfy, pack, files, kind, mode):
    """The grid's two streams (block replaces running every block twice) and its fused attention sit
    inside the DiT forward the cache skips as a whole: skipped evaluations run no block (the row and
    column streams never diverge), a zero threshold equals the uncached grid."""
    from fourd_core.native.tiny_wan import TINY_MODEL_NAME

    stock = comfy.sd.load_diffusion_model(str(files / "diffusion_models" / TINY_MODEL_NAME))
    calls = {"n": 0}
    handle = stock.model.diffusion_model.blocks[0].register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        grid = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]().patch(stock, V, mode)[0]
        pos, neg, latent = _grid_inputs(pack)
        if easycache_refused(kind):
            with pytest.raises(Exception, match="before 0.3.70"):
                _sample(comfy, with_cache(grid, kind, 3.0), pos, neg, latent)
            return
        ref = _sample(comfy, grid, pos, neg, latent)
        uncached_calls, calls["n"] = calls["n"], 0
        out = _sample(comfy, with_cache(grid, kind, 0.0), pos, neg, latent)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        calls["n"] = 0
        cached = _sample(comfy, with_cache(grid, kind, 3.0), pos, neg, latent)
    finally:
        handle.remove()
    per_step = uncached_calls // STEPS   # block-0 calls per step: per DiT call, twice with two streams
    assert uncached_calls == STEPS * per_step and per_step >= (2 if mode == "soft_avg" else 1)
    assert 0 < calls["n"] < uncached_calls and calls["n"] % per_step == 0  # whole steps skipped, both streams
    assert torch.isfinite(cached).all() and not torch.equal(cached, ref)
