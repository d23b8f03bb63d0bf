"""The 4DNeX release files: LoRA effective scale, key layouts, domain embeddings, bad files."""

from __future__ import annotations

import pickle
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from fourd_core.errors import WeightsError
from fourd_core.models.lora import load_fourdnex_release, read_domain_embeddings, read_fourdnex_lora
from fourd_core.models.loading import ModelSpec
from fourd_core.pipelines.assemble import load_pipeline
from fourd_core.models.memory import MemoryConfig

CPU = MemoryConfig(device="cpu")


def _plain(tiny_base):
    pipe, _ = load_pipeline(ModelSpec(base=str(tiny_base), fourdnex=None, dtype="float32"), CPU)
    return pipe


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_fused_lora_effective_scale_is_half_alpha_over_rank(tiny_base, tiny_release, strength):
    """W' = W + 0.5 * strength * B @ A for every targeted layer (alpha 32 / rank 64 of the release)."""
    pipe = _plain(tiny_base)
    base = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    lora = load_file(str(tiny_release / "pytorch_lora_weights.safetensors"))
    load_fourdnex_release(pipe, tiny_release, strength=strength, fuse=True)
    sd = pipe.transformer.state_dict()
    n = 0
    for k, a in lora.items():
        if not k.endswith("lora_A.weight"):
            continue
        b = lora[k.replace("lora_A", "lora_B")]
        layer = k.removeprefix("transformer.").removesuffix(".lora_A.weight")
        expected = base[layer + ".weight"] + 0.5 * strength * (b @ a)
        assert torch.allclose(sd[layer + ".weight"], expected, atol=1e-6), layer
        n += 1
    assert n == 2 * 2 * 4  # blocks x (attn1, attn2) x (q, k, v, out)
    assert not any("lora" in k for k in sd)  # adapter dropped after fusing


def test_unfused_adapter_matches_fused(tiny_base, tiny_release):
    fused, unfused = _plain(tiny_base), _plain(tiny_base)
    load_fourdnex_release(fused, tiny_release, fuse=True)
    info = load_fourdnex_release(unfused, tiny_release, fuse=False)
    assert info["scale"] == 0.5 and not info["fused"]
    x = torch.randn(1, 36, 1, 4, 8)
    ctx = torch.randn(1, 512 + 5, 32)
    with torch.no_grad():
        kw = dict(timestep=torch.tensor([500.0]), encoder_hidden_states=ctx[:, 5:], encoder_hidden_states_image=torch.randn(1, 5, 32))
        a = fused.transformer(x, **kw).sample
        b = unfused.transformer(x, **kw).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_comfyui_key_layout_lora_equals_official(tiny_base, tiny_release, tmp_path):
    lora = load_file(str(tiny_release / "pytorch_lora_weights.safetensors"))
    names = {"attn1": "self_attn", "attn2": "cross_attn", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}

    def comfy(k):
        m = re.match(r"transformer\.blocks\.(\d+)\.(attn[12])\.(to_q|to_k|to_v|to_out\.0)\.(lora_[AB])\.weight", k)
        return f"diffusion_model.blocks.{m[1]}.{names[m[2]]}.{names[m[3]]}.{m[4]}.weight"

    save_file({comfy(k): v for k, v in lora.items()}, str(tmp_path / "comfy_lora.safetensors"))
    sd = read_fourdnex_lora(tmp_path / "comfy_lora.safetensors")
    assert set(sd) == set(lora)
    for k in lora:
        assert torch.equal(sd[k], lora[k])


def test_lora_shape_mismatch_names_expected_shape(tiny_base, tiny_release, tmp_path):
    pipe = _plain(tiny_base)
    lora = load_file(str(tiny_release / "pytorch_lora_weights.safetensors"))
    lora["transformer.blocks.0.attn1.to_q.lora_A.weight"] = torch.zeros(4, 99)
    save_file(lora, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match=r"expected \(4, 24\)"):
        read_fourdnex_lora(tmp_path / "bad.safetensors", pipe.transformer)
    lora2 = {"transformer.blocks.7.attn1.to_q.lora_A.weight": torch.zeros(4, 24),
             "transformer.blocks.7.attn1.to_q.lora_B.weight": torch.zeros(24, 4)}
    save_file(lora2, str(tmp_path / "bad2.safetensors"))
    with pytest.raises(WeightsError, match="does not have"):
        read_fourdnex_lora(tmp_path / "bad2.safetensors", pipe.transformer)
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "notlora.safetensors"))
    with pytest.raises(WeightsError, match="not a 4DNeX"):
        read_fourdnex_lora(tmp_path / "notlora.safetensors")


