"""The trainer's output files (``fourd_core.training.outputs.write_outputs``) in the native ComfyUI path.

For each objective (sync layers, fused-attention LoRA, 4DNeX LoRA + domain embeddings) the objective is built
on the diffusers reading of the native tiny Wan file, trained for two AdamW steps on a random batch shaped like
the trainer's dataclasses (a real ``objective(batch, step)`` forward and backward), and written exactly as the
runner writes it. The files are then picked from registered ComfyUI model folders in the native nodes' lists,
loaded by the nodes, and ComfyUI's CFG velocity is compared with two diffusers predictions: the objective's own
(the trained tensors in memory) and the loaders' reading of the written files (``load_sync_weights`` /
``read_fused_lora`` + ``FusedEngine`` / ``load_fourdnex_release``). The untrained model must differ clearly.
"""

from __future__ import annotations

import pytest
import torch

from comfy_fixtures import comfy, pack  # noqa: F401  (fixtures)

from test_native_denoiser import FRAMES, H, SIGMA, W, native_velocity
from test_native_grid import LAT_H, LAT_T, LAT_W, V, diffusers_transformer, diffusers_velocity, grid_inputs, grid_velocity

TOL = dict(rtol=1e-4, atol=1e-4)
RANK, ALPHA = 8, 16.0          # alpha / rank = 2: not the release's 0.5, so the B pre-scaling is exercised


@pytest.fixture(scope="module")
def base(comfy, tmp_path_factory):
    from fourd_core.native.tiny_wan import TINY_MODEL_NAME, save_native_tiny

    files = save_native_tiny(tmp_path_factory.mktemp("trained_tiny"))
    return files / "diffusion_models" / TINY_MODEL_NAME


@pytest.fixture(scope="module")
def stock(comfy, base):
    return comfy.sd.load_diffusion_model(str(base))


def train_config(objective: str, **kw):
    from fourd_core.training.config import TrainConfig

    return TrainConfig(objective=objective, cache="unused-cache", out="unused-out", lora_rank=RANK, lora_alpha=ALPHA,
                       seed=5, **kw)


def train_two_steps(objective, batch, lr: float = 0.05) -> list[float]:
    """Two AdamW steps of the objective's loss on ``batch`` (as the runner's inner loop, without accelerate)."""
    params = list(objective.trainable_state().values())
    assert params and all(p.requires_grad for p in params)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for step in range(2):
        loss = objective(batch, step)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all((p.detach() - b).abs().max() > 1e-3 for p, b in zip(params, before)), "a trained tensor did not move"
    return losses


def write_like_the_runner(objective, folder, cfg):
    from fourd_core.training.outputs import write_outputs

    return write_outputs(objective, objective.trainable_state(), folder, cfg)


def grid_batch(seed: int = 21):
    """A one-sample batch of :class:`GridLatentSample` (the window size of the native grid tests)."""
    from fourd_core.training.data.datasets import GridLatentSample, collate_latent_samples

    g = torch.Generator().manual_seed(seed)
    known = torch.zeros(V, LAT_T, dtype=torch.bool)
    known[0], known[1:, 0] = True, True
    mask = torch.zeros(V, 4, LAT_T, LAT_H, LAT_W)
    mask[known[:, None, :, None, None].expand_as(mask)] = 1.0
    sample = GridLatentSample(
        name="grid0", latents=torch.randn(V, 16, LAT_T, LAT_H, LAT_W, generator=g),
        condition=torch.randn(V, 16, LAT_T, LAT_H, LAT_W, generator=g), mask=mask, known=known,
        valid=torch.ones(V, LAT_T, LAT_H, LAT_W), clip_rows=torch.randn(V, 257, 1280, generator=g),
        clip_cols=torch.randn(LAT_T, 257, 1280, generator=g), text_embeds=torch.randn(512, 4096, generator=g) * 0.5,
        text_tokens=12, prompt="a grid")
    return collate_latent_samples([sample])


def register(folder_kind: str, folder) -> None:
    import folder_paths

    folder_paths.add_model_folder_path(folder_kind, str(folder))


