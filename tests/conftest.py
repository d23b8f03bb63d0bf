"""Shared fixtures: tiny random Wan2.1-I2V models saved in every real on-disk format.

The formats are written here, independently of the loaders under test:
* a diffusers ``model_index.json`` folder with a tokenizer (``save_pretrained``);
* the original Wan / ComfyUI single-file key layout for the transformer (fp16, fp8 e4m3fn, ComfyUI
  "scaled fp8") and the VAE, by an inverse key mapping written from the original Wan model code's
  module names (``blocks.N.self_attn.q``, ``decoder.upsamples.K.residual.2`` ...);
* Hugging Face layouts for single-file UMT5 and CLIP vision files (as ComfyUI ships them);
* the official 4DNeX LoRA key format and the ``learnable_domain_embeddings.pt`` torch.save file.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

EXAMPLE_IMAGE = SHARED / "data" / "amusement_park.png"
EXAMPLE_PROMPT = SHARED / "data" / "amusement_park.txt"


# ----------------------------------------------------------------------------------------------
# Original Wan key layout (inverse of the diffusers naming), written from the Wan model's modules.
_TRANSFORMER_TOP = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
    "scale_shift_table": "head.modulation",
    "patch_embedding": "patch_embedding",
}
_BLOCK = {
    "attn1": "self_attn", "attn2": "cross_attn", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o",
    "add_k_proj": "k_img", "add_v_proj": "v_img", "norm_added_k": "norm_k_img", "norm_q": "norm_q",
    "norm_k": "norm_k", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2", "norm2": "norm3",
    "scale_shift_table": "modulation",
}


def transformer_key_to_original(key: str) -> str:
    m = re.match(r"^blocks\.(\d+)\.(.*)$", key)
    if not m:
        for d, o in _TRANSFORMER_TOP.items():
            if key == d or key.startswith(d + "."):
                return o + key[len(d):]
        raise KeyError(key)
    rest = m.group(2)
    for d, o in sorted(_BLOCK.items(), key=lambda kv: -len(kv[0])):
        rest = re.sub(rf"(^|\.){re.escape(d)}(\.|$)", lambda mm: mm.group(1) + o + mm.group(2), rest)
    return f"blocks.{m.group(1)}.{rest}"


def vae_key_to_original(key: str) -> str:
    res = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
           "conv2": "residual.6", "conv_shortcut": "shortcut"}

    def resnet(rest: str) -> str:
        for d, o in res.items():
            if rest == d or rest.startswith(d + "."):
                return o + rest[len(d):]
        return rest

    for side in ("encoder", "decoder"):
        if key.startswith(f"{side}.conv_in."):
            return key.replace(f"{side}.conv_in.", f"{side}.conv1.")
        if key.startswith(f"{side}.norm_out."):
            return key.replace(f"{side}.norm_out.", f"{side}.head.0.")
        if key.startswith(f"{side}.conv_out."):
            return key.replace(f"{side}.conv_out.", f"{side}.head.2.")
        m = re.match(rf"^{side}\.mid_block\.resnets\.(\d)\.(.*)$", key)
        if m:
            return f"{side}.middle.{2 * int(m.group(1))}.{resnet(m.group(2))}"
        m = re.match(rf"^{side}\.mid_block\.attentions\.0\.(.*)$", key)
        if m:
            return f"{side}.middle.1.{m.group(1)}"
    m = re.match(r"^encoder\.down_blocks\.(\d+)\.(.*)$", key)
    if m:
        return f"encoder.downsamples.{m.group(1)}.{resnet(m.group(2))}"
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", key)
    if m:
        return f"decoder.upsamples.{4 * int(m.group(1)) + int(m.group(2))}.{resnet(m.group(3))}"
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", key)
    if m:
        return f"decoder.upsamples.{4 * int(m.group(1)) + 3}.{m.group(2)}"
    return {"quant_conv.weight": "conv1.weight", "quant_conv.bias": "conv1.bias",
            "post_quant_conv.weight": "conv2.weight", "post_quant_conv.bias": "conv2.bias"}[key]


# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The tiny preset written to disk: ``base/`` (diffusers folder), ``lora/`` (release files)."""
    from fourd_core.models.tiny_preset import save_tiny_preset

    return save_tiny_preset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_base(tiny_root) -> Path:
    return tiny_root / "base"


