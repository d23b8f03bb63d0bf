"""A tiny random Wan2.1-I2V DiT in the *original* Wan key layout, loadable by ComfyUI's core
``Load Diffusion Model``, plus a matching tiny 4DNeX release (LoRA in the official diffusers key
layout and ``learnable_domain_embeddings.pt``).

ComfyUI infers the Wan config from the keys (``comfy/model_detection.py``, Comfy-Org/ComfyUI
a125cd8): ``num_heads = dim / 128`` (so the head dim is always 128), ``text_dim`` is not inferred
(4096 is used) and the CLIP-vision input width 1280 is hard-coded. The tiny model therefore has
``dim = 256`` (2 heads of 128), a 4096-wide text embedding and a 1280-wide image projection; the
rest is small. **Its outputs are meaningless** (random weights): it exists so the native graph
runs end to end on a CPU with core loaders and samplers, and so tests can compare the native path
with the diffusers path on identical weights.

The key list is written from the original Wan model's module names (``WanModel`` of
Wan-Video/Wan2.1 ``wan/modules/model.py``), not derived from diffusers, so loading the file through
diffusers' converter (``convert_wan_transformer_to_diffusers``) and through ComfyUI are two
independent readings of it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..util.locks import build_once
from ..models.tiny_preset import default_cache_dir

NATIVE_TINY_VERSION = 1
NATIVE_TINY = dict(dim=256, ffn_dim=512, num_layers=2, text_dim=4096, image_dim=1280, freq_dim=256, in_dim=36,
                   out_dim=16, head_dim=128, lora_rank=4)
TINY_MODEL_NAME = "fourd_tiny_wan21_i2v_native.safetensors"
TINY_RELEASE_NAME = "fourd_tiny_4dnex_native"
#: diffusers config of the same architecture (for loading the file through diffusers).
TINY_DIFFUSERS_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=NATIVE_TINY["dim"] // NATIVE_TINY["head_dim"],
    attention_head_dim=NATIVE_TINY["head_dim"], in_channels=36, out_channels=16, text_dim=NATIVE_TINY["text_dim"],
    freq_dim=NATIVE_TINY["freq_dim"], ffn_dim=NATIVE_TINY["ffn_dim"], num_layers=NATIVE_TINY["num_layers"],
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=NATIVE_TINY["image_dim"],
    added_kv_proj_dim=NATIVE_TINY["dim"], rope_max_seq_len=1024,
)


def original_wan_shapes(dim: int, ffn_dim: int, num_layers: int, *, text_dim: int = 4096, image_dim: int = 1280,
                        freq_dim: int = 256, in_dim: int = 36, out_dim: int = 16) -> dict[str, tuple[int, ...]]:
    """Every tensor of an original-layout Wan2.1 I2V DiT with its shape (patch 1x2x2, qk-norm,
    cross-attention norm, image projection)."""
    s: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (dim, in_dim, 1, 2, 2), "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq_dim), "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (out_dim * 4, dim), "head.head.bias": (out_dim * 4,), "head.modulation": (1, 2, dim),
        "img_emb.proj.0.weight": (image_dim,), "img_emb.proj.0.bias": (image_dim,),
        "img_emb.proj.1.weight": (image_dim, image_dim), "img_emb.proj.1.bias": (image_dim,),
        "img_emb.proj.3.weight": (dim, image_dim), "img_emb.proj.3.bias": (dim,),
        "img_emb.proj.4.weight": (dim,), "img_emb.proj.4.bias": (dim,),
    }
    for i in range(num_layers):
        b = f"blocks.{i}."
        for attn, projs in (("self_attn", ("q", "k", "v", "o")), ("cross_attn", ("q", "k", "v", "o", "k_img", "v_img"))):
            for p in projs:
                s[f"{b}{attn}.{p}.weight"] = (dim, dim)
                s[f"{b}{attn}.{p}.bias"] = (dim,)
            norms = ("norm_q", "norm_k") + (("norm_k_img",) if attn == "cross_attn" else ())
            for n in norms:
                s[f"{b}{attn}.{n}.weight"] = (dim,)
        s.update({f"{b}norm3.weight": (dim,), f"{b}norm3.bias": (dim,), f"{b}ffn.0.weight": (ffn_dim, dim),
                  f"{b}ffn.0.bias": (ffn_dim,), f"{b}ffn.2.weight": (dim, ffn_dim), f"{b}ffn.2.bias": (dim,),
                  f"{b}modulation": (1, 6, dim)})
    return s


def tiny_native_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for :data:`NATIVE_TINY` in the original Wan layout (float32).

    Matrices get ``N(0, 1 / fan_in)`` so activations stay O(1) through the blocks; norm weights
    ``1 + N(0, 0.1)``; biases and modulation tables ``N(0, 0.1)``.
    """
    g = torch.Generator().manual_seed(seed)
    c = NATIVE_TINY
    sd = {}
    for k, shape in original_wan_shapes(c["dim"], c["ffn_dim"], c["num_layers"], text_dim=c["text_dim"],
                                        image_dim=c["image_dim"], freq_dim=c["freq_dim"]).items():
        if len(shape) >= 2 and "modulation" not in k:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            t = torch.randn(shape, generator=g) / fan_in ** 0.5
        elif ".norm" in k or k.endswith(("proj.0.weight", "proj.4.weight")):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        sd[k] = t.contiguous()
    return sd