# ----------------------------------------------------------------------------------------------
# sync layers -> FourD Grid Model (native) sync_weights
@pytest.mark.parametrize("mode,rank", [("hard", 0), ("soft", 0), ("soft", 4)])
def test_trained_sync_weights_in_native_grid_match_diffusers(comfy, pack, base, stock, tmp_path, mode, rank):
    from fourd_core.models.grid_streams import TwoStreamEngine
    from fourd_core.models.sync import load_sync_weights
    from fourd_core.training.objectives import SyncObjective

    cfg = train_config("sync", sync_mode=mode, sync_rank=rank)
    transformer = diffusers_transformer(base)
    objective = SyncObjective(transformer, cfg)
    inp = grid_inputs(pack)
    v_untrained = diffusers_velocity(objective.engine(), inp)
    train_two_steps(objective, grid_batch())
    v_trained = diffusers_velocity(objective.engine(), inp)          # the trained layers in memory

    root = tmp_path / "fourd_sync"
    run = f"run_{mode}_{rank}"
    files = write_like_the_runner(objective, root / run, cfg)
    assert [f.name for f in files] == ["sync_weights.safetensors"]
    register("fourd_sync", root)
    name = f"{run}/sync_weights.safetensors"
    node = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]
    assert name in node.INPUT_TYPES()["optional"]["sync_weights"][0]

    v_native = grid_velocity(comfy, node().patch(stock, V, mode, sync_weights=name)[0], inp)
    v_file = diffusers_velocity(TwoStreamEngine(transformer, mode, load_sync_weights(files[0], transformer, mode)), inp)
    print(f"trained {mode} sync (rank {rank or 'full'}): native vs diffusers(file) {(v_native - v_file).abs().max():.2e}, "
          f"vs diffusers(in memory) {(v_native - v_trained).abs().max():.2e}, trained vs untrained "
          f"{(v_trained - v_untrained).abs().max():.2e}")
    torch.testing.assert_close(v_file, v_trained, **TOL)
    torch.testing.assert_close(v_native, v_file, **TOL)
    assert (v_native - v_untrained).abs().max() > 1e-2                # training changed the prediction
    v_none = grid_velocity(comfy, node().patch(stock, V, mode)[0], inp)
    assert (v_none - v_native).abs().max() > 1e-2                     # and the native node really loaded the file


# ----------------------------------------------------------------------------------------------
# fused-attention LoRA -> FourD Grid Model (native) fused_lora / fused_lora_strength
@pytest.fixture(scope="module")
def fused_run(comfy, pack, base, tmp_path_factory):
    """A fused objective trained two steps, written as the runner writes it into a registered loras folder."""
    from fourd_core.training.objectives import FusedObjective

    cfg = train_config("fused", fused_backend="gather")
    objective = FusedObjective(diffusers_transformer(base), cfg)
    inp = grid_inputs(pack)
    v_untrained = diffusers_velocity(objective.engine(), inp)
    train_two_steps(objective, grid_batch())
    v_trained = diffusers_velocity(objective.engine(), inp)          # the training adapter (alpha / rank) in memory
    root = tmp_path_factory.mktemp("loras_fused")
    files = write_like_the_runner(objective, root / "tiny_run", cfg)
    assert [f.name for f in files] == ["fused_lora.safetensors"]
    register("loras", root)
    return {"file": files[0], "name": "tiny_run/fused_lora.safetensors", "inp": inp, "v_untrained": v_untrained,
            "v_trained": v_trained}


def fused_native(comfy, pack, stock, inp, **kw):
    node = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]()
    return grid_velocity(comfy, node.patch(stock, V, "fused", fused_backend="gather", **kw)[0], inp)


def fused_diffusers(base, inp, file=None, strength=1.0):
    from fourd_core.models.fused_lora import read_fused_lora
    from fourd_core.models.grid_fused import FusedEngine

    transformer = diffusers_transformer(base)
    lora = None if file is None else read_fused_lora(file, transformer)
    return diffusers_velocity(FusedEngine(transformer, "gather", lora=lora, lora_strength=strength), inp)


