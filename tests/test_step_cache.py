"""Step caches on the diffusers path (diffusers' own hooks, fourd_core.models.step_cache) with the 4DNeX
patches: the domain embeddings and the shared RoPE are applied in every DiT evaluation, a skipped
evaluation runs no block beyond what the cache documents, a zero value reproduces the uncached run
exactly, and the caches that cannot work are refused with their reason."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from fourd_core.errors import InputError
from fourd_core.models.step_cache import (CACHE_NAMES, STEP_CACHES, USABLE_CACHES, cache_help, resolve_cache,
                                         step_cache_enabled)
from fourd_core.pipelines.fourdnex import SamplingConfig, generate_latents

STEPS = 8
CFG = dict(num_frames=5, height=32, width=48, steps=STEPS, seed=3)


@pytest.fixture(scope="module")
def image():
    return torch.rand(32, 48, 3, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def uncached(tiny_pipe, image):
    return generate_latents(tiny_pipe, image, "a street", SamplingConfig(**CFG))


class Probe:
    """Independent instrumentation of one sampling: per DiT evaluation (one transformer call),
    whether the domain embeddings were added to the raw patch embedding, whether the RoPE tables
    of the two width halves coincide, and which blocks' attention / feed-forward ran."""

    def __init__(self, tr):
        self.tr, self.evals, self.handles = tr, [], []
        emb = tr.learnable_domain_embeddings.detach()

        def on_forward(module, args, kwargs):  # one DiT evaluation starts
            self.evals.append({"embeddings": None, "rope": None, "blocks": set()})

        def on_patch(module, args, output):
            raw = F.conv3d(args[0], module.weight, module.bias, module.stride)
            half = raw.shape[-1] // 2
            want = torch.cat([raw[..., :half] + emb[0].view(1, -1, 1, 1, 1), raw[..., half:] + emb[1].view(1, -1, 1, 1, 1)], -1)
            self.evals[-1]["embeddings"] = torch.allclose(output, want, atol=1e-5) and not torch.allclose(output, raw)

        def on_rope(module, args, output):
            cos = output[0].reshape(args[0].shape[2], args[0].shape[3] // 2, args[0].shape[4] // 2, -1)
            w = cos.shape[2]
            self.evals[-1]["rope"] = bool(tr._fourdnex_enabled) and torch.equal(cos[:, :, : w // 2], cos[:, :, w // 2:])

        self.handles.append(tr.register_forward_pre_hook(on_forward, with_kwargs=True))
        self.handles.append(tr.patch_embedding.register_forward_hook(on_patch))
        self.handles.append(tr.rope.register_forward_hook(on_rope))
        for i, block in enumerate(tr.blocks):
            for sub in (block.attn1, block.attn2, block.ffn):
                self.handles.append(sub.register_forward_hook(lambda m, a, o, i=i: self.evals[-1]["blocks"].add(i)))

    def remove(self):
        for h in self.handles:
            h.remove()


def _sample(pipe, image, cache, value):
    probe = Probe(pipe.transformer)
    try:
        out = generate_latents(pipe, image, "a street", SamplingConfig(**CFG, cache=cache, cache_value=value))
    finally:
        probe.remove()
    return out, probe.evals


@pytest.mark.parametrize("cache, value, skipped_blocks", [
    ("first_block", 1e9, {1}),        # block 0 decides; blocks 1..L-1 skipped after each pass's first step
    ("taylorseer", 1, {0, 1}),        # after 3 warm-up steps every other step extrapolated, no block runs
])
def test_patches_apply_in_every_evaluation_and_skipped_ones_run_no_blocks(tiny_pipe, image, uncached, cache, value,
                                                                           skipped_blocks):
    out, evals = _sample(tiny_pipe, image, cache, value)
    blocks = set(range(len(tiny_pipe.transformer.blocks)))
    assert len(evals) == 2 * STEPS  # CFG: cond and uncond per step, every one an evaluation
    assert all(e["embeddings"] and e["rope"] for e in evals), evals
    computed = [e for e in evals if e["blocks"] == blocks]
    skipped = [e for e in evals if e["blocks"] != blocks]
    assert all(e["blocks"] == blocks - skipped_blocks for e in skipped), evals
    if cache == "first_block":
        assert len(computed) == 2 and evals[0] in computed and evals[1] in computed  # step 1 of each pass
    else:  # steps 1-3 full, then steps 4, 6, 8 extrapolated and 5, 7 full (per pass)
        assert len(skipped) == 2 * 3 and all(e in computed for e in evals[:6])
    assert not torch.equal(out, uncached)  # the cache changed the result: it really skipped


@pytest.mark.parametrize("cache", [c for c in USABLE_CACHES if c != "none"])
def test_zero_value_equals_the_uncached_run(tiny_pipe, image, uncached, cache):
    out, evals = _sample(tiny_pipe, image, cache, 0.0)
    blocks = set(range(len(tiny_pipe.transformer.blocks)))
    assert all(e["blocks"] == blocks for e in evals) and len(evals) == 2 * STEPS
    torch.testing.assert_close(out, uncached, rtol=0, atol=0)


def test_the_cache_is_removed_after_sampling_also_on_errors(tiny_pipe, image):
    tr = tiny_pipe.transformer

    def boom(step, total, latents):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        generate_latents(tiny_pipe, image, "x", SamplingConfig(**CFG, cache="first_block"), callback=boom)
    assert tr._cache_config is None
    with step_cache_enabled(tr, "first_block") as stats:
        assert tr._cache_config.threshold == STEP_CACHES["first_block"].default
        with pytest.raises(InputError, match="already enabled"):
            with step_cache_enabled(tr, "taylorseer"):
                pass
    assert tr._cache_config is None and stats.evaluations == 0


@pytest.mark.parametrize("name", [n for n, c in STEP_CACHES.items() if c.refused])
def test_refused_caches_say_why(name):
    with pytest.raises(InputError, match="refused: ") as info:
        resolve_cache(name)
    assert STEP_CACHES[name].refused in str(info.value) and "first_block or taylorseer" in str(info.value)
    with pytest.raises(InputError, match="refused"):
        SamplingConfig(cache=name).validate()


def test_bad_names_and_values():
    with pytest.raises(InputError, match="Unknown step cache 'teacache'"):
        resolve_cache("teacache")
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(InputError, match="finite number >= 0"):
            resolve_cache("first_block", bad)
    assert resolve_cache("none", 5.0)[1] is None and resolve_cache("taylorseer")[1] == 4


def test_cli_reads_the_table_and_refuses_before_loading(capsys, tmp_path):
    """`generate --cache` offers every name of the table; a refused one exits 2 with its reason
    before any model loads; --cache with --parallel is refused too."""
    from fourd_core import cli

    parser = cli.build_parser()
    action = next(a for a in parser._subparsers._group_actions[0].choices["generate"]._actions if a.dest == "cache")
    assert tuple(action.choices) == CACHE_NAMES and "Refused here" in action.help
    img = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (48, 32)).save(img)
    code = cli.main(["generate", "--preset", "tiny", "--image", str(img), "--prompt", "x", "--out", str(tmp_path / "o"),
                     "--cache", "pab", "--cache-dir", str(tmp_path / "never")])
    assert code == 2 and "one attention state per layer" in capsys.readouterr().err
    assert not (tmp_path / "never").exists() and not (tmp_path / "o").exists()  # nothing loaded or written
    from fourd_core.job import SceneJob

    args = parser.parse_args(["generate", "--preset", "tiny", "--image", str(img), "--prompt", "x", "--out", "o",
                              "--cache", "first_block", "--cache-value", "0.1"])
    job = SceneJob(cli.generate_config(args))
    assert (job.sampling.cache, job.sampling.cache_value) == ("first_block", 0.1)
    code = cli.main(["generate", "--preset", "tiny", "--image", str(img), "--prompt", "x", "--out", str(tmp_path / "p"),
                     "--cache", "first_block", "--parallel", "cfg=2", "--cache-dir", str(tmp_path / "never")])
    assert code == 2 and "--parallel" in capsys.readouterr().err
    assert not (tmp_path / "never").exists() and not (tmp_path / "p").exists()


def test_grid_samplers_refuse_an_enabled_cache(tiny_pipe):
    from fourd_core.pipelines.grid import make_engine

    with step_cache_enabled(tiny_pipe.transformer, "first_block"):
        for mode in ("hard", "fused", "rows"):
            with pytest.raises(InputError, match="two-stream grid runs every block twice"):
                make_engine(tiny_pipe.transformer, mode)
    make_engine(tiny_pipe.transformer, "hard")  # no cache: fine


def test_sampler_node_reads_the_table_and_passes_the_cache_on(monkeypatch, tmp_path_factory):
    """FourD 4DNeX Sampler's cache combo is the table's usable names, its tooltip the shared help text, and
    the node hands cache / cache_value (-1: the cache's default) to the sampling config."""
    import sys

    import test_nodes

    fake = test_nodes.FakeComfy(tmp_path_factory.mktemp("comfyui"))
    for k, v in fake.modules.items():
        monkeypatch.setitem(sys.modules, k, v)
    pack = test_nodes.import_pack("ComfyUI_FourD_cache_test")
    node = pack.NODE_CLASS_MAPPINGS["FourDSampler"]
    choices, opts = node.INPUT_TYPES()["optional"]["cache"]
    assert choices == list(USABLE_CACHES) and opts["tooltip"].endswith(cache_help())
    sampling = sys.modules[pack.__name__ + ".nodes.sampling"]
    seen = []
    monkeypatch.setattr(sampling, "get_pipeline", lambda model: (object(), {}))
    monkeypatch.setattr(sampling, "generate_latents", lambda pipe, img, prompt, cfg, **kw: seen.append(cfg) or
                        torch.zeros(1, 16, 2, 4, 12))
    for value, expected in ((-1.0, None), (0.3, 0.3)):
        node().sample(model=None, image=torch.rand(1, 32, 48, 3), prompt="x", seed=1, steps=2, cfg=5.0, shift=3.0,
                      scheduler="unipc", frames=5, cache="first_block", cache_value=value)
        assert (seen[-1].cache, seen[-1].cache_value) == ("first_block", expected)
    for key in [k for k in sys.modules if k.startswith("ComfyUI_FourD_cache_test")]:
        del sys.modules[key]

