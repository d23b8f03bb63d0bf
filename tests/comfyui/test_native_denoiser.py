"""The native 4DNeX patch on ComfyUI's own WanModel against the diffusers 4DNeX path, on the same
tiny weights (written by the pack in the original Wan layout, read by ComfyUI's loader on one side
and by diffusers' converter on the other)."""

from __future__ import annotations

import pytest
import torch

from comfy_fixtures import comfy, pack  # noqa: F401  (fixtures)

SIGMA = 0.7
H, W, FRAMES = 32, 32, 5          # one modality: latent 4 x 4, fused 4 x 8, 2 latent frames


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from fourd_core.native.tiny_wan import save_native_tiny

    return save_native_tiny(tmp_path_factory.mktemp("native_tiny"))


@pytest.fixture(scope="module")
def native_stock(comfy, tiny_files):
    from fourd_core.native.tiny_wan import TINY_MODEL_NAME

    return comfy.sd.load_diffusion_model(str(tiny_files / "diffusion_models" / TINY_MODEL_NAME))


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(123)
    image = torch.rand(H, W, 3, generator=g)
    return {
        "image": image,
        "x": torch.randn(1, 16, 2, H // 8, 2 * W // 8, generator=g),
        "text": torch.randn(1, 512, 4096, generator=g) * 0.5,
        "neg_text": torch.randn(1, 512, 4096, generator=g) * 0.5,
        "clip": torch.randn(1, 257, 1280, generator=g),
    }


def native_velocity(comfy, model, positive, negative, x, cfg):
    """One evaluation of ComfyUI's CFG denoiser at ``SIGMA`` through ``comfy.sample.sample_custom``
    (a one-call custom KSAMPLER), returned as the flow velocity ``(x - denoised) / sigma``."""
    captured = {}

    def one_eval(model_k, noise, sigmas, extra_args=None, callback=None, disable=None):
        den = model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))   # as k-diffusion samplers call it
        captured["den"] = den
        return den

    sampler = comfy.samplers.KSAMPLER(one_eval)
    sigmas = torch.tensor([SIGMA, 0.0])
    comfy.sample.sample_custom(model, torch.zeros_like(x), cfg, sampler, sigmas, positive, negative, torch.zeros_like(x),
                               disable_pbar=True, seed=0)
    return (x - captured["den"]) / SIGMA


def test_native_4dnex_matches_diffusers_4dnex(comfy, pack, native_stock, tiny_files, inputs):
    from fourd_core.models.loading import load_transformer_file
    from fourd_core.models.lora import load_fourdnex_release
    from fourd_core.native.tiny_wan import TINY_DIFFUSERS_CONFIG, TINY_MODEL_NAME, TINY_RELEASE_NAME, TinyWanVAE
    from fourd_core.pipelines.fourdnex import FourDNeXPipeline

    nodes = pack.NODE_CLASS_MAPPINGS
    release = tiny_files / "loras" / TINY_RELEASE_NAME
    patched = nodes["FourDApply4DNeXNative"]().apply(native_stock, str(release), "(beside the LoRA)", 1.0)[0]
    vae = TinyWanVAE(0)
    cvo = pack.nodes.native.demo_standins.clip_vision_output(inputs["clip"])
    pos, neg, latent = nodes["FourD4DNeXConditioningNative"]().encode(
        [[inputs["text"], {}]], [[inputs["neg_text"], {}]], vae, cvo, inputs["image"][None], FRAMES, 1)
    assert latent["samples"].shape == inputs["x"].shape
    v_native = native_velocity(comfy, patched, pos, neg, inputs["x"], cfg=5.0)

    # diffusers 4DNeX: same file through diffusers' converter, release fused at 0.5, same VAE weights
    transformer, _ = load_transformer_file(tiny_files / "diffusion_models" / TINY_MODEL_NAME, TINY_DIFFUSERS_CONFIG,
                                           torch.float32)
    pipe = FourDNeXPipeline(tokenizer=None, text_encoder=None, vae=vae.model, scheduler=None, image_processor=None,
                            image_encoder=None, transformer=transformer.eval())
    load_fourdnex_release(pipe, release, strength=1.0, fuse=True)
    img = (inputs["image"].permute(2, 0, 1)[None] * 2 - 1)
    with torch.no_grad():
        lat, cond = pipe.prepare_latents(img, 1, 16, H, W, FRAMES, torch.float32, torch.device("cpu"), latents=inputs["x"])
        hidden = torch.cat([lat, cond], dim=1)
        t = torch.tensor([SIGMA * 1000.0])

        def v(text):
            return transformer(hidden_states=hidden, timestep=t, encoder_hidden_states=text,
                               encoder_hidden_states_image=inputs["clip"], return_dict=False)[0]

        v_c, v_u = v(inputs["text"]), v(inputs["neg_text"])
    v_diffusers = v_u + 5.0 * (v_c - v_u)
    print(f"native vs diffusers 4DNeX velocity: max abs diff {(v_native - v_diffusers).abs().max():.2e}, "
          f"mean |v| {v_diffusers.abs().mean():.3f}")
    assert v_native.abs().mean() > 0.1  # a lively output, not zeros
    torch.testing.assert_close(v_native, v_diffusers, rtol=1e-4, atol=1e-4)

    # without the 4DNeX patches (stock model, diffusers patches off) the two differ: the patch matters
    v_stock = native_velocity(comfy, native_stock, pos, neg, inputs["x"], cfg=5.0)
    assert (v_stock - v_native).abs().max() > 1e-2