@pytest.fixture(scope="session")
def tiny_release(tiny_root) -> Path:
    return tiny_root / "lora"


@pytest.fixture(scope="session")
def base_state(tiny_base) -> dict:
    """State dicts of the saved diffusers components (the ground truth for loaders)."""
    from safetensors.torch import load_file

    out = {}
    for sub in ("transformer", "vae", "text_encoder", "image_encoder"):
        sd = {}
        for f in sorted((tiny_base / sub).glob("*.safetensors")):
            sd.update(load_file(str(f)))
        out[sub] = sd
    return out


@pytest.fixture(scope="session")
def single_files(tiny_base, base_state, tmp_path_factory) -> dict:
    """Single-file checkpoints in ComfyUI / original layouts."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("single")
    tsd = base_state["transformer"]
    orig = {"model.diffusion_model." + transformer_key_to_original(k): v.to(torch.float16) for k, v in tsd.items()}
    save_file(orig, str(d / "wan2.1_i2v_480p_tiny_fp16.safetensors"))
    fp8 = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 else v) for k, v in orig.items()}
    save_file(fp8, str(d / "wan2.1_i2v_480p_tiny_fp8_e4m3fn.safetensors"))
    scaled = {}
    for k, v in orig.items():
        if v.ndim == 2 and k.endswith(".weight"):
            s = v.float().abs().max() / 448.0
            scaled[k] = (v.float() / s).to(torch.float8_e4m3fn)
            scaled[k[:-len(".weight")] + ".scale_weight"] = s.reshape(1)
        else:
            scaled[k] = v
    scaled["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    save_file(scaled, str(d / "wan2.1_i2v_480p_tiny_fp8_scaled.safetensors"))
    t2v = dict(orig)
    w = t2v["model.diffusion_model.patch_embedding.weight"]
    t2v["model.diffusion_model.patch_embedding.weight"] = w[:, :16].contiguous()
    save_file(t2v, str(d / "wan2.1_t2v_tiny.safetensors"))
    merged = {transformer_key_to_original(k): v for k, v in tsd.items()}
    merged["learnable_domain_embeddings"] = torch.arange(2 * 24, dtype=torch.float32).reshape(2, 24) / 10
    save_file(merged, str(d / "fourdnex_merged_tiny.safetensors"))

    save_file({vae_key_to_original(k): v for k, v in base_state["vae"].items()}, str(d / "wan_2.1_vae_tiny.safetensors"))
    save_file({k: v.to(torch.float16) for k, v in base_state["text_encoder"].items() if k != "encoder.embed_tokens.weight"},
              str(d / "umt5_xxl_tiny_fp16.safetensors"))
    clip = {"vision_model." + k.removeprefix("vision_model."): v for k, v in base_state["image_encoder"].items()}
    clip["visual_projection.weight"] = torch.zeros(32, 32)
    save_file(clip, str(d / "clip_vision_h_tiny.safetensors"))
    return {"dir": d, "transformer_fp16": d / "wan2.1_i2v_480p_tiny_fp16.safetensors",
            "transformer_fp8": d / "wan2.1_i2v_480p_tiny_fp8_e4m3fn.safetensors",
            "transformer_fp8_scaled": d / "wan2.1_i2v_480p_tiny_fp8_scaled.safetensors",
            "transformer_t2v": d / "wan2.1_t2v_tiny.safetensors", "transformer_merged": d / "fourdnex_merged_tiny.safetensors",
            "vae": d / "wan_2.1_vae_tiny.safetensors", "text_encoder": d / "umt5_xxl_tiny_fp16.safetensors",
            "image_encoder": d / "clip_vision_h_tiny.safetensors"}


@pytest.fixture(scope="session")
def tiny_pipe(tiny_root):
    """The tiny preset loaded on the CPU through the real loader (LoRA fused). Do not mutate."""
    from fourd_core.models.loading import ModelSpec
    from fourd_core.pipelines.assemble import load_pipeline
    from fourd_core.models.memory import MemoryConfig

    pipe, _ = load_pipeline(ModelSpec(base=str(tiny_root / "base"), fourdnex=str(tiny_root / "lora"), dtype="float32"),
                            MemoryConfig(device="cpu"))
    return pipe


@pytest.fixture(scope="session")
def example_image() -> torch.Tensor:
    from fourd_core.io.images import load_image

    return load_image(EXAMPLE_IMAGE)
