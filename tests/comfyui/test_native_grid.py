"""The native grid patches on ComfyUI's WanModel against the diffusers grid engines on the same tiny
weights: one CFG denoiser evaluation of a 3-view grid for every mode (two streams, trained sync
layers, fused view-time attention), and a short core-sampler run with known-latent pasting against
the diffusers window loop."""

from __future__ import annotations

import warnings

import pytest
import torch

from comfy_fixtures import comfy, pack  # noqa: F401  (fixtures)

from test_native_denoiser import SIGMA, native_velocity

V, LAT_T, LAT_H, LAT_W = 3, 2, 4, 6


@pytest.fixture(scope="module")
def base(comfy, tmp_path_factory):
    from fourd_core.native.tiny_wan import TINY_MODEL_NAME, save_native_tiny

    files = save_native_tiny(tmp_path_factory.mktemp("grid_tiny"))
    return files / "diffusion_models" / TINY_MODEL_NAME


def grid_inputs(pack, seed=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(V, 16, LAT_T, LAT_H, LAT_W, generator=g)
    cond_raw = torch.randn(V, 16, LAT_T, LAT_H, LAT_W, generator=g) * 2
    known = (torch.rand(V, 4, LAT_T, LAT_H, LAT_W, generator=g) > 0.5).float()
    text, neg = torch.randn(1, 512, 4096, generator=g) * 0.5, torch.randn(1, 512, 4096, generator=g) * 0.5
    clip = torch.randn(V, 257, 1280, generator=g)
    values = {"concat_latent_image": cond_raw, "concat_mask": 1 - known,
              "clip_vision_output": pack.nodes.native.demo_standins.clip_vision_output(clip)}
    return {"x": x, "cond_raw": cond_raw, "known": known, "text": text, "neg": neg, "clip": clip, "values": values}


def diffusers_input(inp):
    from fourd_core.native.layout import latent_stats

    mean, std = latent_stats(inp["cond_raw"])
    return torch.cat([inp["x"], inp["known"], (inp["cond_raw"] - mean) / std], dim=1)


def diffusers_transformer(base):
    from fourd_core.models.loading import load_transformer_file
    from fourd_core.native.tiny_wan import TINY_DIFFUSERS_CONFIG

    transformer, _ = load_transformer_file(base, TINY_DIFFUSERS_CONFIG, torch.float32)
    return transformer.eval()


def diffusers_velocity(engine, inp):
    with torch.no_grad(), engine.installed():
        t = torch.tensor([SIGMA * 1000.0])
        v_c = engine.predict(diffusers_input(inp), t, inp["text"], inp["clip"], "cond")
        v_u = engine.predict(diffusers_input(inp), t, inp["neg"], inp["clip"], "uncond")
    return v_u + 5.0 * (v_c - v_u)


def grid_velocity(comfy, model, inp):
    pos, neg = [[inp["text"], dict(inp["values"])]], [[inp["neg"], dict(inp["values"])]]
    with torch.inference_mode():                           # as ComfyUI runs nodes
        return native_velocity(comfy, model, pos, neg, inp["x"], cfg=5.0).clone()


@pytest.mark.parametrize("mode", ["hard", "soft_avg", "sequential"])
def test_native_grid_matches_diffusers_two_stream_engine(comfy, pack, base, mode):
    from fourd_core.models.grid_streams import TwoStreamEngine

    inp = grid_inputs(pack)
    stock = comfy.sd.load_diffusion_model(str(base))
    grid = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]().patch(stock, V, mode)[0]
    v_native = grid_velocity(comfy, grid, inp)
    v_diffusers = diffusers_velocity(TwoStreamEngine(diffusers_transformer(base), mode), inp)
    print(f"native grid ({mode}) vs diffusers two-stream: max abs diff {(v_native - v_diffusers).abs().max():.2e}")
    torch.testing.assert_close(v_native, v_diffusers, rtol=1e-4, atol=1e-4)

    rows = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]().patch(stock, V, "rows")[0]
    v_rows = grid_velocity(comfy, rows, inp)
    assert (v_rows - v_native).abs().max() > 1e-3          # the sync really couples the views


