"""The 4DNeX LoRA in ComfyUI's key layout.

ComfyUI's LoRA loader (``comfy/lora.py`` ``model_lora_keys_unet``, Comfy-Org/ComfyUI a125cd8) has no
map for diffusers-format Wan keys, so the official file
(``transformer.blocks.N.attn1.to_q.lora_A.weight``) loaded with core ``LoraLoaderModelOnly`` is not
applied at all ("lora key not loaded"); it also stores no alpha, so any loader would use scale 1.0
instead of the trained alpha / rank = 32 / 64 = 0.5. This module renames the keys to the original
Wan module paths that ComfyUI's ``WanModel`` uses (``diffusion_model.blocks.N.self_attn.q``), so
the native node can hand them to ``comfy.lora.load_lora`` and add them as model patches at
``0.5 * strength``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import WeightsError
from ..models.lora import FOURDNEX_LORA_SCALE, read_fourdnex_lora

#: diffusers attention projection -> original Wan / ComfyUI module path (inside ``blocks.N``).
DIFFUSERS_TO_WAN = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v", "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img", "attn2.add_v_proj": "cross_attn.v_img",
}
_KEY = re.compile(r"^transformer\.blocks\.(\d+)\.(attn[12]\.(?:to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj))\.lora_(A|B)\.weight$")
PREFIX = "diffusion_model."


def lora_to_comfy(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a 4DNeX LoRA from the diffusers layout to ComfyUI's Wan layout.

    ``transformer.blocks.N.attn1.to_q.lora_A.weight`` -> ``diffusion_model.blocks.N.self_attn.q.lora_A.weight``
    (table :data:`DIFFUSERS_TO_WAN`; the ``lora_A``/``lora_B`` suffixes are what ComfyUI's
    ``weight_adapter/lora.py`` reads). Tensors are not copied. No ``.alpha`` is added: the caller
    applies the trained scale as the patch strength.

    Args:
        sd: state dict as returned by :func:`fourd_core.models.lora.read_fourdnex_lora`.
    Returns:
        a new dict with renamed keys.
    Raises:
        WeightsError: a key that is not a 4DNeX / Wan attention LoRA key.
    """
    out = {}
    for k, v in sd.items():
        m = _KEY.match(k)
        if m is None:
            raise WeightsError(f"Unexpected LoRA key {k!r}; expected keys like 'transformer.blocks.0.attn1.to_q.lora_A.weight'.")
        out[f"{PREFIX}blocks.{m.group(1)}.{DIFFUSERS_TO_WAN[m.group(2)]}.lora_{m.group(3)}.weight"] = v
    return out


def lora_targets(comfy_sd: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{lora prefix: model weight key}`` for ``comfy.lora.load_lora``: e.g.
    ``"diffusion_model.blocks.0.self_attn.q" -> "diffusion_model.blocks.0.self_attn.q.weight"``."""
    prefixes = sorted({k.rsplit(".lora_", 1)[0] for k in comfy_sd})
    return {p: p + ".weight" for p in prefixes}


def check_lora_shapes(comfy_sd: dict[str, torch.Tensor], weight_shapes: dict[str, tuple]) -> int:
    """Check a converted LoRA against the loaded model's weight shapes.

    Args:
        comfy_sd: output of :func:`lora_to_comfy`.
        weight_shapes: ``{model weight key: shape}`` of the ComfyUI model (``diffusion_model.*``).
    Returns:
        the LoRA rank.
    Raises:
        WeightsError: a target the model does not have, A/B shapes that do not fit the weight, or
            mixed ranks; the message names the model the LoRA needs (Wan2.1-I2V-14B).
    """
    ranks = set()
    for prefix, target in lora_targets(comfy_sd).items():
        a, b = comfy_sd.get(prefix + ".lora_A.weight"), comfy_sd.get(prefix + ".lora_B.weight")
        if a is None or b is None:
            raise WeightsError(f"LoRA for {prefix} has only one of lora_A / lora_B: the file is incomplete.")
        shape = weight_shapes.get(target)
        if shape is None:
            raise WeightsError(f"The LoRA targets {target}, which this model does not have. The 4DNeX LoRA needs "
                               "Wan2.1-I2V-14B (an I2V model with 40 blocks), not a T2V or 1.3B model.")
        out_f, in_f = int(shape[0]), int(shape[1])
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
            raise WeightsError(f"LoRA {prefix}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit the model weight "
                               f"{tuple(shape)}. The LoRA belongs to another base model (4DNeX needs Wan2.1-I2V-14B).")
        ranks.add(int(a.shape[0]))
    if len(ranks) != 1:
        raise WeightsError(f"The LoRA mixes ranks {sorted(ranks)}; the 4DNeX LoRA has one rank (64).")
    return ranks.pop()


def read_fourdnex_lora_comfy(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a 4DNeX LoRA file (any layout :func:`read_fourdnex_lora` accepts) and return it in
    ComfyUI's layout. Raises :class:`WeightsError` for unreadable or non-4DNeX files."""
    return lora_to_comfy(read_fourdnex_lora(path))


def lora_strength(strength: float) -> float:
    """The ModelPatcher strength for a user ``strength``: ``0.5 * strength`` (alpha 32 / rank 64)."""
    return FOURDNEX_LORA_SCALE * float(strength)
