"""4D grid sampling (4Real-Video two-stream sync, 4Real-Video-V2 fused attention) on the tiny Wan.

Expectations are built independently of the code under test: column layouts by explicit loops,
block updates by calling the stock ``WanTransformerBlock.forward`` (which bypasses the hooks),
sync formulas written out from the papers' equations, masks enumerated pair by pair, known frames
against the stock VAE's own round trip.
"""

from __future__ import annotations

import math

import pytest
import torch

from fourd_core.errors import CancelledError, InputError, WeightsError
from fourd_core.kernels.fused import fused_dense_mask, fused_mask_mod
from fourd_core.models.grid_fused import FusedEngine, fused_rope
from fourd_core.models.grid_streams import TwoStreamEngine
from fourd_core.models.sync import GridSync, load_sync_weights, save_sync_weights, sync_metadata
from fourd_core.pipelines import grid as G
from fourd_core.pipelines import grid_canvas as C
from fourd_core.pipelines.grid import make_engine

V, T, HL, WL = 3, 2, 4, 6          # views, latent times, latent height/width of the block-level tests
S = (HL // 2) * (WL // 2)          # tokens per frame
N_IMG = 5                          # CLIP tokens of the tiny image encoder (28 px / 14 -> 4 patches + cls)


# ----------------------------------------------------------------------------------------------
# fixtures
@pytest.fixture(scope="module")
def stock_tr(tiny_root):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(tiny_root / "base", subfolder="transformer").eval()


@pytest.fixture(scope="module")
def lora_pipe(tiny_root):
    """The tiny preset with the 4DNeX LoRA as an *unfused* adapter (how the grid shares the model)."""
    from fourd_core.models.loading import ModelSpec
    from fourd_core.pipelines.assemble import load_pipeline
    from fourd_core.models.memory import MemoryConfig

    pipe, _ = load_pipeline(ModelSpec(base=str(tiny_root / "base"), fourdnex=str(tiny_root / "lora"), dtype="float32",
                                      fuse_lora=False), MemoryConfig(device="cpu"))
    return pipe


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(V, 36, T, HL, WL, generator=g), t=torch.tensor([600.0]),
                text=torch.randn(1, 512, 32, generator=g), clip=torch.randn(V, N_IMG, 32, generator=g),
                col_clip=torch.randn(T, N_IMG, 32, generator=g))


def _stock_forward(tr, inp):
    return tr(hidden_states=inp["x"], timestep=inp["t"].expand(V), encoder_hidden_states=inp["text"].expand(V, -1, -1),
              encoder_hidden_states_image=inp["clip"], return_dict=False)[0]


def _cols(x):
    """[V, T*S, D] -> [T, V*S, D] by explicit loops."""
    return torch.stack([torch.cat([x[v, tau * S:(tau + 1) * S] for v in range(V)]) for tau in range(T)])


def _rows(y):
    """[T, V*S, D] -> [V, T*S, D] by explicit loops."""
    return torch.stack([torch.cat([y[tau, v * S:(v + 1) * S] for tau in range(T)]) for v in range(V)])


def _run_recorded(tr, engine, inp):
    """Run the hooked forward; record (block index, row args, block output after sync) of every block call,
    and every column-stream run of a block (its self-attention sees T sequences of V frames)."""
    recs, col_calls = [], []
    with engine.installed():
        handles = []
        for i, b in enumerate(tr.blocks):
            def rec(m, a, o, i=i):
                recs.append((i, a, o))

            def rec_col(m, a, kw, o, i=i):      # the cross-attention sees the context of the call
                hidden = kw.get("hidden_states", a[0] if a else None)
                if hidden.shape[0] == T and hidden.shape[1] == V * S:
                    col_calls.append((i, kw.get("encoder_hidden_states", a[1] if len(a) > 1 else None)))
            handles.append(b.register_forward_hook(rec))
            handles.append(b.attn2.register_forward_hook(rec_col, with_kwargs=True))
        try:
            with torch.no_grad():
                out = engine.predict(inp["x"], inp["t"], inp["text"], inp["clip"])
        finally:
            for h in handles:
                h.remove()
    return out, recs, col_calls


def _column_pieces(tr, args, inp):
    """Column-stream context, modulation and RoPE, built from the formulas (not the engine)."""
    enc, temb = args[1], args[2]
    img = tr.condition_embedder.image_embedder(inp["col_clip"])
    enc_col = torch.cat([img, enc[:1, N_IMG:].repeat(T, 1, 1)], dim=1)
    rope_col = tr.rope(torch.zeros(1, 36, V, HL, WL))  # the view index plays the time axis
    return enc_col, temb[:1].repeat(T, 1, 1), rope_col


def _phis(tr, l, args, inp):
    """Row update B_v(x) and column update B_t(x) of block l (stock forward, no hooks)."""
    block = tr.blocks[l]
    enc_col, temb_col, rope_col = _column_pieces(tr, args, inp)
    row = lambda x: block.forward(x, args[1], args[2], args[3])  # noqa: E731
    col = lambda x: _rows(block.forward(_cols(x), enc_col, temb_col, rope_col))  # noqa: E731
    return row, col


