"""The native grid patches (two-stream sync as block replaces on ComfyUI's WanModel) against the
diffusers TwoStreamEngine on the same tiny weights: one CFG denoiser evaluation of a 3-view grid."""

from __future__ import annotations

import pytest
import torch

from comfy_fixtures import comfy, pack  # noqa: F401  (fixtures)

from test_native_denoiser import SIGMA, native_velocity

V, LAT_T, LAT_H, LAT_W = 3, 2, 4, 6


@pytest.fixture(scope="module")
def base(comfy, tmp_path_factory):
    from fourd_core.native.tiny import TINY_MODEL_NAME, save_native_tiny

    files = save_native_tiny(tmp_path_factory.mktemp("grid_tiny"))
    return files / "diffusion_models" / TINY_MODEL_NAME


@pytest.mark.parametrize("mode", ["hard", "soft_avg", "sequential"])
def test_native_grid_matches_diffusers_two_stream_engine(comfy, pack, base, mode):
    from fourd_core.models.grid_streams import TwoStreamEngine
    from fourd_core.models.loading import load_transformer_file
    from fourd_core.native.layout import latent_stats
    from fourd_core.native.tiny import TINY_DIFFUSERS_CONFIG

    g = torch.Generator().manual_seed(7)
    x = torch.randn(V, 16, LAT_T, LAT_H, LAT_W, generator=g)
    cond_raw = torch.randn(V, 16, LAT_T, LAT_H, LAT_W, generator=g) * 2
    known = (torch.rand(V, 4, LAT_T, LAT_H, LAT_W, generator=g) > 0.5).float()
    text, neg = torch.randn(1, 512, 4096, generator=g) * 0.5, torch.randn(1, 512, 4096, generator=g) * 0.5
    clip = torch.randn(V, 257, 1280, generator=g)
    cvo = pack.nodes.native.tiny.clip_vision_output(clip)
    values = {"concat_latent_image": cond_raw, "concat_mask": 1 - known, "clip_vision_output": cvo}

    stock = comfy.sd.load_diffusion_model(str(base))
    grid = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]().patch(stock, V, mode)[0]
    v_native = native_velocity(comfy, grid, [[text, dict(values)]], [[neg, dict(values)]], x, cfg=5.0)

    transformer, _ = load_transformer_file(base, TINY_DIFFUSERS_CONFIG, torch.float32)
    mean, std = latent_stats(cond_raw)
    inp = torch.cat([x, known, (cond_raw - mean) / std], dim=1)
    engine = TwoStreamEngine(transformer.eval(), mode)
    with torch.no_grad(), engine.installed():
        t = torch.tensor([SIGMA * 1000.0])
        v_c = engine.predict(inp, t, text, clip, "cond")
        v_u = engine.predict(inp, t, neg, clip, "uncond")
    v_diffusers = v_u + 5.0 * (v_c - v_u)
    print(f"native grid ({mode}) vs diffusers two-stream: max abs diff {(v_native - v_diffusers).abs().max():.2e}")
    torch.testing.assert_close(v_native, v_diffusers, rtol=1e-4, atol=1e-4)

    rows = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]().patch(stock, V, "rows")[0]
    v_rows = native_velocity(comfy, rows, [[text, dict(values)]], [[neg, dict(values)]], x, cfg=5.0)
    assert (v_rows - v_native).abs().max() > 1e-3          # the sync really couples the views