@pytest.mark.parametrize("mode", ["hard", "soft_avg"])
def test_native_grid_column_clip_matches_diffusers_column_clip(comfy, pack, base, mode):
    """Per-column CLIP (FourD Grid Conditioning's column_clip into FourD Grid Model) = the diffusers
    engine's ``column_clip``: each column of the column stream sees the image of its own instant."""
    from fourd_core.models.grid_streams import TwoStreamEngine

    inp = grid_inputs(pack)
    col = torch.randn(LAT_T, 257, 1280, generator=torch.Generator().manual_seed(9))
    stock = comfy.sd.load_diffusion_model(str(base))
    node = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]()
    cvo = pack.nodes.native.demo_standins.clip_vision_output(col)
    v_native = grid_velocity(comfy, node.patch(stock, V, mode, column_clip=cvo)[0], inp)
    engine = TwoStreamEngine(diffusers_transformer(base), mode)
    engine.column_clip = col
    v_diffusers = diffusers_velocity(engine, inp)
    print(f"native grid ({mode}, column CLIP) vs diffusers: max abs diff {(v_native - v_diffusers).abs().max():.2e}")
    torch.testing.assert_close(v_native, v_diffusers, rtol=1e-4, atol=1e-4)
    assert (grid_velocity(comfy, node.patch(stock, V, mode)[0], inp) - v_native).abs().max() > 1e-3


@pytest.fixture(scope="module")
def sync_files(comfy, pack, tmp_path_factory):
    """Random, far-from-neutral hard and soft sync weights in a registered fourd_sync folder."""
    import folder_paths

    from fourd_core.models.sync import GridSync, save_sync_weights
    from fourd_core.native.tiny_wan import NATIVE_TINY

    folder = tmp_path_factory.mktemp("fourd_sync")
    g = torch.Generator().manual_seed(11)
    for mode, rank in (("hard", None), ("soft", None), ("soft_r", 8)):
        sync = GridSync(mode[:4], NATIVE_TINY["num_layers"], NATIVE_TINY["dim"], rank=rank)
        with torch.no_grad():
            for name, p in sync.named_parameters():
                scale = 0.5 if name.endswith(("w_v", "w_t")) else 0.05
                p.copy_(torch.randn(p.shape, generator=g) * scale + (0.5 if name.endswith(("w_v", "w_t")) else 0))
        save_sync_weights(sync, folder / f"tiny_{mode}_sync.safetensors")
    folder_paths.add_model_folder_path("fourd_sync", str(folder))
    return folder


@pytest.mark.parametrize("mode,file", [("hard", "tiny_hard_sync.safetensors"), ("soft", "tiny_soft_sync.safetensors"),
                                       ("soft", "tiny_soft_r_sync.safetensors")])
def test_native_grid_with_trained_sync_matches_diffusers(comfy, pack, base, sync_files, mode, file):
    from fourd_core.models.grid_streams import TwoStreamEngine
    from fourd_core.models.sync import load_sync_weights

    node = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]
    assert file in node.INPUT_TYPES()["optional"]["sync_weights"][0]          # listed from models/fourd_sync
    inp = grid_inputs(pack)
    stock = comfy.sd.load_diffusion_model(str(base))
    v_native = grid_velocity(comfy, node().patch(stock, V, mode, sync_weights=file)[0], inp)
    transformer = diffusers_transformer(base)
    sync = load_sync_weights(sync_files / file, transformer, mode=mode)
    v_diffusers = diffusers_velocity(TwoStreamEngine(transformer, mode, sync), inp)
    print(f"native grid ({mode}, trained {file}) vs diffusers: max abs diff {(v_native - v_diffusers).abs().max():.2e}")
    torch.testing.assert_close(v_native, v_diffusers, rtol=1e-4, atol=1e-4)
    v_neutral = grid_velocity(comfy, node().patch(stock, V, mode)[0], inp)
    assert (v_neutral - v_native).abs().max() > 1e-2         # the trained layers really act