def _feats(sigma, dim):
    half = dim // 2
    f = torch.tensor([10000 ** (-k / half) for k in range(half)])
    return torch.cat([torch.cos(1000 * sigma * f), torch.sin(1000 * sigma * f)])


# ----------------------------------------------------------------------------------------------
# two-stream modes vs the papers' equations
@pytest.mark.parametrize("weights", ["none", "neutral"])
def test_hard_sync_initial_weights_average_the_streams_after_every_block(stock_tr, weights):
    inp = _inputs(1)
    sync = GridSync.neutral("hard", stock_tr) if weights == "neutral" else None
    eng = TwoStreamEngine(stock_tr, "hard", sync)
    eng.column_clip = inp["col_clip"]
    _, recs, cols = _run_recorded(stock_tr, eng, inp)
    assert [r[0] for r in recs] == list(range(len(stock_tr.blocks))) and len(cols) == len(stock_tr.blocks)
    with torch.no_grad():
        for l, args, out in recs:
            row, col = _phis(stock_tr, l, args, inp)
            x = args[0]
            expected = 0.5 * (row(x) + col(x))       # Eq. 12 (Eq. 8 with W = I/2)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        # the merged copy feeds both streams: block l+1 gets block l's synced output
        for (_, _, out), (_, args_next, _) in zip(recs, recs[1:]):
            torch.testing.assert_close(args_next[0], out)


@pytest.mark.parametrize("weights", ["none", "zero_full", "zero_lowrank"])
def test_soft_sync_zero_init_leaves_the_row_stream_equal_to_the_base_dit(stock_tr, weights):
    inp = _inputs(2)
    sync = {"none": None, "zero_full": GridSync.neutral("soft", stock_tr),
            "zero_lowrank": GridSync.neutral("soft", stock_tr, rank=4)}[weights]
    with torch.no_grad():
        ref = _stock_forward(stock_tr, inp)   # every row denoised alone by the unhooked model
    eng = TwoStreamEngine(stock_tr, "soft", sync)
    eng.column_clip = inp["col_clip"]
    out, recs, cols = _run_recorded(stock_tr, eng, inp)
    assert len(cols) == len(stock_tr.blocks)  # the column stream did run, it just does not feed back
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def _simulate_soft(tr, recs, inp, update):
    """Run both streams by hand (Eqs. 4, 9-10 / supp. Eq. 13) and compare with the recorded rows."""
    x_v = x_t = recs[0][1][0]
    with torch.no_grad():
        for l, args, out in recs:
            row, col = _phis(tr, l, args, inp)
            torch.testing.assert_close(args[0], x_v, rtol=1e-5, atol=1e-5)
            y_v, y_t = row(x_v), col(x_t)
            x_v, x_t = update(l, y_v, y_t)
            torch.testing.assert_close(out, x_v, rtol=1e-4, atol=1e-5)


def test_training_free_soft_sync_is_weighted_averaging_with_depth_weights(stock_tr):
    inp = _inputs(3)
    eng = TwoStreamEngine(stock_tr, "soft_avg")
    eng.column_clip = inp["col_clip"]
    _, recs, _ = _run_recorded(stock_tr, eng, inp)
    L = len(stock_tr.blocks)

    def update(l, y_v, y_t):
        w = 0.1 + (l + 1) / L * 0.4          # w_l = 0.1 + l/L * 0.4, l = 1..L
        return (1 - w) * y_v + w * y_t, (1 - w) * y_t + w * y_v

    _simulate_soft(stock_tr, recs, inp, update)


def test_soft_sync_with_trained_weights_follows_eqs_9_10(stock_tr, tmp_path):
    inp = _inputs(4)
    sync = GridSync.neutral("soft", stock_tr, rank=None)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in sync.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    path = save_sync_weights(sync, tmp_path / "soft.safetensors")
    loaded = load_sync_weights(path, stock_tr, mode="soft")
    eng = TwoStreamEngine(stock_tr, "soft", loaded)
    eng.column_clip = inp["col_clip"]
    _, recs, _ = _run_recorded(stock_tr, eng, inp)
    phi = _feats(0.6, sync.features)
    D = sync.dim

    def update(l, y_v, y_t):
        lay = sync.layers[l]
        ss = lay.mod.weight @ phi + lay.mod.bias
        scale, shift = ss[:2 * D], ss[2 * D:]
        h = torch.cat([y_v, y_t], -1) * (1 + scale) + shift
        d = h @ lay.linear.weight.T + lay.linear.bias
        return y_v + d[..., :D], y_t + d[..., D:]

    _simulate_soft(stock_tr, recs, inp, update)


