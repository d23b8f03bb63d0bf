"""A tiny random Wan2.1 VACE DiT in the *original* Wan VACE key layout, loadable by ComfyUI's core
``Load Diffusion Model`` as a VACE model, for the native novel-view CPU demo.

ComfyUI detects a Wan VACE checkpoint by ``vace_patch_embedding.weight`` and counts its
``vace_blocks`` (``comfy/model_detection.py``, ComfyUI 0.3.64 / 0.8.0): ``vace_in_dim`` is the
patch embedding's input width (96 = 2 x 16 latent channels of the inactive / reactive control
video + 64 mask channels), and the VACE blocks are applied after the main blocks
``range(0, num_layers, num_layers // vace_layers)``.  Like every Wan 2.1 model there, the head dim
is 128 (``num_heads = dim / 128``) and the text width 4096.  The tiny model: dim 256 (2 heads),
2 main blocks, 2 VACE blocks, text-to-video base (16 input channels, no image projection).
**Its outputs are meaningless** (random weights).

Key names follow the original VACE code's modules (``VaceWanModel`` of ali-vilab/VACE and
Wan-Video/Wan2.1 ``wan/modules/vace_model.py``: ``vace_patch_embedding``, ``vace_blocks.N`` = a
Wan attention block plus ``after_proj``, and ``before_proj`` in block 0); the base keys are the T2V
subset of :func:`fourd_core.native.tiny_wan.original_wan_shapes`.  diffusers' single-file converter
(``convert_wan_transformer_to_diffusers``) reads the same file into a ``WanVACETransformer3DModel``
of :data:`TINY_VACE_DIFFUSERS_CONFIG`, a second, independent reading of the layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..util.locks import build_once
from ..models.tiny_preset import default_cache_dir
from .tiny_wan import NATIVE_TINY, original_wan_shapes

NATIVE_TINY_VACE_VERSION = 1
TINY_VACE_MODEL_NAME = "fourd_tiny_wan21_vace_native.safetensors"
TINY_VACE = dict(dim=NATIVE_TINY["dim"], ffn_dim=NATIVE_TINY["ffn_dim"], num_layers=2, vace_layers=2, in_dim=16,
                 vace_in_dim=96, out_dim=16, text_dim=4096, freq_dim=256, head_dim=128)
#: the same architecture as a diffusers WanVACETransformer3DModel config
TINY_VACE_DIFFUSERS_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=TINY_VACE["dim"] // TINY_VACE["head_dim"],
    attention_head_dim=TINY_VACE["head_dim"], in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
    ffn_dim=TINY_VACE["ffn_dim"], num_layers=TINY_VACE["num_layers"], cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
    vace_layers=list(range(0, TINY_VACE["num_layers"], TINY_VACE["num_layers"] // TINY_VACE["vace_layers"])),
    vace_in_channels=TINY_VACE["vace_in_dim"],
)


def original_vace_shapes(dim: int, ffn_dim: int, num_layers: int, vace_layers: int, *, in_dim: int = 16,
                         vace_in_dim: int = 96, text_dim: int = 4096, freq_dim: int = 256,
                         out_dim: int = 16) -> dict[str, tuple[int, ...]]:
    """Every tensor of an original-layout Wan2.1 VACE DiT (T2V base + VACE blocks) with its shape."""
    base = original_wan_shapes(dim, ffn_dim, num_layers, text_dim=text_dim, freq_dim=freq_dim, in_dim=in_dim,
                               out_dim=out_dim)
    # text-to-video: no image projection, no image keys in the cross-attention
    s = {k: v for k, v in base.items() if not k.startswith("img_emb.") and "_img" not in k}
    s["vace_patch_embedding.weight"] = (dim, vace_in_dim, 1, 2, 2)
    s["vace_patch_embedding.bias"] = (dim,)
    block0 = {k[len("blocks.0."):]: v for k, v in s.items() if k.startswith("blocks.0.")}
    for i in range(vace_layers):
        for k, v in block0.items():
            s[f"vace_blocks.{i}.{k}"] = v
        s[f"vace_blocks.{i}.after_proj.weight"] = (dim, dim)
        s[f"vace_blocks.{i}.after_proj.bias"] = (dim,)
    s["vace_blocks.0.before_proj.weight"] = (dim, dim)
    s["vace_blocks.0.before_proj.bias"] = (dim,)
    return s


def tiny_vace_state_dict(seed: int = 5) -> dict[str, torch.Tensor]:
    """Random weights for :data:`TINY_VACE` in the original layout (float32), initialised like
    :func:`fourd_core.native.tiny_wan.tiny_native_state_dict`: matrices ``N(0, 1 / fan_in)``, norm
    weights ``1 + N(0, 0.1)``, biases and modulation tables ``N(0, 0.1)``."""
    g = torch.Generator().manual_seed(seed)
    c = TINY_VACE
    sd = {}
    for k, shape in original_vace_shapes(c["dim"], c["ffn_dim"], c["num_layers"], c["vace_layers"], in_dim=c["in_dim"],
                                         vace_in_dim=c["vace_in_dim"], text_dim=c["text_dim"],
                                         freq_dim=c["freq_dim"], out_dim=c["out_dim"]).items():
        if len(shape) >= 2 and "modulation" not in k:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            t = torch.randn(shape, generator=g) / fan_in ** 0.5
        elif ".norm" in k:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        sd[k] = t.contiguous()
    return sd


def save_native_tiny_vace(folder: str | Path, seed: int = 5) -> Path:
    """Write ``<folder>/diffusion_models/<TINY_VACE_MODEL_NAME>``. Returns ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    (folder / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(tiny_vace_state_dict(seed), str(folder / "diffusion_models" / TINY_VACE_MODEL_NAME))
    (folder / "README.txt").write_text("fourd native tiny random-weight Wan2.1 VACE: outputs are meaningless. "
                                       f"version {NATIVE_TINY_VACE_VERSION}, seed {seed}\n")
    return folder


def _native_tiny_vace_complete(folder: Path) -> bool:
    """Every file :func:`save_native_tiny_vace` writes, its README last."""
    return (folder / "diffusion_models" / TINY_VACE_MODEL_NAME).is_file() and (folder / "README.txt").is_file()


def ensure_native_tiny_vace(cache_dir: str | Path | None = None) -> Path:
    """Build the tiny native VACE file once under ``cache_dir`` (default ``$FOURD_CACHE``) and return its
    folder (with ``diffusion_models/`` inside); safe with several processes on one empty cache
    (:func:`fourd_core.util.locks.build_once`)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_once(root / f"native-tiny-vace-v{NATIVE_TINY_VACE_VERSION}", save_native_tiny_vace,
                      _native_tiny_vace_complete, what="native tiny VACE model")