def test_native_grid_sync_layers_are_loaded_by_comfyui_memory_manager(comfy, pack, base, sync_files):
    """The trained sync layers are an additional model of the patched MODEL (not of the stock one):
    sampling loads them through ComfyUI's memory manager, which then lists them among its loaded
    models with their full size, as it does the diffusion model."""
    import comfy.model_management as mm

    key = pack.nodes.native.grid.SYNC_MODELS_KEY
    stock = comfy.sd.load_diffusion_model(str(base))
    out = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]().patch(stock, V, "hard",
                                                                   sync_weights="tiny_hard_sync.safetensors")[0]
    extra = out.get_additional_models_with_key(key)
    assert len(extra) == 1 and type(extra[0].model).__name__ == "GridSync"   # the pack's own module copy
    sync = extra[0].model
    assert extra[0].model_size() == sum(p.numel() * p.element_size() for p in sync.parameters())
    assert stock.get_additional_models_with_key(key) == []
    mm.unload_all_models()
    grid_velocity(comfy, out, grid_inputs(pack))
    loaded = [lm.model for lm in mm.current_loaded_models]
    assert any(m.model is sync for m in loaded), "the sync layers were not loaded by ComfyUI"
    assert any(m.model is stock.model for m in loaded)
    assert next(sync.parameters()).device == mm.get_torch_device()


META, CPU = torch.device("meta"), torch.device("cpu")     # "meta" stands in for the GPU


def _partially_loaded_sync(mode: str, budget: int):
    """Fresh 2-layer, width-64 sync layers after a real ComfyUI partial (low-VRAM) load with ``budget`` bytes."""
    from comfy.model_patcher import ModelPatcher

    from fourd_core.models.sync import GridSync

    sync = GridSync(mode, 2, 64)
    ModelPatcher(sync, load_device=META, offload_device=CPU).load(META, lowvram_model_memory=budget, full_load=False)
    return sync


def _devices(sync) -> set[str]:
    return {q.device.type for q in sync.parameters()}


def _assert_block_runs_where_the_layers_are(sync, mode: str) -> None:
    """The block runs every layer on the activations' device without device errors and leaves each
    parameter where the memory manager put it."""
    from fourd_core.native.grid_patches import GridBlockPatch

    like = torch.zeros(1, 4, 64, device=META)
    for i in range(2):
        before = {n: q.device for n, q in sync.layers[i].named_parameters()}
        run, feats = GridBlockPatch(i, 2, mode, sync=sync)._sync_layer({"sigma": torch.tensor(0.5)}, like)
        out = run(like, like, feats)
        assert all(o.device == META for o in (out if isinstance(out, tuple) else (out,)))
        assert {n: q.device for n, q in sync.layers[i].named_parameters()} == before


def _comfyui_version() -> str:
    try:
        from comfyui_version import __version__
    except ImportError:
        return "(unknown version)"
    return __version__