def test_fused_attention_lora_is_refused_as_4dnex_lora_and_vice_versa(tiny_base, tiny_release, tmp_path):
    """A ``train fused`` file (same key layout, format ``fourd.fused_lora``) is not a 4DNeX LoRA: the 4DNeX
    readers refuse it naming its use (even with domain embeddings beside it); the fused reader reads it, and
    refuses the 4DNeX release file."""
    from fourd_core.models.fused_lora import read_fused_lora, save_fused_lora

    lora = load_file(str(tiny_release / "pytorch_lora_weights.safetensors"))
    folder = tmp_path / "rel"
    folder.mkdir()
    save_fused_lora(lora, folder / "fused_lora.safetensors", rank=4, alpha=8.0)
    save_file({"learnable_domain_embeddings": torch.zeros(2, 24)}, str(folder / "learnable_domain_embeddings.safetensors"))
    with pytest.raises(WeightsError, match="fused view-time attention.*fused_lora input"):
        read_fourdnex_lora(folder / "fused_lora.safetensors")
    with pytest.raises(WeightsError, match="fused view-time attention"):
        load_fourdnex_release(_plain(tiny_base), folder)
    sd = read_fused_lora(folder / "fused_lora.safetensors")
    for k, v in lora.items():                                   # alpha / rank = 2 folded into B
        torch.testing.assert_close(sd[k], v * (2.0 if ".lora_B." in k else 1.0))
    with pytest.raises(WeightsError, match="not a fused-attention LoRA"):
        read_fused_lora(tiny_release / "pytorch_lora_weights.safetensors")


def test_domain_embeddings_formats(tmp_path, tiny_release):
    ref = torch.load(tiny_release / "learnable_domain_embeddings.pt", weights_only=True)
    assert torch.equal(read_domain_embeddings(tiny_release / "learnable_domain_embeddings.pt"), ref)
    save_file({"learnable_domain_embeddings": ref}, str(tmp_path / "emb.safetensors"))
    assert torch.equal(read_domain_embeddings(tmp_path / "emb.safetensors"), ref)
    torch.save(torch.zeros(3, 24), tmp_path / "wrong.pt")
    with pytest.raises(WeightsError, match=r"expected \[2, inner_dim\]"):
        read_domain_embeddings(tmp_path / "wrong.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_domain_embeddings_refuse_arbitrary_pickles(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"learnable_domain_embeddings": _Evil()}, f)
    with pytest.raises(WeightsError, match="weights_only"):
        read_domain_embeddings(tmp_path / "evil.pt")


def test_domain_embedding_shape_mismatch(tiny_base, tiny_release, tmp_path):
    import shutil

    rel = tmp_path / "rel"
    shutil.copytree(tiny_release, rel)
    torch.save(torch.zeros(2, 5120), rel / "learnable_domain_embeddings.pt")
    with pytest.raises(WeightsError, match=r"expects \(2, 24\)"):
        load_fourdnex_release(_plain(tiny_base), rel)


def test_missing_release_folder(tiny_base, tmp_path):
    with pytest.raises(WeightsError, match="pytorch_lora_weights"):
        load_fourdnex_release(_plain(tiny_base), tmp_path)


def test_unfused_strength_changes_in_place_without_a_reload(tiny_root, tiny_release):
    """The pipeline cache applies a new strength to an unfused adapter with set_adapters: no reload,
    and every targeted layer then computes (W + 0.5 * s * B A) x (formula from the release files)."""
    from fourd_core.pipelines.cache import PipelineCache

    cache = PipelineCache()
    spec = ModelSpec(base=str(tiny_root / "base"), fourdnex=str(tiny_release), fuse_lora=False, dtype="float32")
    pipe, info = cache.get(spec, CPU)
    base = load_file(next(str(p) for p in (tiny_root / "base" / "transformer").glob("*.safetensors")))
    lora = load_file(str(tiny_release / "pytorch_lora_weights.safetensors"))
    x = torch.randn(3, 24)
    for strength in (0.3, 1.7):
        again, info = cache.get(ModelSpec(**{**spec.__dict__, "lora_strength": strength}), CPU)
        assert again is pipe and cache.loads == 1 and info["lora"]["scale"] == 0.5 * strength
        for layer in ("blocks.0.attn1.to_q", "blocks.1.attn2.to_out.0"):
            a, b = lora[f"transformer.{layer}.lora_A.weight"], lora[f"transformer.{layer}.lora_B.weight"]
            w = base[f"{layer}.weight"] + 0.5 * strength * (b @ a)
            with torch.no_grad():
                got = pipe.transformer.get_submodule(layer)(x)
            torch.testing.assert_close(got, x @ w.T + base[f"{layer}.bias"], atol=1e-5, rtol=1e-5)
    # a fused LoRA cannot change in place: a new strength reloads
    fused = ModelSpec(**{**spec.__dict__, "fuse_lora": True})
    cache.get(fused, CPU)
    cache.get(ModelSpec(**{**fused.__dict__, "lora_strength": 0.5}), CPU)
    assert cache.loads == 3
