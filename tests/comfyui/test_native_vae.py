"""Decode 6D (native) with ComfyUI's real VAE class against the diffusers decode, on the same
full-size (random) Wan2.1 VAE weights; and the native condition encode against diffusers'."""

from __future__ import annotations

import json

import pytest
import torch

from comfy_fixtures import comfy, pack  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def vae_file(comfy, tmp_path_factory):
    from safetensors.torch import save_file

    from comfy.ldm.wan.vae import WanVAE

    torch.manual_seed(0)
    model = WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                   temperal_downsample=[False, True, True])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # comfy.ops layers skip weight init: fill every tensor ourselves
        for name, p in model.state_dict().items():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5))
            elif name.endswith("gamma"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("vae") / "wan_2.1_vae_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def vaes(comfy, vae_file):
    from comfy.utils import load_torch_file

    from fourd_core.models.loading import PACKAGED_CONFIGS, load_vae_file

    native = comfy.sd.VAE(sd=load_torch_file(str(vae_file)))
    diffusers_vae = load_vae_file(vae_file, json.loads((PACKAGED_CONFIGS / "vae.json").read_text()))
    return native, diffusers_vae


def test_latent_format_constants_match_comfy(comfy):
    from comfy.latent_formats import Wan21

    from fourd_core.native.layout import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD

    fmt = Wan21()
    assert fmt.latents_mean.flatten().tolist() == pytest.approx(WAN21_LATENTS_MEAN)
    assert fmt.latents_std.flatten().tolist() == pytest.approx(WAN21_LATENTS_STD)


def test_decode_6d_native_equals_diffusers_decode(comfy, pack, vaes):
    import types

    from fourd_core.native.layout import latent_stats
    from fourd_core.pipelines.fourdnex import decode_6d

    native, diffusers_vae = vaes
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1, 16, 2, 4, 8, generator=g)          # the model's (normalised) space, fused width
    mean, std = latent_stats(z)
    raw = z * std + mean                                  # what a ComfyUI sampler returns
    rgb, xyz, scene = pack.NODE_CLASS_MAPPINGS["FourDDecode6DNative"]().decode(native, {"samples": raw}, False)
    pipe = types.SimpleNamespace(vae=diffusers_vae, maybe_free_model_hooks=lambda: None)
    rgb_d, xyz_d = decode_6d(pipe, z)
    assert rgb.shape == rgb_d.shape == (5, 32, 32, 3)
    print(f"Decode 6D native vs diffusers: max abs diff rgb {(rgb - rgb_d).abs().max():.2e}, "
          f"xyz {(xyz - xyz_d).abs().max():.2e}")
    torch.testing.assert_close(rgb, rgb_d, rtol=0, atol=2e-4)
    torch.testing.assert_close(xyz, xyz_d, rtol=0, atol=2e-4)
    assert (rgb - xyz).abs().max() > 1e-2                  # the halves really differ
    assert scene.rgb.shape == rgb.shape


def test_condition_encode_matches_diffusers(comfy, pack, vaes):
    from fourd_core.pipelines.fourdnex import FourDNeXPipeline

    native, diffusers_vae = vaes
    g = torch.Generator().manual_seed(6)
    image = torch.rand(1, 32, 32, 3, generator=g)
    cvo = pack.nodes.native.demo_standins.clip_vision_output(torch.zeros(1, 257, 1280))
    pos, neg, latent = pack.NODE_CLASS_MAPPINGS["FourD4DNeXConditioningNative"]().encode(
        [[torch.zeros(1, 4, 4096), {}]], [[torch.zeros(1, 4, 4096), {}]], native, cvo, image, 5, 1)
    concat = pos[0][1]["concat_latent_image"]
    assert neg[0][1]["concat_latent_image"] is concat and latent["samples"].shape == concat.shape
    pipe = FourDNeXPipeline(tokenizer=None, text_encoder=None, vae=diffusers_vae, scheduler=None, image_processor=None,
                            image_encoder=None, transformer=None)
    with torch.no_grad():
        _, cond = pipe.prepare_latents(image.permute(0, 3, 1, 2) * 2 - 1, 1, 16, 32, 32, 5, torch.float32,
                                       torch.device("cpu"))
    from fourd_core.native.layout import latent_stats

    mean, std = latent_stats(concat)
    torch.testing.assert_close((concat - mean) / std, cond[:, 4:], rtol=0, atol=1e-4)