@pytest.mark.parametrize("mode,budget", [("soft", 40_000), ("hard", 20_000)])
def test_sync_layers_after_a_partial_comfyui_load_run_without_device_errors(comfy, mode, budget):
    """ComfyUI's partial (low-VRAM) load moves leaf modules one by one and skips parameters held by
    a non-leaf module (the hard layers' w_v, w_t), so a sync layer can be split across devices; the
    block must still run it, without moving it behind the memory manager ("meta" stands in for the
    GPU).

    ``budget`` splits the layers on ComfyUI 0.3.64, whose ``ModelPatcher.load`` (comfy/model_patcher.py)
    loads a leaf module while ``loaded + size < budget``. ComfyUI 0.8.0 also reserves an offload buffer
    (``loaded + size + max(offload buffer, size + the next NUM_STREAMS modules) < budget``, the buffer
    growing to the largest module left behind), so there the same budget loads nothing. A release
    where it does not split says so (a warning), its own behaviour at that budget is checked (every
    weight on one device, the block runs the layers there without moving them), and the split case
    is then checked at the smallest budget at which that release does split (in steps of a quarter
    of the smallest loadable leaf module); a release that never splits says that too.
    """
    sync = _partially_loaded_sync(mode, budget)
    devices = _devices(sync)
    if devices == {"meta", "cpu"}:                                   # really split (ComfyUI 0.3.64)
        _assert_block_runs_where_the_layers_are(sync, mode)
        return

    version = _comfyui_version()
    assert len(devices) == 1 and devices <= {"meta", "cpu"}, devices
    _assert_block_runs_where_the_layers_are(sync, mode)              # this release's behaviour at this budget
    # what ComfyUI's partial load can move: leaf modules with parameters (non-leaf ones are skipped)
    sizes = [sum(q.numel() * q.element_size() for q in m.parameters()) for m in sync.modules()
             if not any(True for _ in m.children()) and any(True for _ in m.parameters())]
    step = max(1, min(sizes) // 4)
    for b in range(step, 4 * sum(sizes), step):
        split = _partially_loaded_sync(mode, b)
        if _devices(split) == {"meta", "cpu"}:
            warnings.warn(f"ComfyUI {version}: a partial load with {budget} bytes left every {mode} sync weight on "
                          f"{next(iter(devices))} (no split); the split case is checked at {b} bytes, the smallest budget "
                          f"(step {step}) that splits the layers on this release.")
            _assert_block_runs_where_the_layers_are(split, mode)
            return
    warnings.warn(f"ComfyUI {version}: no budget up to {4 * sum(sizes)} bytes splits the {mode} sync layers across "
                  f"devices; only the unsplit behaviour was checked.")


def test_native_grid_sync_file_errors(comfy, pack, base, sync_files, tmp_path):
    from importlib import import_module

    import folder_paths

    from fourd_core.models.sync import GridSync, save_sync_weights

    errors = import_module(pack.__name__ + ".fourd_core.errors")     # the pack as ComfyUI imports it
    InputError, WeightsError = errors.InputError, errors.WeightsError
    node = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]()
    stock = comfy.sd.load_diffusion_model(str(base))
    with pytest.raises(WeightsError, match="holds 'hard' sync weights.*Choose mode 'hard'"):
        node.patch(stock, V, "soft", sync_weights="tiny_hard_sync.safetensors")
    with pytest.raises(InputError, match="for mode 'hard' or 'soft'"):
        node.patch(stock, V, "fused", sync_weights="tiny_hard_sync.safetensors")
    save_sync_weights(GridSync("hard", 3, 64), sync_files / "other_model_sync.safetensors")
    with pytest.raises(WeightsError, match="3 blocks of width 64.*this MODEL has 2 blocks of width 256.*trained for "
                                           "this base model"):
        node.patch(stock, V, "hard", sync_weights="other_model_sync.safetensors")
    assert folder_paths.get_full_path("fourd_sync", "other_model_sync.safetensors")