def test_trained_fused_lora_is_listed_for_the_native_grid(comfy, pack, fused_run):
    from fourd_core.models.fused_lora import FORMAT
    from safetensors import safe_open

    node = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]
    assert fused_run["name"] in node.INPUT_TYPES()["optional"]["fused_lora"][0]
    with safe_open(str(fused_run["file"]), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT and meta["rank"] == str(RANK) and float(meta["alpha"]) == ALPHA


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_trained_fused_lora_in_native_grid_matches_diffusers(comfy, pack, base, stock, fused_run, strength):
    inp = fused_run["inp"]
    v_native = fused_native(comfy, pack, stock, inp, fused_lora=fused_run["name"], fused_lora_strength=strength)
    v_file = fused_diffusers(base, inp, fused_run["file"], strength)
    print(f"trained fused LoRA at {strength}: native vs diffusers FusedEngine(lora=file) "
          f"{(v_native - v_file).abs().max():.2e}, vs untrained {(v_native - fused_run['v_untrained']).abs().max():.2e}")
    torch.testing.assert_close(v_native, v_file, **TOL)
    if strength == 1.0:           # the file at strength 1 is the adapter as trained (alpha / rank folded into B)
        torch.testing.assert_close(v_file, fused_run["v_trained"], **TOL)
    assert (v_native - fused_run["v_untrained"]).abs().max() > 1e-2


def test_fused_lora_strength_zero_is_no_lora(comfy, pack, base, stock, fused_run):
    inp = fused_run["inp"]
    v_none = fused_native(comfy, pack, stock, inp)
    v_zero = fused_native(comfy, pack, stock, inp, fused_lora=fused_run["name"], fused_lora_strength=0.0)
    torch.testing.assert_close(v_zero, v_none, rtol=0, atol=1e-6)
    torch.testing.assert_close(v_none, fused_run["v_untrained"], **TOL)         # no LoRA = the untrained model
    torch.testing.assert_close(fused_diffusers(base, inp, fused_run["file"], 0.0), fused_diffusers(base, inp),
                               rtol=0, atol=1e-6)


def test_fused_lora_is_refused_by_native_apply_4dnex(comfy, pack, stock, fused_run):
    """The fused-attention LoRA has the 4DNeX key layout and shows in FourD Apply 4DNeX (native)'s list (a file
    in models/loras, its folder has a ``*lora*.safetensors``); picked there it is refused, naming its use."""
    from importlib import import_module

    WeightsError = import_module(pack.__name__ + ".fourd_core.errors").WeightsError
    node = pack.NODE_CLASS_MAPPINGS["FourDApply4DNeXNative"]
    listed = node.INPUT_TYPES()["required"]["release"][0]
    for name in (fused_run["name"], "tiny_run"):
        assert name in listed
        with pytest.raises(WeightsError, match="fused view-time attention.*FourD Grid Model \\(native\\)"):
            node().apply(stock, name, "(beside the LoRA)", 1.0)


# ----------------------------------------------------------------------------------------------
# 4DNeX LoRA + domain embeddings -> FourD Apply 4DNeX (native)
def fourdnex_batch(seed: int = 31):
    """A one-sample batch of :class:`FourDNeXLatentSample` (one modality 32 x 32: latent 4 x 8 fused)."""
    from fourd_core.training.data.datasets import FourDNeXLatentSample, collate_latent_samples

    g = torch.Generator().manual_seed(seed)
    t, h, w2 = (FRAMES - 1) // 4 + 1, H // 8, 2 * W // 8
    mask = torch.zeros(4, t, h, w2)
    mask[:, 0, :, : w2 // 2], mask[:, 0, :, w2 // 2:] = 1.0, 0.5
    sample = FourDNeXLatentSample(
        name="clip0", target=torch.randn(16, t, h, w2, generator=g), condition=torch.randn(16, t, h, w2, generator=g),
        mask=mask, clip=torch.randn(257, 1280, generator=g), text_embeds=torch.randn(512, 4096, generator=g) * 0.5,
        text_tokens=9, image=torch.rand(H, W, 3, generator=g), prompt="a clip POINTMAP_STYLE.")
    return collate_latent_samples([sample])


def fourdnex_inputs():
    g = torch.Generator().manual_seed(123)
    return {"image": torch.rand(H, W, 3, generator=g), "x": torch.randn(1, 16, 2, H // 8, 2 * W // 8, generator=g),
            "text": torch.randn(1, 512, 4096, generator=g) * 0.5, "neg_text": torch.randn(1, 512, 4096, generator=g) * 0.5,
            "clip": torch.randn(1, 257, 1280, generator=g)}


def fourdnex_diffusers_velocity(transformer, inputs):
    """CFG 5 velocity of a diffusers (4DNeX-patched) transformer on the pipeline's own condition."""
    from fourd_core.native.tiny_wan import TinyWanVAE
    from fourd_core.pipelines.fourdnex import FourDNeXPipeline

    pipe = FourDNeXPipeline(tokenizer=None, text_encoder=None, vae=TinyWanVAE(0).model, scheduler=None,
                            image_processor=None, image_encoder=None, transformer=transformer)
    img = inputs["image"].permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        lat, cond = pipe.prepare_latents(img, 1, 16, H, W, FRAMES, torch.float32, torch.device("cpu"), latents=inputs["x"])
        hidden, t = torch.cat([lat, cond], dim=1), torch.tensor([SIGMA * 1000.0])

        def v(text):
            return transformer(hidden_states=hidden, timestep=t, encoder_hidden_states=text,
                               encoder_hidden_states_image=inputs["clip"], return_dict=False)[0]

        v_c, v_u = v(inputs["text"]), v(inputs["neg_text"])
    return v_u + 5.0 * (v_c - v_u)


def test_trained_4dnex_release_in_native_apply_matches_diffusers(comfy, pack, base, stock, tmp_path):
    from fourd_core.models.lora import LORA_WEIGHT_NAME, load_fourdnex_release
    from fourd_core.models.patches import apply_fourdnex_patches
    from fourd_core.native.tiny_wan import TinyWanVAE
    from fourd_core.pipelines.fourdnex import FourDNeXPipeline
    from fourd_core.training.objectives import LoraObjective

    cfg = train_config("lora")
    transformer = apply_fourdnex_patches(diffusers_transformer(base))     # as load_pipeline(fourdnex=None) gives it
    objective = LoraObjective(transformer, cfg)
    inputs = fourdnex_inputs()
    v_untrained = fourdnex_diffusers_velocity(objective.transformer, inputs)
    train_two_steps(objective, fourdnex_batch())
    v_trained = fourdnex_diffusers_velocity(objective.transformer, inputs)  # PEFT adapter at alpha / rank in memory

    root = tmp_path / "loras"
    files = write_like_the_runner(objective, root / "tiny_4dnex_trained", cfg)
    assert [f.name for f in files] == [LORA_WEIGHT_NAME, "learnable_domain_embeddings.safetensors"]
    register("loras", root)
    node = pack.NODE_CLASS_MAPPINGS["FourDApply4DNeXNative"]
    req = node.INPUT_TYPES()["required"]
    assert "tiny_4dnex_trained" in req["release"][0]
    assert "tiny_4dnex_trained/learnable_domain_embeddings.safetensors" in req["domain_embeddings"][0]

    nodes = pack.NODE_CLASS_MAPPINGS
    cvo = pack.nodes.native.demo_standins.clip_vision_output(inputs["clip"])
    pos, neg, latent = nodes["FourD4DNeXConditioningNative"]().encode(
        [[inputs["text"], {}]], [[inputs["neg_text"], {}]], TinyWanVAE(0), cvo, inputs["image"][None], FRAMES, 1)
    assert latent["samples"].shape == inputs["x"].shape
    v_native = {}
    for emb in ("(beside the LoRA)", "tiny_4dnex_trained/learnable_domain_embeddings.safetensors"):
        patched = node().apply(stock, "tiny_4dnex_trained", emb, 1.0)[0]
        v_native[emb] = native_velocity(comfy, patched, pos, neg, inputs["x"], cfg=5.0)
    v_nat = v_native["(beside the LoRA)"]
    torch.testing.assert_close(v_native["tiny_4dnex_trained/learnable_domain_embeddings.safetensors"], v_nat,
                               rtol=0, atol=0)

    fresh = diffusers_transformer(base)                                # the release read by the diffusers loader
    pipe = FourDNeXPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None, image_processor=None,
                            image_encoder=None, transformer=fresh)
    info = load_fourdnex_release(pipe, root / "tiny_4dnex_trained", strength=1.0, fuse=True)
    assert info["rank"] == RANK
    v_file = fourdnex_diffusers_velocity(fresh, inputs)
    print(f"trained 4DNeX release: native vs diffusers(load_fourdnex_release) {(v_nat - v_file).abs().max():.2e}, "
          f"vs diffusers(in memory) {(v_nat - v_trained).abs().max():.2e}, trained vs untrained "
          f"{(v_trained - v_untrained).abs().max():.2e}")
    torch.testing.assert_close(v_file, v_trained, **TOL)
    torch.testing.assert_close(v_nat, v_file, **TOL)
    assert (v_nat - v_untrained).abs().max() > 1e-2
