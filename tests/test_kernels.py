"""The shared kernels (fourd_core/kernels) against independent expectations: loops over tokens, the
papers' formulas, and a second implementation where one exists."""

from __future__ import annotations

import pytest
import torch

from fourd_core.errors import InputError
from fourd_core.kernels import fourdnex, streams

D = 24


def test_shared_rope_repeats_the_half_width_positions():
    t, h, w = 2, 3, 8
    # a "table" that records each half-width token's (t, h, j) position, in both table layouts
    ids = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w // 2), indexing="ij"), -1)
    for table in (ids.reshape(1, -1, 1, 3).float(),                      # diffusers cos / sin [1, N, 1, d]
                  ids.reshape(1, -1, 1, 3, 1, 1).float().expand(-1, -1, -1, -1, 2, 2)):   # ComfyUI [1, N, 1, d/2, 2, 2]
        out = fourdnex.shared_rope(table, (t, h, w))
        assert out.shape == (1, t * h * w, *table.shape[2:])
        grid = out.reshape(t, h, w, *table.shape[2:])
        for j in range(w):
            assert torch.equal(grid[:, :, j], table.reshape(t, h, w // 2, *table.shape[2:])[:, :, j % (w // 2)])
    with pytest.raises(InputError):
        fourdnex.shared_rope(ids.reshape(1, -1, 1, 3).float(), (t, h, w + 2))
    with pytest.raises(InputError, match="even token width"):
        fourdnex.shared_rope(ids.reshape(1, -1, 1, 3).float(), (t, h, 7))


def test_domain_embeddings_by_token_column_in_both_layouts():
    t, h, w = 2, 2, 6
    emb = torch.randn(2, D)
    tokens = torch.randn(1, t * h * w, D)                                   # ComfyUI: [B, t*h*w, D], w fastest
    y = fourdnex.add_domain_embeddings(tokens.view(1, t * h, w, D), emb, width_dim=2, channel_dim=3).view(1, -1, D)
    for n in range(t * h * w):
        col = n % w
        torch.testing.assert_close(y[0, n], tokens[0, n] + emb[0 if col < w // 2 else 1], rtol=0, atol=0)
    grid = torch.randn(1, D, t, h, w)                                       # diffusers: patch-embedding output
    z = fourdnex.add_domain_embeddings(grid, emb, width_dim=-1, channel_dim=1)
    for j in range(w):
        torch.testing.assert_close(z[0, :, :, :, j], grid[0, :, :, :, j] + emb[0 if j < w // 2 else 1][:, None, None],
                                   rtol=0, atol=0)
    with pytest.raises(InputError, match="5120"):
        fourdnex.add_domain_embeddings(grid, torch.randn(2, D + 1), width_dim=-1, channel_dim=1)


def test_row_and_column_layouts_are_inverse_permutations():
    v, t, s, d = 3, 4, 5, 2
    x = torch.arange(v * t * s * d, dtype=torch.float32).reshape(v, t * s, d)
    col = streams.rows_to_columns(x, v, t)
    for vi in range(v):
        for ti in range(t):
            for si in range(s):
                assert torch.equal(col[ti, vi * s + si], x[vi, ti * s + si])
    assert torch.equal(streams.columns_to_rows(col, v, t), x)


@pytest.mark.parametrize("name", ["soft_avg", "hard", "soft", "sequential"])
def test_two_stream_modes_follow_their_equations(name):
    """Eq. 8 (hard, neutral = averaging, Eq. 12), Eqs. 9-10 (soft; neutral = independent), supp. Eq. 13
    (soft_avg, w_l = 0.1 + 0.4 l / L with l 1-based) and Eq. 5 (sequential: the columns run on y_v)."""
    g = torch.Generator().manual_seed(0)
    x_v, y_v, y_t, x_t = (torch.randn(2, 6, D, generator=g) for _ in range(4))
    mode = streams.grid_mode(name)
    L = 4
    if name == "sequential":
        assert mode.column_input(x_v, y_v, x_t) is y_v
        assert mode.merge(1, L, y_v, y_t)[0] is y_t
        return
    if name == "hard":
        assert mode.column_input(x_v, y_v, x_t) is x_v and mode.sync == "hard"
        merged, state = mode.merge(1, L, y_v, y_t)
        torch.testing.assert_close(merged, (y_v + y_t) / 2) and state is None
        layer = lambda a, b, f: 0.3 * a + 0.7 * b  # noqa: E731 - a trained layer stand-in
        torch.testing.assert_close(mode.merge(1, L, y_v, y_t, layer, torch.zeros(2))[0], 0.3 * y_v + 0.7 * y_t)
        return
    assert mode.column_input(x_v, y_v, None) is x_v and mode.column_input(x_v, y_v, x_t) is x_t and mode.stateful
    if name == "soft_avg":
        for index in range(L):
            w = 0.1 + 0.4 * (index + 1) / L
            a, b = mode.merge(index, L, y_v, y_t)
            torch.testing.assert_close(a, (1 - w) * y_v + w * y_t)
            torch.testing.assert_close(b, (1 - w) * y_t + w * y_v)
        return
    a, b = mode.merge(0, L, y_v, y_t)
    assert a is y_v and b is y_t
    layer = lambda a, b, f: (a - b, 2 * b)  # noqa: E731
    a, b = mode.merge(0, L, y_v, y_t, layer, torch.zeros(2))
    torch.testing.assert_close(a, y_v + (y_v - y_t)) and torch.testing.assert_close(b, y_t + 2 * y_t)


def test_sync_weights_are_checked_against_the_mode():
    from fourd_core.kernels.sync import GridSync

    streams.check_sync_for("hard", GridSync("hard", 2, D), 2)
    with pytest.raises(InputError, match="cannot be used with grid mode 'soft'"):
        streams.check_sync_for("soft", GridSync("hard", 2, D), 2)
    with pytest.raises(InputError, match="cannot be used with grid mode 'soft_avg'"):
        streams.check_sync_for("soft_avg", GridSync("soft", 2, D), 2)
    with pytest.raises(InputError, match="3 layers"):
        streams.check_sync_for("hard", GridSync("hard", 3, D), 2)


def test_layer_runner_runs_on_the_activations_device_without_moving_the_layer():
    """A layer whose weights are elsewhere (a partial ComfyUI load left them on the offload device) runs on
    copies on the activations' device; the module's own parameters stay where they were. Here the layer is
    on the CPU and the activations on the 'meta' device (shape-only), the only second device a CPU has."""
    from fourd_core.kernels.sync import GridSync, layer_runner, sigma_features

    sync = GridSync("soft", 1, D, rank=4)
    layer = sync.layers[0]
    assert layer_runner(layer, torch.device("cpu")) is layer
    run = layer_runner(layer, torch.device("meta"))
    assert run is not layer
    dv, dt = run(torch.zeros(3, D, device="meta"), torch.zeros(3, D, device="meta"), sigma_features(0.5).to("meta"))
    assert dv.device.type == "meta" and dv.shape == (3, D) and dt.shape == (3, D)
    assert all(p.device.type == "cpu" for p in layer.parameters())


def test_registries_list_every_mode_and_backend_with_help():
    from fourd_core.kernels.fused import FUSED_BACKENDS, fused_backend_names

    assert set(streams.GRID_MODES.names()) == {"soft_avg", "hard", "soft", "sequential", "fused", "rows"}
    assert fused_backend_names() == ("auto", "flex", "dense", "gather") and set(FUSED_BACKENDS) == {"flex", "dense", "gather"}
    for reg in (streams.GRID_MODES, FUSED_BACKENDS):
        assert all(len(reg.help(n)) > 20 for n in reg)
    with pytest.raises(InputError, match="Unknown grid mode 'bogus'.*soft_avg"):
        streams.grid_mode("bogus")