def test_hard_sync_with_trained_weights_is_sigma_modulated_per_channel_mixing(stock_tr):
    inp = _inputs(6)
    sync = GridSync.neutral("hard", stock_tr)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in sync.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    eng = TwoStreamEngine(stock_tr, "hard", sync)
    eng.column_clip = inp["col_clip"]
    _, recs, _ = _run_recorded(stock_tr, eng, inp)
    phi, D = _feats(0.6, sync.features), sync.dim
    with torch.no_grad():
        for l, args, out in recs:
            row, col = _phis(stock_tr, l, args, inp)
            lay = sync.layers[l]
            m = lay.mod.weight @ phi + lay.mod.bias
            expected = (lay.w_v + m[:D]) * row(args[0]) + (lay.w_t + m[D:]) * col(args[0])   # Eq. 8
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_soft_mean_readout_averages_the_streams_after_the_last_block(stock_tr):
    inp = _inputs(16)
    eng = TwoStreamEngine(stock_tr, "soft", None, soft_readout="mean")
    eng.column_clip = inp["col_clip"]
    _, recs, _ = _run_recorded(stock_tr, eng, inp)
    with torch.no_grad():
        x_v = x_t = recs[0][1][0]
        for l, args, out in recs:
            row, col = _phis(stock_tr, l, args, inp)
            x_v, x_t = row(x_v), col(x_t)          # neutral soft sync: independent streams
        torch.testing.assert_close(recs[-1][2], 0.5 * (x_v + x_t), rtol=1e-4, atol=1e-5)


def test_sequential_is_the_composition_of_eq5(stock_tr):
    inp = _inputs(8)
    eng = TwoStreamEngine(stock_tr, "sequential")
    eng.column_clip = inp["col_clip"]
    _, recs, _ = _run_recorded(stock_tr, eng, inp)
    with torch.no_grad():
        x = recs[0][1][0]
        for l, args, out in recs:
            row, col = _phis(stock_tr, l, args, inp)
            torch.testing.assert_close(args[0], x, rtol=1e-5, atol=1e-5)
            y = row(x)                        # y = x + phi_v(x)
            x = col(y)                        # x_{l+1} = y + phi_t(y)
            torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


def test_column_stream_uses_row0_context_without_column_clip(stock_tr):
    inp = _inputs(9)
    eng = TwoStreamEngine(stock_tr, "hard")
    _, recs, cols = _run_recorded(stock_tr, eng, inp)
    assert len(cols) == len(stock_tr.blocks)
    for (l, context) in cols:
        torch.testing.assert_close(context, recs[0][1][1][:1].expand(T, -1, -1))


def test_hooks_are_removed_after_use_and_on_errors(stock_tr):
    inp = _inputs(10)
    eng = TwoStreamEngine(stock_tr, "soft_avg")
    with pytest.raises(RuntimeError, match="boom"):
        with eng.installed():
            raise RuntimeError("boom")
    registries = [getattr(m, "_diffusers_hook", None) for m in (stock_tr, *stock_tr.blocks)]
    assert all(r is None or not r.hooks for r in registries)
    assert not stock_tr._forward_pre_hooks and all(not b._forward_hooks for b in stock_tr.blocks)
    procs = [(b.attn1.processor, b.attn2.processor) for b in stock_tr.blocks]
    with pytest.raises(RuntimeError, match="boom"):
        with FusedEngine(stock_tr, "dense").installed():
            raise RuntimeError("boom")
    assert procs == [(b.attn1.processor, b.attn2.processor) for b in stock_tr.blocks]
    with torch.no_grad():
        torch.testing.assert_close(_stock_forward(stock_tr, inp), _stock_forward(stock_tr, inp))


# ----------------------------------------------------------------------------------------------
# fused view-time attention (V2)
def test_fused_mask_allows_exactly_same_frame_view_or_time_pairs():
    v_n, t_n, s_n = 3, 4, 2
    tokens = [(v, t, s) for v in range(v_n) for t in range(t_n) for s in range(s_n)]   # documented order
    expected = torch.tensor([[qv == kv or qt == kt or (qv, qt) == (kv, kt) for (kv, kt, _) in tokens]
                             for (qv, qt, _) in tokens])
    dense = fused_dense_mask(v_n, t_n, s_n)
    assert torch.equal(dense, expected)
    mod = fused_mask_mod(v_n, t_n, s_n)
    n = len(tokens)
    q = torch.arange(n)[:, None].expand(n, n)
    k = torch.arange(n)[None, :].expand(n, n)
    assert torch.equal(mod(0, 0, q, k), expected)
    # the pattern's size: each query sees T + V - 1 frames
    assert int(expected.sum()) == n * (t_n + v_n - 1) * s_n


