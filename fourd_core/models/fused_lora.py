"""The file of a LoRA trained for 4Real-Video-V2's fused view-time attention (``python -m fourd_core train fused``),
and its application by the fused grid mode on the diffusers path (:class:`~fourd_core.models.grid_fused.FusedEngine`)
and on ComfyUI's MODEL (FourD Grid Model (native)).

Format: a ``.safetensors`` file in the 4DNeX release's key layout
(``transformer.blocks.{i}.attn{1,2}.{to_q,to_k,to_v,to_out.0}.lora_{A,B}.weight``, A ``[r, in]``, B ``[out, r]``)
with the training scale ``alpha / r`` folded into B, so it applies at scale ``strength`` (1.0 = as trained).
Header metadata (strings): ``format = "fourd.fused_lora"``, ``version = "1"``, ``rank``, ``alpha``, optional
``base_model``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import WeightsError, brief
from .lora import read_fourdnex_lora

FORMAT = "fourd.fused_lora"
VERSION = 1
ADAPTER = "fourd_fused"


def save_fused_lora(state_dict: dict[str, torch.Tensor], path: str | Path, *, rank: int, alpha: float,
                    base_model: str | None = None) -> Path:
    """Write ``state_dict`` (release key layout, B not yet scaled) with ``alpha / rank`` folded into B."""
    from safetensors.torch import save_file

    from ..util.atomic import atomic_path

    scale = float(alpha) / int(rank)
    tensors = {k: (v.detach().float() * scale if k.endswith("lora_B.weight") else v.detach().float()).cpu().contiguous()
               for k, v in state_dict.items()}
    meta = {"format": FORMAT, "version": str(VERSION), "rank": str(int(rank)), "alpha": str(float(alpha))}
    if base_model:
        meta["base_model"] = str(base_model)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_fused_lora(path: str | Path, transformer=None) -> dict[str, torch.Tensor]:
    """Read and check a fused-attention LoRA file (keys, ranks, shapes against ``transformer`` if given).

    Raises:
        WeightsError: not such a file (e.g. a 4DNeX LoRA: that one goes to FourD Apply 4DNeX), a newer
            version, or the checks of :func:`fourd_core.models.lora.read_fourdnex_lora`.
    """
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"Fused LoRA file not found: {path}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable .safetensors file ({brief(exc)}).") from exc
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a fused-attention LoRA (metadata format {meta.get('format')!r}, expected "
                           f"{FORMAT!r}; made by `python -m fourd_core train fused`). A 4DNeX LoRA goes to the 4DNeX "
                           "loaders instead.")
    if int(meta.get("version", "0")) > VERSION:
        raise WeightsError(f"{path} has fused-LoRA format version {meta['version']}; this version reads {VERSION}.")
    return read_fourdnex_lora(path, transformer, allow_fused=True)