@pytest.mark.parametrize("backend", ["gather", "dense", "flex"])
def test_native_fused_grid_matches_diffusers_fused_engine(comfy, pack, base, backend):
    from fourd_core.kernels.fused import flex_available
    from fourd_core.models.grid_fused import FusedEngine

    if backend == "flex" and not flex_available():
        pytest.skip("no flex attention in this torch")
    inp = grid_inputs(pack)
    stock = comfy.sd.load_diffusion_model(str(base))
    fused = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]().patch(stock, V, "fused", fused_backend=backend)[0]
    v_native = grid_velocity(comfy, fused, inp)
    v_diffusers = diffusers_velocity(FusedEngine(diffusers_transformer(base), backend), inp)
    print(f"native fused grid ({backend}) vs diffusers fused: max abs diff {(v_native - v_diffusers).abs().max():.2e}")
    torch.testing.assert_close(v_native, v_diffusers, rtol=1e-4, atol=1e-4)
    v_rows = grid_velocity(comfy, pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]().patch(stock, V, "rows")[0], inp)
    assert (v_rows - v_native).abs().max() > 1e-3
    # the loaded MODEL is untouched: an unpatched clone gives the stock prediction bit for bit
    v_stock = grid_velocity(comfy, stock, inp)
    assert torch.equal(grid_velocity(comfy, stock.clone(), inp), v_stock)
    assert not stock.get_wrappers("diffusion_model", "fourd_grid_native")


def test_known_latent_pasting_with_core_sampler_matches_diffusers_window_loop(comfy, pack, base):
    """Three Euler steps from sigma 1 with a noise_mask (core sampler, KSamplerX0Inpaint) against
    :func:`denoise_window` with ``replace_known`` on the same noise, condition and known frames."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fourd_core.models.grid_streams import TwoStreamEngine
    from fourd_core.native.layout import known_noise_mask, latent_stats
    from fourd_core.pipelines.grid import denoise_window

    inp = grid_inputs(pack, seed=3)
    full = torch.zeros(V, LAT_T, dtype=torch.bool)
    full[0], full[1, 0] = True, True                    # row 0 and the hole-free freeze-time frame of row 1
    noise = inp["x"]
    stock = comfy.sd.load_diffusion_model(str(base))
    grid = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]().patch(stock, V, "soft_avg")[0]
    sigmas = [1.0, 0.7, 0.4]
    pos, neg = [[inp["text"], dict(inp["values"])]], [[inp["neg"], dict(inp["values"])]]
    out = comfy.sample.sample_custom(grid, noise, 5.0, comfy.samplers.sampler_object("euler"),
                                     torch.tensor(sigmas + [0.0]), pos, neg, inp["cond_raw"],
                                     noise_mask=known_noise_mask(full, LAT_H, LAT_W), disable_pbar=True, seed=0)
    mean, std = latent_stats(out)
    native = (out - mean) / std                         # core returns raw latents; the diffusers loop normalised ones

    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=sigmas)
    cond = (inp["cond_raw"] - mean) / std
    engine = TwoStreamEngine(diffusers_transformer(base), "soft_avg")
    with engine.installed():
        ref = denoise_window(engine, scheduler, noise, cond, inp["known"], full, inp["text"], inp["neg"], inp["clip"],
                             5.0, True, torch.float32)
    print(f"native grid + noise_mask (3 Euler steps) vs diffusers window loop: max abs diff {(native - ref).abs().max():.2e}")
    torch.testing.assert_close(native, ref, rtol=1e-4, atol=1e-4)
    keep = full[:, None, :, None, None].expand_as(cond)
    torch.testing.assert_close(native[keep], cond[keep], rtol=1e-5, atol=1e-5)   # known frames come back
    assert (native[~keep] - cond[~keep]).abs().mean() > 0.1


def test_ksampler_seed_plus_k_is_the_diffusers_window_noise(comfy):
    """FourD Grid Window (native) tells users to give window k the KSampler seed 42 + k: core's noise
    for that seed is the diffusers grid sampler's noise of window k (CPU generator seeded seed + k)."""
    from diffusers.utils.torch_utils import randn_tensor

    latent = torch.zeros(V, 16, LAT_T, LAT_H, LAT_W)
    for k in range(2):
        ref = randn_tensor(tuple(latent.shape), generator=torch.Generator("cpu").manual_seed(42 + k), device="cpu",
                           dtype=torch.float32)
        assert torch.equal(comfy.sample.prepare_noise(latent, 42 + k), ref)