def test_fused_flex_dense_and_gather_paths_agree_with_masked_softmax():
    pytest.importorskip("torch.nn.attention.flex_attention")
    from fourd_core.kernels.fused import FusedGeometry, fused_attention

    v_n, t_n, hl, wl = 3, 2, 4, 6
    s_n = (hl // 2) * (wl // 2)
    n = v_n * t_n * s_n
    g = torch.Generator().manual_seed(0)
    q, k, vv = (torch.randn(1, n, 2, 12, generator=g) for _ in range(3))
    allowed = fused_dense_mask(v_n, t_n, s_n)
    scores = torch.einsum("qhd,khd->hqk", q[0], k[0]) / math.sqrt(12)
    ref = torch.einsum("hqk,khd->qhd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), vv[0])[None]

    for backend in ("dense", "gather", "flex"):
        geo = FusedGeometry(v_n, t_n, s_n, backend, torch.device("cpu"))
        torch.testing.assert_close(fused_attention(q, k, vv, geo), ref, rtol=1e-5, atol=1e-5)
        # a batch of two grids: each one attends within itself
        q2, k2, v2 = (torch.cat([t, t.flip(1)]) for t in (q, k, vv))
        out2 = fused_attention(q2, k2, v2, geo)
        torch.testing.assert_close(out2[:1], ref, rtol=1e-5, atol=1e-5)
        scores2 = torch.einsum("qhd,khd->hqk", q2[1], k2[1]) / math.sqrt(12)
        ref2 = torch.einsum("hqk,khd->qhd", scores2.masked_fill(~allowed, float("-inf")).softmax(-1), v2[1])
        torch.testing.assert_close(out2[1], ref2, rtol=1e-5, atol=1e-5)


def test_fused_rope_gives_each_token_time_position_view_plus_time(stock_tr):
    cos, sin = fused_rope(stock_tr, V, T, HL, WL)
    ref_cos, ref_sin = stock_tr.rope(torch.zeros(1, 36, V + T - 1, HL, WL))
    for v in range(V):
        for tau in range(T):
            f = v * T + tau
            torch.testing.assert_close(cos[0, f * S:(f + 1) * S], ref_cos[0, (v + tau) * S:(v + tau + 1) * S])
            torch.testing.assert_close(sin[0, f * S:(f + 1) * S], ref_sin[0, (v + tau) * S:(v + tau + 1) * S])


def test_fused_single_view_equals_the_stock_forward(stock_tr):
    inp = _inputs(11)
    one = {**inp, "x": inp["x"][:1], "clip": inp["clip"][:1]}
    with torch.no_grad():
        ref = stock_tr(hidden_states=one["x"], timestep=one["t"], encoder_hidden_states=one["text"],
                       encoder_hidden_states_image=one["clip"], return_dict=False)[0]
        eng = FusedEngine(stock_tr, "dense")
        with eng.installed():
            out = eng.predict(one["x"], one["t"], one["text"], one["clip"])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_fused_engine_flex_dense_and_gather_agree_on_the_model(stock_tr):
    pytest.importorskip("torch.nn.attention.flex_attention")
    inp = _inputs(12)
    outs = {}
    with torch.no_grad():
        for backend in ("dense", "gather", "flex"):
            eng = make_engine(stock_tr, "fused", fused_backend=backend)
            with eng.installed():
                outs[backend] = eng.predict(inp["x"], inp["t"], inp["text"], inp["clip"])
    torch.testing.assert_close(outs["flex"], outs["dense"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs["gather"], outs["dense"], rtol=1e-4, atol=1e-5)
    assert outs["dense"].shape == (V, 16, T, HL, WL)


def test_fused_cross_attention_gives_each_view_its_own_clip(stock_tr):
    # fused attn2 on all grid tokens == the stock attn2 run per view with that view's CLIP tokens
    g = torch.Generator().manual_seed(13)
    D = stock_tr.config.num_attention_heads * stock_tr.config.attention_head_dim
    hidden = torch.randn(1, V * T * S, D, generator=g)
    img = torch.randn(V, N_IMG, D, generator=g)
    text = torch.randn(1, 512, D, generator=g)
    attn = stock_tr.blocks[0].attn2
    with torch.no_grad():
        ref = torch.cat([attn(hidden[:, v * T * S:(v + 1) * T * S], torch.cat([img[v:v + 1], text], 1))
                         for v in range(V)], dim=1)
        eng = FusedEngine(stock_tr, "dense")
        inp = _inputs(13)
        with eng.installed():
            eng.predict(inp["x"], inp["t"], inp["text"], inp["clip"])   # sets the window geometry
            out = attn(hidden, torch.cat([img.reshape(1, V * N_IMG, D), text], 1))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_fused_cross_attention_keeps_batch_entries_apart(stock_tr):
    # two grids in one batch (e.g. cond and uncond): each entry == the stock attn2 run per view on
    # that entry's tokens with that entry's CLIP tokens of that view and its own text
    g = torch.Generator().manual_seed(17)
    D = stock_tr.config.num_attention_heads * stock_tr.config.attention_head_dim
    B = 2
    hidden = torch.randn(B, V * T * S, D, generator=g)
    img = torch.randn(B, V, N_IMG, D, generator=g)
    text = torch.randn(B, 512, D, generator=g)
    attn = stock_tr.blocks[0].attn2
    with torch.no_grad():
        ref = torch.stack([torch.cat([attn(hidden[b:b + 1, v * T * S:(v + 1) * T * S],
                                           torch.cat([img[b, v:v + 1], text[b:b + 1]], 1))[0]
                                      for v in range(V)]) for b in range(B)])
        eng = FusedEngine(stock_tr, "dense")
        inp = _inputs(17)
        with eng.installed():
            eng.predict(inp["x"], inp["t"], inp["text"], inp["clip"])   # sets the window geometry
            out = attn(hidden, torch.cat([img.reshape(B, V * N_IMG, D), text], 1))
    assert out.shape == (B, V * T * S, D)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _random_fused_lora(tr, seed: int, rank: int = 2) -> dict:
    """Raw (B not yet scaled) LoRA tensors in the release key layout for every attention q, k, v, out."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, block in enumerate(tr.blocks):
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                lin = block.get_submodule(f"{attn}.{proj}")
                key = f"transformer.blocks.{i}.{attn}.{proj}"
                sd[f"{key}.lora_A.weight"] = torch.randn(rank, lin.in_features, generator=g) / lin.in_features ** 0.5
                sd[f"{key}.lora_B.weight"] = torch.randn(lin.out_features, rank, generator=g)
    return sd


def _merged_copy(tr, raw: dict, scale: float):
    """A copy of ``tr`` with ``W + scale * B @ A`` written into the weights by hand."""
    import copy

    out = copy.deepcopy(tr)
    with torch.no_grad():
        for k, a in raw.items():
            if k.endswith("lora_A.weight"):
                name = k.removeprefix("transformer.").removesuffix(".lora_A.weight")
                b = raw[k.replace("lora_A", "lora_B")]
                out.get_submodule(name).weight.add_(scale * (b @ a))     # (through a PEFT wrapper, if any)
    return out


def test_fused_engine_lora_is_the_one_given_and_gone_after_the_engine(stock_tr, tmp_path):
    """Every FusedEngine runs its own LoRA at ``strength * alpha / rank`` (hand-merged weights as the
    reference), also after another engine ran another LoRA on the same transformer, and an engine
    without a LoRA (or the stock forward after one) runs the base model; other adapters are left as they were."""
    from fourd_core.models.fused_lora import read_fused_lora, save_fused_lora
    from fourd_core.training.objectives import add_train_lora

    inp = _inputs(21)
    raws = {name: _random_fused_lora(stock_tr, seed) for name, seed in (("a", 1), ("b", 2))}
    loras = {name: read_fused_lora(save_fused_lora(raw, tmp_path / f"{name}_fused.safetensors", rank=2, alpha=3.0),
                                   stock_tr) for name, raw in raws.items()}

    def fused(tr, lora=None, strength=1.0):
        eng = FusedEngine(tr, "dense", lora=lora, lora_strength=strength)
        with torch.no_grad(), eng.installed():
            return eng.predict(inp["x"], inp["t"], inp["text"], inp["clip"])

    base = fused(stock_tr)
    with torch.no_grad():
        stock_before = _stock_forward(stock_tr, inp)
    for name, strength in (("a", 1.0), ("b", 0.5), ("a", 0.5)):      # b after a: b's own weights, not a's
        ref = fused(_merged_copy(stock_tr, raws[name], strength * 3.0 / 2), strength=strength)
        torch.testing.assert_close(fused(stock_tr, loras[name], strength), ref, rtol=1e-4, atol=1e-5)
        assert (ref - base).abs().max() > 1e-2
    torch.testing.assert_close(fused(stock_tr), base, rtol=0, atol=0)                   # no LoRA left behind
    with torch.no_grad():
        torch.testing.assert_close(_stock_forward(stock_tr, inp), stock_before, rtol=0, atol=0)
    assert "fourd_fused" not in (getattr(stock_tr, "peft_config", None) or {})

    # a trainable adapter of another owner (the fused objective's) stays active and trainable
    import copy

    tr = copy.deepcopy(stock_tr)
    add_train_lora(tr, 2, 2.0)
    with torch.no_grad():
        for n, q in tr.named_parameters():
            if ".lora_B." in n:
                q.copy_(torch.randn(q.shape, generator=torch.Generator().manual_seed(5)))
        own = _stock_forward(tr, inp)
    grads = {n: q.requires_grad for n, q in tr.named_parameters()}
    fused(tr, loras["a"])
    with torch.no_grad():
        torch.testing.assert_close(_stock_forward(tr, inp), own, rtol=0, atol=0)
    assert {n: q.requires_grad for n, q in tr.named_parameters()} == grads


# ----------------------------------------------------------------------------------------------
# sync weights file
def test_sync_file_roundtrip_and_clear_errors(stock_tr, tmp_path):
    from safetensors.torch import load_file, save_file

    sync = GridSync.neutral("hard", stock_tr)
    p = save_sync_weights(sync, tmp_path / "hard.safetensors", base_model="tiny")
    loaded = load_sync_weights(p, stock_tr)
    assert loaded.mode == "hard"
    for k, v in sync.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    sd = load_file(str(p))
    assert set(sd) == {f"layers.{l}.{n}" for l in range(len(stock_tr.blocks)) for n in ("w_v", "w_t", "mod.weight", "mod.bias")}
    D = stock_tr.config.num_attention_heads * stock_tr.config.attention_head_dim
    assert sd["layers.0.w_v"].shape == (D,) and sd["layers.0.mod.weight"].shape == (2 * D, 32)

    with pytest.raises(WeightsError, match="'hard' sync weights, but the grid mode is 'soft'"):
        load_sync_weights(p, stock_tr, mode="soft")
    with pytest.raises(WeightsError, match="not found"):
        load_sync_weights(tmp_path / "missing.safetensors", stock_tr)
    bad = dict(sd)
    del bad["layers.1.w_t"]
    save_file(bad, str(tmp_path / "missing_key.safetensors"), metadata=sync_metadata(sync))
    with pytest.raises(WeightsError, match="missing"):
        load_sync_weights(tmp_path / "missing_key.safetensors", stock_tr)
    bad = dict(sd)
    bad["layers.0.w_v"] = torch.zeros(D + 1)
    save_file(bad, str(tmp_path / "shape.safetensors"), metadata=sync_metadata(sync))
    with pytest.raises(WeightsError, match="shape"):
        load_sync_weights(tmp_path / "shape.safetensors", stock_tr)
    bad = dict(sd)
    bad["layers.0.w_v"] = torch.full((D,), float("nan"))
    save_file(bad, str(tmp_path / "nan.safetensors"), metadata=sync_metadata(sync))
    with pytest.raises(WeightsError, match="corrupt"):
        load_sync_weights(tmp_path / "nan.safetensors", stock_tr)
    save_file(sd, str(tmp_path / "layers.safetensors"), metadata={**sync_metadata(sync), "num_layers": "40", "inner_dim": "5120"})
    with pytest.raises(WeightsError, match="40 blocks of width 5120"):
        load_sync_weights(tmp_path / "layers.safetensors", stock_tr)
    save_file(sd, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="not a grid sync weights file"):
        load_sync_weights(tmp_path / "plain.safetensors", stock_tr)
    with pytest.raises(InputError, match="cannot be used"):
        TwoStreamEngine(stock_tr, "soft", sync)


# ----------------------------------------------------------------------------------------------
# conditions, windows, output order
def test_latent_mask_and_known_latent_frames_follow_the_wan_i2v_layout():
    known = torch.zeros(2, 9, 16, 16)
    known[0] = 1.0                      # a fully known row
    known[1, 0] = 1.0                   # only the first frame...
    known[1, 0, :8, :8] = 0.0           # ...with a hole in the top-left 8x8 patch
    known[1, 5:9] = 1.0                 # and latent frame 2's pixel frames, but not 1-4
    m = C.latent_mask(known)
    assert m.shape == (2, 4, 3, 2, 2)
    assert torch.all(m[0] == 1)
    # row 1: latent 0 = pixel frame 0 repeated 4x (minus the hole), latent 1 = frames 1-4, latent 2 = 5-8
    assert torch.all(m[1, :, 0, 0, 0] == 0) and torch.all(m[1, :, 0, 1, 1] == 1)
    assert torch.all(m[1, :, 1] == 0) and torch.all(m[1, :, 2] == 1)
    full = C.fully_known_latents(known)
    assert full.tolist() == [[True, True, True], [False, False, False]]   # causal: needs the prefix
    known[1, 0] = 1.0
    assert C.fully_known_latents(known)[1].tolist() == [True, False, False]


def test_window_plan():
    cfg = G.GridConfig(window_views=4, window_frames=9, overlap_views=1, overlap_frames=5)
    assert C.window_starts(10, 4, 1) == [0, 3, 6]
    assert C.window_starts(11, 4, 1) == [0, 3, 6, 7]
    assert C.window_starts(3, 4, 1) == [0]
    wins = C.plan_windows(6, 17, cfg)
    assert wins == [(v0, v0 + 4, t0, t0 + 9) for v0 in (0, 2) for t0 in (0, 4, 8)]
    assert C.plan_windows(3, 5, cfg) == [(0, 3, 0, 5)]     # smaller than a window: one window
    with pytest.raises(InputError, match="4k\\+1"):
        C.plan_windows(3, 6, cfg)
    for bad in (dict(window_frames=8), dict(overlap_views=4, window_views=4), dict(mode="nope"), dict(steps=0)):
        with pytest.raises(InputError):
            G.GridConfig(**bad).validate()


def test_output_order_is_row_major():
    v_n, t_n = 3, 4
    frames = torch.zeros(v_n, t_n, 2, 2, 3)
    for v in range(v_n):
        for t in range(t_n):
            frames[v, t] = 10 * v + t
    batch = C.grid_to_batch(frames)
    for v in range(v_n):
        for t in range(t_n):
            assert C.grid_index(v, t, t_n) == v * t_n + t
            assert float(batch[v * t_n + t, 0, 0, 0]) == 10 * v + t
    res = C.GridResult(frames=frames, windows=[], mode="hard")
    torch.testing.assert_close(res.view(2), batch[2 * t_n:3 * t_n])
    torch.testing.assert_close(C.batch_to_grid(batch, v_n, t_n), frames)
    with pytest.raises(InputError):
        C.batch_to_grid(batch, 5, 5)


# ----------------------------------------------------------------------------------------------
# end to end on the tiny model (real VAE, CLIP, UMT5)
H, W = 32, 48


def _vae_roundtrip(pipe, video):
    """Stock VAE: encode (posterior mode) then decode a [F, H, W, 3] video in [0, 1]."""
    x = (video.permute(3, 0, 1, 2)[None] * 2 - 1).float()
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mode()
        y = pipe.vae.decode(z, return_dict=False)[0].clamp(-1, 1)
    return (y[0].permute(1, 2, 3, 0) / 2 + 0.5)


def _grid_inputs(num_t, num_v, seed=0, h=H, w=W):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(num_t, h, w, 3, generator=g), torch.rand(num_v, h, w, 3, generator=g)


def test_known_row_and_column_come_back_unchanged(lora_pipe):
    fixed, freeze = _grid_inputs(5, 3)
    res = G.generate_grid(lora_pipe, fixed, freeze, "a carousel", G.GridConfig(mode="hard", steps=2, seed=1))
    assert res.frames.shape == (3, 5, H, W, 3) and res.windows == [(0, 3, 0, 5)]
    torch.testing.assert_close(res.frames[0], _vae_roundtrip(lora_pipe, fixed), rtol=0, atol=1e-4)
    for v in range(1, 3):
        torch.testing.assert_close(res.frames[v, 0], _vae_roundtrip(lora_pipe, freeze[v:v + 1])[0], rtol=0, atol=1e-4)
    # the unknown frames were generated (not copies of the inputs)
    assert (res.frames[1:, 1:] - fixed[1:]).abs().mean() > 1e-3


def test_windows_condition_on_generated_frames(lora_pipe, monkeypatch):
    fixed, freeze = _grid_inputs(9, 3, seed=2, w=32)
    calls = []
    orig = G.sample_window

    def spy(pipe, engine, pixels, known, *a, **k):
        calls.append((pixels.clone(), known.clone()))
        return orig(pipe, engine, pixels, known, *a, **k)

    monkeypatch.setattr(G, "sample_window", spy)
    cfg = G.GridConfig(mode="soft_avg", steps=1, window_views=2, window_frames=5, overlap_views=1, overlap_frames=1)
    res = G.generate_grid(lora_pipe, fixed, freeze, "x", cfg)
    assert res.windows == [(0, 2, 0, 5), (0, 2, 4, 9), (1, 3, 0, 5), (1, 3, 4, 9)]
    out = res.frames
    # window 2 (views 0-1, frames 4-8): frame 4 of view 1 was generated by window 1 and is known
    px, kn = calls[1]
    assert torch.all(kn[1, 0] == 1) and torch.all(kn[1, 1:] == 0) and torch.all(kn[0] == 1)
    torch.testing.assert_close(px[1, 0], out[1, 4])
    # window 3 (views 1-2, frames 0-4): row 1 (generated) known, column 0 known
    px, kn = calls[2]
    assert torch.all(kn[0] == 1) and torch.all(kn[:, 0] == 1) and torch.all(kn[1, 1:] == 0)
    torch.testing.assert_close(px[0], out[1, 0:5])
    # known input row and column still come back as their VAE round trip
    torch.testing.assert_close(out[0, 0:5], _vae_roundtrip(lora_pipe, fixed[0:5]), rtol=0, atol=1e-4)
    torch.testing.assert_close(out[2, 0], _vae_roundtrip(lora_pipe, freeze[2:3])[0], rtol=0, atol=1e-4)


def test_holes_are_unknown_pixels(lora_pipe, monkeypatch):
    fixed, freeze = _grid_inputs(1, 2, seed=3)   # one frame per view: the column only
    holes = torch.zeros(2, H, W)
    holes[1, :16, :16] = 1.0
    seen = []
    orig = G.sample_window
    monkeypatch.setattr(G, "sample_window", lambda p, e, px, kn, *a, **k: (seen.append(kn.clone()), orig(p, e, px, kn, *a, **k))[1])
    G.generate_grid(lora_pipe, fixed, freeze, "x", G.GridConfig(mode="rows", steps=1), holes=holes)
    kn = seen[0]
    assert torch.all(kn[1, 0, :16, :16] == 0) and torch.all(kn[1, 0, 16:] == 1) and torch.all(kn[0] == 1)


def test_base_model_mode_disables_the_lora_and_4dnex_and_restores_them(lora_pipe, stock_tr, tiny_pipe):
    from fourd_core.models.patches import set_fourdnex_enabled

    tr = lora_pipe.transformer
    inp = _inputs(14)
    inp["x"] = torch.randn(V, 36, T, HL, 8, generator=torch.Generator().manual_seed(15))  # 4DNeX: even halves
    set_fourdnex_enabled(tr, True)
    with torch.no_grad():
        before = _stock_forward(tr, inp)
        with G.base_model_mode(lora_pipe):
            inside = _stock_forward(tr, inp)
        after = _stock_forward(tr, inp)
        base = _stock_forward(stock_tr, inp)
    torch.testing.assert_close(inside, base, rtol=1e-5, atol=1e-5)     # the plain Wan DiT
    torch.testing.assert_close(after, before)
    assert not torch.allclose(before, base)
    assert tr._fourdnex_enabled
    with pytest.raises(InputError, match="fused"):
        G.generate_grid(tiny_pipe, *_grid_inputs(5, 2), "x", G.GridConfig(steps=1))


@pytest.mark.parametrize("mode", ["soft_avg", "fused"])
def test_cancel_restores_the_model(lora_pipe, mode):
    tr = lora_pipe.transformer
    procs = [(b.attn1.processor, b.attn2.processor) for b in tr.blocks]
    lora_on = [m.disable_adapters for m in tr.modules() if hasattr(m, "disable_adapters") and hasattr(m, "lora_A")]

    def cancel(step, total, latents):
        raise CancelledError("stop")

    with pytest.raises(CancelledError):
        G.generate_grid(lora_pipe, *_grid_inputs(1, 2), "x", G.GridConfig(mode=mode, steps=3), callback=cancel)
    assert not tr._forward_pre_hooks and all(not b._forward_hooks for b in tr.blocks)
    assert procs == [(b.attn1.processor, b.attn2.processor) for b in tr.blocks]
    assert lora_on == [m.disable_adapters for m in tr.modules() if hasattr(m, "disable_adapters") and hasattr(m, "lora_A")]
    assert tr._fourdnex_enabled


def test_bad_inputs_are_clear_errors(lora_pipe):
    fixed, freeze = _grid_inputs(5, 2)
    with pytest.raises(InputError, match="freeze_time frames"):
        G.generate_grid(lora_pipe, fixed, freeze[:, :16], "x")
    with pytest.raises(InputError, match="multiples of 16"):
        G.generate_grid(lora_pipe, fixed[:, :, :40], freeze[:, :, :40], "x")
    with pytest.raises(InputError, match="holes"):
        G.generate_grid(lora_pipe, fixed, freeze, "x", holes=torch.zeros(3, H, W))
    with pytest.raises(InputError, match="no sync layers"):
        G.generate_grid(lora_pipe, fixed, freeze, "x", G.GridConfig(mode="fused"),
                        sync=GridSync.neutral("hard", lora_pipe.transformer))


# ----------------------------------------------------------------------------------------------
# freeze-time input from a scene
def _plane_scene(h=H, w=W):
    from fourd_core.scene import Scene4D

    K = torch.tensor([[40.0, 0, (w - 1) / 2], [0, 40.0, (h - 1) / 2], [0, 0, 1]])
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, h, w, 3, generator=g)
    return Scene4D(rgb=rgb, xyz=rgb.clone(), K=K.expand(2, 3, 3).clone(), cam_to_world=torch.eye(4).expand(2, 4, 4).clone(),
                   depth=torch.full((2, h, w), 2.0))


def test_render_scene_views_of_a_frame_along_an_orbit():
    from fourd_core.geometry.novel_view import render_scene_views, scene_camera_path

    scene = _plane_scene()
    K, poses = scene_camera_path(scene, "orbit", degrees=20, steps=4, frame=1)
    assert K.shape == (4, 3, 3) and poses.shape == (4, 4, 4)
    torch.testing.assert_close(poses[0], scene.cam_to_world[1])
    # camera 3 turned by 20 degrees about the y axis through the centre at depth 2
    ang = math.radians(20)
    torch.testing.assert_close(poses[3, :3, 3], torch.tensor([-2 * math.sin(ang), 0.0, 2 - 2 * math.cos(ang)]),
                               rtol=0, atol=1e-5)
    images, holes = render_scene_views(scene, poses, K, frame=1, point_size=1)
    assert images.shape == (4, H, W, 3) and holes.shape == (4, H, W)
    torch.testing.assert_close(images[0], scene.rgb[1])           # view 0: the frame from its own camera
    assert float(holes[0].sum()) == 0
    assert float(holes[3].mean()) > 0.05                          # the turned plane leaves holes
    assert torch.all(images[3][holes[3] > 0] == 0.5)              # filled with mid-gray
    _, dposes = scene_camera_path(scene, "dolly", steps=3, distance=0.5)
    torch.testing.assert_close(dposes[2, :3, 3], torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(InputError):
        scene_camera_path(scene, "spiral")


def test_fused_cross_attention_keeps_the_chosen_attention_backend(stock_tr, monkeypatch):
    """The backend chosen for the model (Memory Settings -> set_attention_backend, stored on each
    processor) must reach every dispatch of the fused cross-attention, and survive the swap back."""
    import diffusers.models.attention_dispatch as dispatch

    real = dispatch.dispatch_attention_fn
    seen = []

    def recording(*a, backend=None, **k):
        seen.append(backend)
        return real(*a, **k)

    monkeypatch.setattr(dispatch, "dispatch_attention_fn", recording)
    sentinel = "native"  # a registered backend name; what matters is that it is passed on
    old = [b.attn2.processor._attention_backend for b in stock_tr.blocks]
    procs = [b.attn2.processor for b in stock_tr.blocks]
    for b in stock_tr.blocks:
        b.attn2.processor._attention_backend = sentinel
    try:
        inp = _inputs(14)
        with torch.no_grad():
            eng = make_engine(stock_tr, "fused", fused_backend="gather")
            with eng.installed():
                eng.predict(inp["x"], inp["t"], inp["text"], inp["clip"])
        assert seen and all(s == sentinel for s in seen), seen
        assert all(b.attn2.processor is p for b, p in zip(stock_tr.blocks, procs))   # the same processors back
    finally:
        for b, o in zip(stock_tr.blocks, old):
            b.attn2.processor._attention_backend = o
