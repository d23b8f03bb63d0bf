"""The training objectives against independent computations: which tensors train, the loss of a fixed batch
written out from the formulas (rectified flow, 4Real-Video Sec. 3.3; 4DNeX Sec. 4) with a plain call of the
diffusers transformer, and the noise draw being a function of (seed, step, sample name) only."""

from __future__ import annotations

import copy

import pytest
import torch

from fourd_core.training import runner
from fourd_core.training.data import collate_latent_samples, open_latent_dataset
from fourd_core.training.objectives import TRAIN_ADAPTER, sample_noise, sample_sigmas


def _batch(cache, n=1):
    ds = open_latent_dataset(cache)
    return collate_latent_samples([ds[i] for i in range(n)])


def _expected(objective: str, name: str) -> bool:
    if objective.startswith("sync"):
        return name.startswith("sync.")
    if objective == "fused":
        return ".lora_" in name and TRAIN_ADAPTER in name
    return (".lora_" in name and TRAIN_ADAPTER in name) or name.endswith("learnable_domain_embeddings")


@pytest.mark.parametrize("objective,mode", [("sync", "hard"), ("sync", "soft"), ("fused", None), ("lora", None)])
def test_only_the_intended_tensors_train_and_the_base_stays_bit_identical(make_cfg, objective, mode, capture_build):
    changes = {"sync_mode": mode} if mode else {}
    cfg = make_cfg(objective, steps=3, lr=1e-2, **changes)
    runner.train(cfg, log=lambda m: None)
    built = capture_build
    obj = built["obj"]
    trained = {n for n, p in obj.named_parameters() if p.requires_grad}
    key = objective + ("-" + mode if mode else "")
    assert trained and all(_expected(key, n) for n in trained), sorted(trained)[:5]
    if objective in ("fused", "lora"):   # every attention q, k, v, out of every block has its adapter
        blocks = len(obj.transformer.blocks)
        assert sum(1 for n in trained if ".lora_A." in n) == blocks * 2 * 4
    if objective == "lora":
        assert any(n.endswith("learnable_domain_embeddings") for n in trained)
        assert obj.transformer.learnable_domain_embeddings.dtype == torch.float32
    # the frozen base is bit-identical after the optimiser steps; the trained tensors moved
    for n, p in obj.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p.detach(), built["frozen"][n]), n
    assert any(not torch.equal(p.detach(), built["trained0"][n]) for n, p in obj.named_parameters() if p.requires_grad)
    # one backward pass: gradients reach trained tensors only
    obj.zero_grad(set_to_none=True)
    obj(_batch(make_cfg(objective).cache), step=5).backward()
    assert all(p.grad is None for p in obj.parameters() if not p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.parameters() if p.requires_grad)


def test_noise_draws_depend_on_seed_step_and_name_only():
    a = sample_noise(1, 7, "clip0", (2, 3))
    assert torch.equal(a[0], sample_noise(1, 7, "clip0", (2, 3))[0]) and a[1] == sample_noise(1, 7, "clip0", (2, 3))[1]
    for other in (sample_noise(2, 7, "clip0", (2, 3)), sample_noise(1, 8, "clip0", (2, 3)),
                  sample_noise(1, 7, "clip1", (2, 3))):
        assert not torch.equal(a[0], other[0])
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(20000, g)            # uniform over {0.001, ..., 1} (the 4DNeX scheduler, shift 1)
    assert s.min() >= 1e-3 and s.max() <= 1.0 and abs(float(s.mean()) - 0.5005) < 0.01
    assert torch.allclose(s * 1000, (s * 1000).round(), atol=1e-3)
    shifted = sample_sigmas(5, torch.Generator().manual_seed(3), shift=3.0)
    plain = sample_sigmas(5, torch.Generator().manual_seed(3))
    assert torch.allclose(shifted, 3 * plain / (1 + 2 * plain))


def _manual_sigma_noise(shape, seed=11):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), 0.37


def test_sync_loss_of_a_fixed_batch_equals_per_row_base_model_mse(make_cfg):
    """Soft sync at the paper's initialisation (independent streams): the row readout is the base Wan model on
    every row alone (its own CLIP, the prompt), so the loss is the MSE of that velocity against e - x over the
    unknown latent frames and valid pixels - written out here with a plain transformer call per row."""
    cfg = make_cfg("sync", sync_mode="soft")
    pipe, obj = runner.build(cfg, "cpu")
    batch = _batch(cfg.cache)
    x = batch.latents[0]
    e, s = _manual_sigma_noise(x.shape)
    with torch.no_grad():
        got = obj(batch, step=0, noise=[(e, s)])
        num = den = 0.0
        for v in range(x.shape[0]):
            inp = torch.cat([(1 - s) * x[v] + s * e[v], batch.mask[0, v], batch.condition[0, v]], dim=0)[None]
            pred = pipe.transformer(hidden_states=inp, timestep=torch.tensor([1000 * s]),
                                    encoder_hidden_states=batch.text_embeds[0][None],
                                    encoder_hidden_states_image=batch.clip_rows[0, v][None], return_dict=False)[0][0]
            w = (~batch.known[0, v])[None, :, None, None].float() * batch.valid[0, v][None]
            num += float((w * (pred - (e[v] - x[v])) ** 2).sum())
            den += float(w.expand_as(pred).sum())
    assert den > 0
    torch.testing.assert_close(float(got), num / den, rtol=1e-5, atol=1e-7)


def test_lora_loss_of_a_fixed_batch_equals_the_merged_model_mse(make_cfg):
    """The 4DNeX objective with a non-zero LoRA and domain embeddings: the loss equals the plain MSE (every
    element, both halves) of a copy of the model whose q, k, v, out weights are merged by hand,
    ``W + (alpha / r) B A``, with the adapter switched off."""
    cfg = make_cfg("lora", lora_rank=4, lora_alpha=8.0)
    pipe, obj = runner.build(cfg, "cpu")
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for n, p in obj.named_parameters():
            if p.requires_grad:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    batch = _batch(cfg.cache)
    x = batch.target[0]
    e, s = _manual_sigma_noise(x.shape)
    with torch.no_grad():
        got = obj(batch, step=0, noise=[(e, s)])
        merged = copy.deepcopy(obj.transformer)
        scale = cfg.lora_alpha / cfg.lora_rank
        count = 0
        for name, module in merged.named_modules():
            if hasattr(module, "lora_A") and TRAIN_ADAPTER in getattr(module, "lora_A", {}):
                a = module.lora_A[TRAIN_ADAPTER].weight
                b = module.lora_B[TRAIN_ADAPTER].weight
                module.base_layer.weight += scale * b @ a
                count += 1
        assert count == len(merged.blocks) * 8
        merged.disable_adapters()
        inp = torch.cat([(1 - s) * x + s * e, batch.mask[0], batch.condition[0]], dim=0)[None]
        pred = merged(hidden_states=inp, timestep=torch.tensor([1000 * s]),
                      encoder_hidden_states=batch.text_embeds[0][None],
                      encoder_hidden_states_image=batch.clip[0][None], return_dict=False)[0][0]
        expected = float(((pred - (e - x)) ** 2).mean())
    torch.testing.assert_close(float(got), expected, rtol=1e-5, atol=1e-7)
    # the domain embeddings matter: zeroing them changes the loss
    with torch.no_grad():
        obj.transformer.learnable_domain_embeddings.zero_()
        assert abs(float(obj(batch, step=0, noise=[(e, s)])) - expected) > 1e-6
