"""Spec tests: what the pipeline actually feeds the DiT, against the 4DNeX formulas computed here.

Formulas (4dnex.md sections 1-6 and 12): plane X = 2j/(W-1)-1, Y = 2i/(H-1)-1, Z = -Y; mask 1 on the
RGB half and 0.5 on the XYZ half of latent frame 0 in all 4 channels; input [noise | mask | cond];
domain embedding row 0 on RGB tokens, row 1 on XYZ tokens after the patch embedding; RoPE positions
of the half width duplicated; prompt suffix " POINTMAP_STYLE."; CLIP of the RGB image only; CFG on
text only; XYZ de-normalisation x1.70 - 0.13 before the VAE's.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fourd_core.pipelines.xyz_init import sloped_plane
from fourd_core.io.images import prepare_image
from fourd_core.pipelines.conditioning import condition_mask
from fourd_core.pipelines.fourdnex import SamplingConfig, decode_6d, generate_latents

H, W, FRAMES = 32, 48, 9  # per modality; latent 4 x 6 per half, 3 latent frames
PROMPT = "a snowman in front of a ride"


def test_sloped_plane_matches_formula():
    h, w = 7, 11
    got = sloped_plane(h, w).numpy()
    for i in range(h):
        for j in range(w):
            x, y = 2 * j / (w - 1) - 1, 2 * i / (h - 1) - 1
            assert np.allclose(got[i, j], [x, y, -y], atol=1e-6)
    assert got[0, 0, 2] == pytest.approx(1.0) and got[-1, 0, 2] == pytest.approx(-1.0)  # far at the top


def test_condition_mask_formula():
    m = condition_mask(2, 13, 5, 12)
    assert m.shape == (2, 4, 4, 5, 12)
    for c in range(4):
        for t in range(4):
            for x in range(12):
                want = (1.0 if x < 6 else 0.5) if t == 0 else 0.0
                assert torch.all(m[:, c, t, :, x] == want)


class Capture:
    """Records every transformer call (kwargs) and the inputs/rope of block 0."""

    def __init__(self, pipe):
        self.calls, self.block0 = [], []
        t = pipe.transformer
        self.handles = [
            t.register_forward_pre_hook(self._top, with_kwargs=True),
            t.blocks[0].register_forward_pre_hook(self._blk, with_kwargs=True),
        ]

    def _top(self, mod, args, kwargs):
        self.calls.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()})

    def _blk(self, mod, args, kwargs):
        hs, ehs, temb, rope = args
        self.block0.append((hs.detach().clone(), tuple(r.detach().clone() for r in rope)))

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def run(tiny_pipe, example_image):
    image = prepare_image(example_image, H, W)
    cfg = SamplingConfig(num_frames=FRAMES, height=H, width=W, steps=2, seed=7)
    cap = Capture(tiny_pipe)
    try:
        latents = generate_latents(tiny_pipe, image, PROMPT, cfg)
    finally:
        cap.close()
    return {"image": image, "cfg": cfg, "cap": cap, "latents": latents}


def test_two_dit_calls_per_step_cfg_on_text_only(run, tiny_pipe):
    calls = run["cap"].calls
    assert len(calls) == 2 * run["cfg"].steps
    cond, uncond = calls[0], calls[1]
    assert torch.equal(cond["hidden_states"], uncond["hidden_states"])
    assert torch.equal(cond["encoder_hidden_states_image"], uncond["encoder_hidden_states_image"])
    with torch.no_grad():
        expected_cond = tiny_pipe._get_t5_prompt_embeds(PROMPT + " POINTMAP_STYLE.", max_sequence_length=512)
        expected_uncond = tiny_pipe._get_t5_prompt_embeds("", max_sequence_length=512)
    assert torch.allclose(cond["encoder_hidden_states"], expected_cond, atol=1e-5)
    assert torch.allclose(uncond["encoder_hidden_states"], expected_uncond, atol=1e-5)
    assert not torch.allclose(cond["encoder_hidden_states"], expected_uncond, atol=1e-3)
    assert cond["encoder_hidden_states"].shape[1] == 512


def test_clip_features_from_rgb_image_only(run, tiny_pipe):
    from PIL import Image

    arr = (run["image"].numpy() * 255 + 0.5).astype(np.uint8)
    px = tiny_pipe.image_processor(images=Image.fromarray(arr), return_tensors="pt")
    with torch.no_grad():
        want = tiny_pipe.image_encoder(**px, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(run["cap"].calls[0]["encoder_hidden_states_image"], want, atol=1e-6)


def test_input_layout_noise_mask_condition(run, tiny_pipe):
    x = run["cap"].calls[0]["hidden_states"]
    T, h, w2 = (FRAMES - 1) // 4 + 1, H // 8, 2 * W // 8
    assert x.shape == (1, 36, T, h, w2)
    # channels 0:16 - float32 randn from a CPU generator seeded with the seed
    noise = torch.randn((1, 16, T, h, w2), generator=torch.Generator("cpu").manual_seed(7), dtype=torch.float32)
    assert torch.allclose(x[:, :16], noise)
    # channels 16:20 - the mask
    for t in range(T):
        want = torch.zeros(h, w2)
        if t == 0:
            want[:, : w2 // 2] = 1.0
            want[:, w2 // 2:] = 0.5
        for c in range(16, 20):
            assert torch.equal(x[0, c, t], want)
    # channels 20:36 - VAE mode of [RGB | plane] then gray frames, VAE-normalised (not modality-normalised)
    img = torch.from_numpy(np.asarray((run["image"].numpy() * 255 + 0.5).astype(np.uint8))).float() / 255
    rgb = img.permute(2, 0, 1) * 2 - 1
    ii = torch.arange(H, dtype=torch.float32).view(H, 1).expand(H, W)
    jj = torch.arange(W, dtype=torch.float32).view(1, W).expand(H, W)
    plane = torch.stack([2 * jj / (W - 1) - 1, 2 * ii / (H - 1) - 1, 1 - 2 * ii / (H - 1)])
    video = torch.zeros(1, 3, FRAMES, H, 2 * W)
    video[0, :, 0] = torch.cat([rgb, plane], dim=-1)
    vae = tiny_pipe.vae
    with torch.no_grad():
        z = vae.encode(video).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    assert torch.allclose(x[:, 20:], (z - mean) / std, atol=1e-4)


def test_rope_positions_shared_across_halves(run, tiny_pipe):
    _, (cos, sin) = run["cap"].block0[0]
    T, hh, ww = (FRAMES - 1) // 4 + 1, H // 16, 2 * W // 16  # token grid
    d = tiny_pipe.transformer.config.attention_head_dim
    dh = 2 * (d // 6)
    dt = d - 2 * dh
    cos = cos.reshape(T, hh, ww, d).double()
    sin = sin.reshape(T, hh, ww, d).double()

    def angles(pos, dim):  # interleaved (repeat_interleave) real RoPE angles, theta = 10000
        freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        return (pos * freqs).repeat_interleave(2)

    for t in range(T):
        for i in range(hh):
            for j in range(ww):
                jj = j % (ww // 2)  # the XYZ half reuses the RGB half's column positions
                ang = torch.cat([angles(t, dt), angles(i, dh), angles(jj, dh)])
                assert torch.allclose(cos[t, i, j], torch.cos(ang), atol=1e-6)
                assert torch.allclose(sin[t, i, j], torch.sin(ang), atol=1e-6)


def test_domain_embeddings_added_after_patch_embedding(run, tiny_pipe):
    tr = tiny_pipe.transformer
    x = run["cap"].calls[0]["hidden_states"].to(tr.patch_embedding.weight.dtype)
    tokens, _ = run["cap"].block0[0]
    conv = F.conv3d(x, tr.patch_embedding.weight, tr.patch_embedding.bias, stride=(1, 2, 2))  # [1, C, T, h, w]
    e = tr.learnable_domain_embeddings
    assert e.abs().sum() > 0  # the tiny release ships non-zero embeddings
    half = conv.shape[-1] // 2
    want = conv.clone()
    want[..., :half] += e[0].view(1, -1, 1, 1, 1)
    want[..., half:] += e[1].view(1, -1, 1, 1, 1)
    assert torch.allclose(tokens, want.flatten(2).transpose(1, 2), atol=1e-5)


def test_unipc_flow_shift_schedule(run):
    shift, n = 3.0, run["cfg"].steps
    s = np.linspace(1.0, 1.0 / 1000, n + 1)[:-1]
    want = 1000 * shift * s / (1 + (shift - 1) * s)
    got = [float(c["timestep"][0]) for c in run["cap"].calls[::2]]
    assert np.allclose(got, want, atol=1.0)


def test_latents_output_shape(run):
    T = (FRAMES - 1) // 4 + 1
    assert run["latents"].shape == (1, 16, T, H // 8, 2 * W // 8)
    assert run["latents"].dtype == torch.float32


def test_decode_denormalisation_chain(tiny_pipe):
    torch.manual_seed(3)
    lat = torch.randn(1, 16, 3, 4, 12)
    rgb, xyz = decode_6d(tiny_pipe, lat)
    vae = tiny_pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)

    def dec(z):
        with torch.no_grad():
            x = vae.decode(z * std + mean).sample.clamp(-1, 1)
        return (x[0].permute(1, 2, 3, 0) + 1) / 2

    assert torch.allclose(rgb, dec(lat[..., :6]), atol=1e-5)
    assert torch.allclose(xyz, dec(lat[..., 6:] * 1.70 - 0.13), atol=1e-5)
    assert rgb.shape == xyz.shape == (9, 32, 48, 3)


def test_separate_decode_has_no_seam_leak(tiny_pipe):
    torch.manual_seed(4)
    lat = torch.randn(1, 16, 3, 4, 12)
    other = lat.clone()
    other[..., :6] = torch.randn(1, 16, 3, 4, 6)  # change only the RGB half
    _, xyz_a = decode_6d(tiny_pipe, lat)
    _, xyz_b = decode_6d(tiny_pipe, other)
    assert torch.equal(xyz_a, xyz_b)
    _, joint_a = decode_6d(tiny_pipe, lat, joint=True)
    _, joint_b = decode_6d(tiny_pipe, other, joint=True)
    assert not torch.allclose(joint_a, joint_b)  # the official joint decode leaks across the seam


def test_patches_off_is_the_stock_model(tiny_base):
    from diffusers import WanTransformer3DModel

    from fourd_core.models.patches import apply_fourdnex_patches, set_fourdnex_enabled

    stock = WanTransformer3DModel.from_pretrained(tiny_base, subfolder="transformer").eval()
    patched = WanTransformer3DModel.from_pretrained(tiny_base, subfolder="transformer").eval()
    apply_fourdnex_patches(patched, torch.randn(2, 24))
    x = torch.randn(1, 36, 2, 4, 8)
    kw = dict(timestep=torch.tensor([300.0]), encoder_hidden_states=torch.randn(1, 512, 32),
              encoder_hidden_states_image=torch.randn(1, 5, 32))
    with torch.no_grad():
        on = patched(x, **kw).sample
        set_fourdnex_enabled(patched, False)
        off = patched(x, **kw).sample
        ref = stock(x, **kw).sample
    assert torch.equal(off, ref)
    assert not torch.allclose(on, ref)


def test_sampling_is_seed_deterministic(tiny_pipe, example_image):
    image = prepare_image(example_image, H, W)
    cfg = SamplingConfig(num_frames=5, height=H, width=W, steps=2, seed=11)
    a = generate_latents(tiny_pipe, image, PROMPT, cfg)
    b = generate_latents(tiny_pipe, image, PROMPT, cfg)
    assert torch.equal(a, b)
    c = generate_latents(tiny_pipe, image, PROMPT, SamplingConfig(num_frames=5, height=H, width=W, steps=2, seed=12))
    assert not torch.allclose(a, c)


def test_cancel_from_callback(tiny_pipe, example_image):
    from fourd_core.errors import CancelledError
    from fourd_core.pipelines.fourdnex import cancel_check_callback

    image = prepare_image(example_image, H, W)
    seen = []

    def cb(step, total, latents):
        seen.append(step)
        cancel_check_callback(lambda: step >= 2)(step, total, latents)

    with pytest.raises(CancelledError):
        generate_latents(tiny_pipe, image, PROMPT, SamplingConfig(num_frames=5, height=H, width=W, steps=5), callback=cb)
    assert seen == [1, 2]


def test_bad_sampling_config():
    from fourd_core.errors import InputError

    for bad in (dict(num_frames=48), dict(height=100), dict(scheduler="ddim"), dict(shift=0.0), dict(steps=0)):
        with pytest.raises(InputError):
            SamplingConfig(**bad).validate()


@pytest.mark.parametrize("batch_halves", [True, False])
def test_decode_paths_equal_the_stock_decoder_and_stop_between_latent_frames(tiny_pipe, batch_halves):
    """Batched halves and the CPU norm path are an implementation detail: the result must equal the
    stock diffusers decode of each half (second implementation), and a cancel raised from the
    callback must stop the decode before the next latent frame."""
    from fourd_core.errors import CancelledError

    torch.manual_seed(5)
    lat = torch.randn(1, 16, 4, 4, 12)
    vae = tiny_pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        ref = [(vae.decode(z * std + mean).sample.clamp(-1, 1)[0].permute(1, 2, 3, 0) + 1) / 2
               for z in (lat[..., :6], lat[..., 6:] * 1.70 - 0.13)]
    seen = []
    rgb, xyz = decode_6d(tiny_pipe, lat, batch_halves=batch_halves, callback=lambda d, t: seen.append((d, t)))
    torch.testing.assert_close(rgb, ref[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(xyz, ref[1], atol=2e-5, rtol=0)
    total = 4 if batch_halves else 8  # one decoder call per latent frame (per half when not batched)
    assert seen[-1] == (total, total) and [d for d, _ in seen[:-1]] == list(range(total))

    calls = []
    hook = vae.decoder.register_forward_hook(lambda *a: calls.append(1))

    def cancel(done, total):
        if done == 2:
            raise CancelledError("stop")

    try:
        with pytest.raises(CancelledError):
            decode_6d(tiny_pipe, lat, batch_halves=batch_halves, callback=cancel)
    finally:
        hook.remove()
    assert len(calls) == 2  # frames 0 and 1 decoded, frame 2 never started
    assert not any(type(m).__name__ == "WanRMS_norm" and "forward" in vars(m) for m in vae.modules())  # restored
