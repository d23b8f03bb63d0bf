"""Loaders against weights saved in the real formats (fixtures in conftest.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fourd_core.errors import WeightsError
from fourd_core.models import loading
from fourd_core.models.loading import ModelSpec
from fourd_core.pipelines.assemble import load_pipeline
from fourd_core.models.memory import MemoryConfig

CPU = MemoryConfig(device="cpu")


def _cfg(base, sub):
    return json.loads((base / sub / "config.json").read_text())


def test_diffusers_folder_loads_exact_weights(tiny_base, tiny_release, base_state):
    pipe, info = load_pipeline(ModelSpec(base=str(tiny_base), fourdnex=None, dtype="float32"), CPU)
    for name, sd in (("transformer", base_state["transformer"]), ("vae", base_state["vae"])):
        got = getattr(pipe, name).state_dict()
        for k, v in sd.items():
            assert torch.equal(got[k].float(), v.float()), (name, k)
    assert pipe.tokenizer("hello world").input_ids[-1] == 1  # T5-style eos appended
    assert info["lora"] is None


@pytest.mark.parametrize("variant,tol", [("transformer_fp16", 1e-3), ("transformer_fp8", 0.07), ("transformer_fp8_scaled", 0.07)])
def test_single_file_transformer_original_layout(variant, tol, single_files, tiny_base, base_state):
    model, emb = loading.load_transformer_file(single_files[variant], _cfg(tiny_base, "transformer"), torch.float32)
    got = model.state_dict()
    assert set(got) == set(base_state["transformer"])
    for k, v in base_state["transformer"].items():
        rel = (got[k].float() - v.float()).abs().max() / v.float().abs().max().clamp_min(1e-6)
        assert rel <= tol, (k, float(rel))
    assert emb is None


def test_fp8_file_kept_in_fp8_for_fp8_storage(single_files, tiny_base):
    model, _ = loading.load_transformer_file(single_files["transformer_fp8"], _cfg(tiny_base, "transformer"),
                                             torch.bfloat16, keep_fp8=True)
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert model.blocks[0].norm2.weight.dtype == torch.float32  # _keep_in_fp32_modules


def test_merged_checkpoint_yields_domain_embeddings(single_files, tiny_base):
    _, emb = loading.load_transformer_file(single_files["transformer_merged"], _cfg(tiny_base, "transformer"), torch.float32)
    assert torch.allclose(emb, torch.arange(48, dtype=torch.float32).reshape(2, 24) / 10)


def test_t2v_checkpoint_is_rejected_with_a_hint(single_files, tiny_base):
    with pytest.raises(WeightsError, match="text-to-video"):
        loading.load_transformer_file(single_files["transformer_t2v"], _cfg(tiny_base, "transformer"), torch.float32)


def test_corrupt_and_missing_files(tmp_path, single_files, tiny_base):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(single_files["transformer_fp16"].read_bytes()[:5000])
    with pytest.raises(WeightsError, match="corrupt|truncated"):
        loading.load_transformer_file(bad, _cfg(tiny_base, "transformer"), torch.float32)
    with pytest.raises(WeightsError, match="not found"):
        loading.load_transformer_file(tmp_path / "nope.safetensors", _cfg(tiny_base, "transformer"), torch.float32)
    with pytest.raises(WeightsError, match="does not match a Wan VAE"):
        loading.load_vae_file(single_files["text_encoder"], _cfg(tiny_base, "vae"))


def test_single_file_vae_text_and_image_encoders(single_files, tiny_base, base_state):
    vae = loading.load_vae_file(single_files["vae"], _cfg(tiny_base, "vae"))
    for k, v in base_state["vae"].items():
        assert torch.equal(vae.state_dict()[k], v), k
    te = loading.load_text_encoder_file(single_files["text_encoder"], _cfg(tiny_base, "text_encoder"), torch.float32)
    for k, v in base_state["text_encoder"].items():
        assert torch.allclose(te.state_dict()[k], v.float(), atol=1e-3, rtol=1e-3), k
    ie = loading.load_image_encoder_file(single_files["image_encoder"], _cfg(tiny_base, "image_encoder"))
    x = torch.rand(1, 3, 28, 28)
    ref = loading.load_image_encoder_file  # same class, reload from the diffusers folder for reference
    from transformers import CLIPVisionModel

    ref = CLIPVisionModel.from_pretrained(tiny_base / "image_encoder").eval()
    with torch.no_grad():
        assert torch.allclose(ie(x).last_hidden_state, ref(x).last_hidden_state, atol=1e-5)


def test_pipeline_from_single_files_plus_folder_configs(single_files, tiny_base, tiny_release, base_state):
    spec = ModelSpec(base=str(tiny_base), transformer_file=str(single_files["transformer_fp16"]),
                     vae_file=str(single_files["vae"]), text_encoder_file=str(single_files["text_encoder"]),
                     image_encoder_file=str(single_files["image_encoder"]), fourdnex=str(tiny_release), dtype="float32")
    pipe, info = load_pipeline(spec, CPU)
    assert info["lora"]["scale"] == 0.5 and info["lora"]["fused"]
    assert pipe.transformer.learnable_domain_embeddings.shape == (2, 24)


def test_single_files_without_folder_use_packaged_14b_configs(single_files):
    # tiny files do not fit the packaged Wan2.1-I2V-14B configs: the error must say so clearly
    spec = ModelSpec(base=None, transformer_file=str(single_files["transformer_fp16"]), vae_file=str(single_files["vae"]),
                     text_encoder_file=str(single_files["text_encoder"]), image_encoder_file=str(single_files["image_encoder"]),
                     fourdnex=None)
    with pytest.raises(WeightsError, match="does not match a Wan transformer"):
        load_pipeline(spec, CPU)
    with pytest.raises(WeightsError, match="all four single files"):
        load_pipeline(ModelSpec(base=None, transformer_file=str(single_files["transformer_fp16"])), CPU)


def test_hub_id_offline_gives_actionable_error(tmp_path):
    spec = ModelSpec(base="Wan-AI/Some-Model-That-Is-Not-Cached", cache_dir=str(tmp_path), local_files_only=True)
    with pytest.raises(WeightsError, match="hf download"):
        load_pipeline(spec, CPU)


def test_hub_id_resolves_from_a_local_hub_cache(tmp_path, tiny_base):
    """A snapshot in the standard huggingface_hub cache layout is found offline through the hub API."""
    commit = "0" * 40
    repo = tmp_path / "models--someorg--tiny-wan"
    shutil.copytree(tiny_base, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    pipe, info = load_pipeline(ModelSpec(base="someorg/tiny-wan", fourdnex=None, cache_dir=str(tmp_path),
                                         local_files_only=True, dtype="float32"), CPU)
    assert info["base"].endswith(commit)


def test_bad_base_path(tmp_path):
    with pytest.raises(WeightsError, match="model_index.json"):
        load_pipeline(ModelSpec(base=str(tmp_path)), CPU)


def test_fp8_weight_storage_runs_and_stays_close(tiny_base, tiny_release):
    """Layerwise fp8 storage (diffusers hooks) on the CPU: weights stored as float8, outputs close to bf16."""
    ref, _ = load_pipeline(ModelSpec(base=str(tiny_base), fourdnex=str(tiny_release), dtype="bfloat16"), CPU)
    fp8, _ = load_pipeline(ModelSpec(base=str(tiny_base), fourdnex=str(tiny_release), dtype="bfloat16"),
                           MemoryConfig(device="cpu", fp8_storage=True))
    assert fp8.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert fp8.transformer.patch_embedding.weight.dtype == torch.bfloat16  # skipped by the casting patterns
    x = torch.randn(1, 36, 2, 4, 8, dtype=torch.bfloat16)
    kw = dict(timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 512, 32, dtype=torch.bfloat16),
              encoder_hidden_states_image=torch.randn(1, 5, 32, dtype=torch.bfloat16))
    with torch.no_grad():
        a = ref.transformer(x, **kw).sample.float()
        b = fp8.transformer(x, **kw).sample.float()
    assert torch.isfinite(b).all()
    assert (a - b).norm() / a.norm() < 0.15


def test_unfused_lora_on_fp8_checkpoint(single_files, tiny_base, tiny_release):
    spec = ModelSpec(base=str(tiny_base), transformer_file=str(single_files["transformer_fp8"]), fourdnex=str(tiny_release),
                     fuse_lora=False, dtype="bfloat16")
    pipe, info = load_pipeline(spec, MemoryConfig(device="cpu", fp8_storage=True))
    assert not info["lora"]["fused"]
    lin = pipe.transformer.blocks[0].attn1.to_q
    assert lin.base_layer.weight.dtype == torch.float8_e4m3fn and lin.lora_A["fourdnex"].weight.dtype == torch.bfloat16
    x = torch.randn(1, 36, 2, 4, 8, dtype=torch.bfloat16)
    kw = dict(timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 512, 32, dtype=torch.bfloat16),
              encoder_hidden_states_image=torch.randn(1, 5, 32, dtype=torch.bfloat16))
    ref, _ = load_pipeline(ModelSpec(base=str(tiny_base), fourdnex=str(tiny_release), dtype="bfloat16"), CPU)
    with torch.no_grad():
        a = ref.transformer(x, **kw).sample.float()
        b = pipe.transformer(x, **kw).sample.float()
    assert (a - b).norm() / a.norm() < 0.15  # fp8 weights + runtime LoRA ~ bf16 fused
    for name, m in pipe.transformer.named_modules():  # every fp8 layer is either hooked or was up-cast
        if any(p.dtype == torch.float8_e4m3fn for p in m.parameters(recurse=False)):
            assert m._diffusers_hook.get_hook("layerwise_casting") is not None, name


def test_weight_file_check_reports_sizes_and_defers_the_rest_to_safetensors(tmp_path):
    from safetensors.torch import save_file

    from fourd_core.models.weights import check_safetensors_complete

    good = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(1000), "b": torch.ones(10)}, str(good))
    data = good.read_bytes()
    check_safetensors_complete(good)
    cases = {"short": (data[:5], r"is 5 bytes, too short"),
             "cut": (data[:len(data) * 2 // 3], rf"is {len(data) * 2 // 3:,} bytes but its header describes {len(data):,}"),
             # sizes fine, but bytes after the last tensor: safetensors refuses to load it, so the check does too
             "trailing": (data + b"\0" * 16, r"not a readable \.safetensors file")}
    for name, (content, msg) in cases.items():
        (tmp_path / f"{name}.safetensors").write_bytes(content)
        with pytest.raises(WeightsError, match=rf"(?s){msg}.*download it again"):
            check_safetensors_complete(tmp_path / f"{name}.safetensors")