def test_unpatched_clone_is_bit_identical_to_stock(comfy, pack, native_stock, tiny_files, inputs):
    from fourd_core.native.tiny_wan import TINY_RELEASE_NAME, TinyWanVAE

    nodes = pack.NODE_CLASS_MAPPINGS
    vae = TinyWanVAE(0)
    cvo = pack.nodes.native.demo_standins.clip_vision_output(inputs["clip"])
    pos, neg, _ = nodes["FourD4DNeXConditioningNative"]().encode(
        [[inputs["text"], {}]], [[inputs["neg_text"], {}]], vae, cvo, inputs["image"][None], FRAMES, 1)
    before = native_velocity(comfy, native_stock, pos, neg, inputs["x"], cfg=5.0)
    release = tiny_files / "loras" / TINY_RELEASE_NAME
    patched = nodes["FourDApply4DNeXNative"]().apply(native_stock, str(release), "(beside the LoRA)", 1.0)[0]
    native_velocity(comfy, patched, pos, neg, inputs["x"], cfg=5.0)         # runs with the LoRA patched in
    after = native_velocity(comfy, native_stock, pos, neg, inputs["x"], cfg=5.0)
    clone = native_velocity(comfy, native_stock.clone(), pos, neg, inputs["x"], cfg=5.0)
    assert torch.equal(before, after) and torch.equal(before, clone)
    assert patched.model_options is not native_stock.model_options
    assert not native_stock.patches and not native_stock.get_wrappers("diffusion_model", "fourd_4dnex_native")


def test_lora_changes_weights_by_half_strength_b_times_a(comfy, pack, native_stock, tiny_files):
    from safetensors.torch import load_file

    from fourd_core.native.tiny_wan import TINY_RELEASE_NAME

    release = tiny_files / "loras" / TINY_RELEASE_NAME
    raw = load_file(str(release / "pytorch_lora_weights.safetensors"))  # official diffusers key layout
    names = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
             "attn1.to_out.0": "self_attn.o", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
             "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o"}
    strength = 0.8
    patched = pack.NODE_CLASS_MAPPINGS["FourDApply4DNeXNative"]().apply(native_stock, str(release),
                                                                         "(beside the LoRA)", strength)[0]
    mm = comfy.model_management
    dm = native_stock.model.diffusion_model
    mm.unload_all_models()
    stock = {k: v.detach().clone() for k, v in dm.state_dict().items()}
    mm.load_models_gpu([patched])            # what a sampler does: LoRA patches applied at load
    try:
        now = {k: v.detach().clone() for k, v in dm.state_dict().items()}
    finally:
        mm.unload_all_models()
    checked = 0
    for block in range(2):
        for d, o in names.items():
            a = raw[f"transformer.blocks.{block}.{d}.lora_A.weight"].double()
            b = raw[f"transformer.blocks.{block}.{d}.lora_B.weight"].double()
            key = f"blocks.{block}.{o}.weight"
            delta = now[key].double() - stock[key].double()
            torch.testing.assert_close(delta, 0.5 * strength * (b @ a), rtol=1e-5, atol=1e-6)
            checked += 1
    assert checked == 16
    untouched = [k for k in now if not any(f".{o}.weight" in k for o in names.values())]
    assert untouched and all(torch.equal(now[k], stock[k]) for k in untouched)
    after = dm.state_dict()
    assert all(torch.equal(after[k], stock[k]) for k in stock)   # unpatched again