def tiny_native_release(seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A random rank-4 LoRA in the official 4DNeX diffusers key layout (attn1/attn2 q, k, v, out.0)
    for the tiny model, and ``[2, dim]`` domain embeddings."""
    g = torch.Generator().manual_seed(seed)
    c = NATIVE_TINY
    d, r = c["dim"], c["lora_rank"]
    sd = {}
    for i in range(c["num_layers"]):
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                sd[f"transformer.blocks.{i}.{attn}.{proj}.lora_A.weight"] = torch.randn(r, d, generator=g) / d ** 0.5
                sd[f"transformer.blocks.{i}.{attn}.{proj}.lora_B.weight"] = torch.randn(d, r, generator=g) / r ** 0.5
    emb = 0.5 * torch.randn(2, d, generator=g)
    return sd, emb


def save_native_tiny(folder: str | Path, seed: int = 0) -> Path:
    """Write ``<folder>/diffusion_models/<TINY_MODEL_NAME>`` and ``<folder>/loras/<TINY_RELEASE_NAME>/``
    (``pytorch_lora_weights.safetensors``, ``learnable_domain_embeddings.pt``). Returns ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    (folder / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(tiny_native_state_dict(seed), str(folder / "diffusion_models" / TINY_MODEL_NAME))
    lora, emb = tiny_native_release(seed + 1)
    rel = folder / "loras" / TINY_RELEASE_NAME
    rel.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(rel / "pytorch_lora_weights.safetensors"))
    torch.save(emb, rel / "learnable_domain_embeddings.pt")
    (folder / "README.txt").write_text("fourd native tiny random-weight Wan2.1-I2V + 4DNeX release: outputs are "
                                       f"meaningless. version {NATIVE_TINY_VERSION}, seed {seed}\n")
    return folder


def _native_tiny_complete(folder: Path) -> bool:
    """Every file :func:`save_native_tiny` writes, its README last."""
    rel = f"loras/{TINY_RELEASE_NAME}"
    return all((folder / p).is_file() for p in (f"diffusion_models/{TINY_MODEL_NAME}", f"{rel}/pytorch_lora_weights.safetensors",
                                                f"{rel}/learnable_domain_embeddings.pt", "README.txt"))


def ensure_native_tiny(cache_dir: str | Path | None = None) -> Path:
    """Build the native tiny files once under ``cache_dir`` (default ``$FOURD_CACHE``) and return their
    folder (with ``diffusion_models/`` and ``loras/`` inside). Safe with several processes (two ComfyUI
    servers) on one empty cache: :func:`fourd_core.util.locks.build_once`."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_once(root / f"native-tiny-v{NATIVE_TINY_VERSION}", save_native_tiny, _native_tiny_complete,
                      what="native tiny model")


# ----------------------------------------------------------------------------------------------
# Stand-ins for the encoders ComfyUI cannot build at toy size (UMT5-XXL and CLIP-H come from fixed
# full-size configs there; a Wan VAE must have the full 2.1 config). For the CPU demo only.
TEXT_TOKENS = 512


def tiny_text_embeddings(text: str, seed: int = 3) -> torch.Tensor:
    """Deterministic stand-in for UMT5-XXL features: ``[1, 512, 4096]`` float32.

    One fixed random vector per UTF-8 byte, an end-of-text vector after the last byte, zeros for the
    padding (as ComfyUI zeroes masked tokens). Same text -> same features; meaningless otherwise.
    """
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(257, NATIVE_TINY["text_dim"], generator=g) / 4
    ids = list(text.encode("utf-8"))[: TEXT_TOKENS - 1] + [256]
    out = torch.zeros(1, TEXT_TOKENS, NATIVE_TINY["text_dim"])
    out[0, : len(ids)] = table[torch.tensor(ids)]
    return out


def tiny_clip_features(image: torch.Tensor, seed: int = 4) -> torch.Tensor:
    """Deterministic stand-in for CLIP-H penultimate features of an image: ``[1, 257, 1280]``.

    ``image`` ``[H, W, 3]`` in [0, 1] is area-pooled to 16x16 patches (256 tokens, plus a mean
    token first) and projected by a fixed random matrix, so the features depend on the image.
    """
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(3, NATIVE_TINY["image_dim"], generator=g)
    x = F.adaptive_avg_pool2d(image.float().permute(2, 0, 1)[None], (16, 16))[0].reshape(3, -1).T  # [256, 3]
    tokens = torch.cat([x.mean(0, keepdim=True), x], dim=0) * 2 - 1
    return (tokens @ proj)[None]


class TinyWanVAE:
    """A tiny random Wan2.1-style VAE (diffusers ``AutoencoderKLWan``, the tiny preset's config)
    behind the two methods of ComfyUI's ``VAE`` the native nodes use, with ComfyUI's conventions:

    * ``encode(pixels [F, H, W, 3] in [0, 1])`` -> raw posterior mean ``[1, 16, T, H/8, W/8]``
      (input mapped ``x * 2 - 1``, cropped to a multiple of 8);
    * ``decode(raw [B, 16, T, h, w])`` -> ``[B, F, 8h, 8w, 3]`` in [0, 1]; ``decode_tiled`` = ``decode``.

    Meaningless output; for the CPU demo (ComfyUI's VAELoader only builds the full-size Wan VAE).
    """

    def __init__(self, seed: int = 0):
        from diffusers import AutoencoderKLWan

        from ..models.tiny_preset import TINY_VAE

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = AutoencoderKLWan(**TINY_VAE).eval()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        f, h, w, _ = pixels.shape
        x = pixels[:, : h - h % 8, : w - w % 8, :3].float() * 2 - 1
        x = x.permute(3, 0, 1, 2)[None]
        return self.model.encode(x).latent_dist.mode().float()

    @torch.no_grad()
    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        x = self.model.decode(samples.float(), return_dict=False)[0]
        return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).contiguous()

    def decode_tiled(self, samples: torch.Tensor, **_ignored) -> torch.Tensor:
        return self.decode(samples)
