"""The files a run leaves, in the formats the pack's loaders read as they are:

* ``sync``: ``sync_weights.safetensors``, the ``fourd.grid_sync`` format of :mod:`fourd_core.models.sync`
  (FourD 4D Grid Sampler / FourD Grid Model (native) ``sync_weights``; ``models/fourd_sync/``);
* ``lora``: a 4DNeX release folder: ``pytorch_lora_weights.safetensors`` in the official key layout (no alpha;
  the training scale ``alpha / rank`` folded into B relative to the release's 0.5) and
  ``learnable_domain_embeddings.safetensors`` (``[2, D]`` float32) - what ``--lora`` / FourD Load 4DNeX LoRA /
  FourD Apply 4DNeX (native) load;
* ``fused``: ``fused_lora.safetensors`` (:mod:`fourd_core.models.fused_lora`), the grid nodes' ``fused_lora``.

Every file is written atomically. ``state`` is the trained tensors by parameter name, gathered in full on the
main process (``accelerator.get_state_dict``: under FSDP / DeepSpeed ZeRO-3 the shards are gathered first).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..util.atomic import atomic_directory

SYNC_FILE = "sync_weights.safetensors"
FUSED_FILE = "fused_lora.safetensors"


def write_outputs(objective, state: dict[str, torch.Tensor], folder: str | Path, cfg) -> list[Path]:
    """Write the run's weights into ``folder`` (all-or-nothing) and return the files.

    Args:
        objective: the (unwrapped) objective module. state: its trained tensors by parameter name.
        cfg: the run's :class:`~fourd_core.training.config.TrainConfig`.
    """
    from safetensors.torch import save_file

    from ..models.fused_lora import save_fused_lora
    from ..models.lora import FOURDNEX_LORA_SCALE, LORA_WEIGHT_NAME
    from ..models.patches import DOMAIN_EMBEDDING_KEY
    from ..models.sync import save_sync_weights
    from .objectives import lora_release_state

    folder = Path(folder)
    state = {k.removeprefix("module."): v.detach().float().cpu() for k, v in state.items()}
    with atomic_directory(folder) as tmp:
        if cfg.objective == "sync":
            sync = objective.sync
            sync.load_state_dict({k.removeprefix("sync."): v for k, v in state.items() if k.startswith("sync.")})
            save_sync_weights(sync, tmp / SYNC_FILE, base_model=cfg.base)
            names = [SYNC_FILE]
        elif cfg.objective == "fused":
            lora = lora_release_state(state)
            save_fused_lora(lora, tmp / FUSED_FILE, rank=cfg.lora_rank, alpha=cfg.lora_alpha, base_model=cfg.base)
            names = [FUSED_FILE]
        else:
            scale = (cfg.lora_alpha / cfg.lora_rank) / FOURDNEX_LORA_SCALE
            lora = {k: (v * scale if k.endswith("lora_B.weight") else v).contiguous()
                    for k, v in lora_release_state(state).items()}
            save_file(lora, str(tmp / LORA_WEIGHT_NAME), metadata={"base_model": cfg.base, "rank": str(cfg.lora_rank)})
            emb = next(v for k, v in state.items() if k.endswith(DOMAIN_EMBEDDING_KEY))
            save_file({DOMAIN_EMBEDDING_KEY: emb.contiguous()}, str(tmp / "learnable_domain_embeddings.safetensors"))
            names = [LORA_WEIGHT_NAME, "learnable_domain_embeddings.safetensors"]
    return [folder / n for n in names]
