"""The file of the 4Real-Video synchronisation layers (their math: :mod:`fourd_core.kernels.sync`).

The layers (hard sync Eq. 8, soft sync Eqs. 9-10) and the training-free soft sync (supp. Eq. 13) are
described and implemented in :mod:`fourd_core.kernels.sync`; this module reads and writes their weights.

Sync weights file (``.safetensors``, no pickle)
-----------------------------------------------
The paper trains only these layers (no weights were released). A file holds one layer per DiT
block, keys = ``GridSync.state_dict()``; ``D`` = transformer inner dim (heads x head dim; 5120 for
Wan2.1-I2V-14B), ``F`` = sigma feature size, ``l`` = 0-based block index:

=================================  ============  ==========================================
key                                shape         meaning
=================================  ============  ==========================================
hard: ``layers.{l}.w_v``           [D]           per-channel weight of the row stream (init 0.5)
hard: ``layers.{l}.w_t``           [D]           per-channel weight of the column stream (0.5)
hard: ``layers.{l}.mod.weight``    [2D, F]       sigma modulation ``(m_v, m_t)`` (init 0)
hard: ``layers.{l}.mod.bias``      [2D]          (init 0)
soft: ``layers.{l}.mod.weight``    [4D, F]       sigma -> ``(scale, shift)`` of ``[y_v, y_t]`` (init 0)
soft: ``layers.{l}.mod.bias``      [4D]          (init 0)
soft, full: ``layers.{l}.linear.weight``  [2D, 2D]   ``(dv, dt)`` from the modulated tokens (init 0)
soft, full: ``layers.{l}.linear.bias``    [2D]       (init 0)
soft, rank r: ``layers.{l}.down.weight``  [r, 2D]    low-rank alternative (random init)
soft, rank r: ``layers.{l}.up.weight``    [2D, r]    (init 0)
soft, rank r: ``layers.{l}.up.bias``      [2D]       (init 0)
=================================  ============  ==========================================

Output channel order: ``dv = out[:D]``, ``dt = out[D:]``; input ``h = cat([y_v, y_t], -1)``;
``scale = mod[:2D]``, ``shift = mod[2D:]``; hard ``m_v = mod[:D]``, ``m_t = mod[D:]``.
Any float dtype is accepted (computed in float32). Header metadata (all strings):
``format = "fourd.grid_sync"``, ``version = "1"``, ``mode = "hard" | "soft"``, ``num_layers``,
``inner_dim``, ``sigma_features``, ``rank = "full" | "<r>"`` (soft only), optional ``base_model``.
Write one with :func:`save_sync_weights`; :func:`load_sync_weights` checks every key, shape and
value against the transformer and raises :class:`~fourd_core.errors.WeightsError` naming the
mismatch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import WeightsError, brief
from ..kernels.sync import (  # noqa: F401 - the layers are part of this format's API
    MODES,
    SIGMA_FEATURES,
    GridSync,
    HardSyncLayer,
    SoftSyncLayer,
    sigma_features,
    soft_average_weight,
)

FORMAT = "fourd.grid_sync"
VERSION = 1


def sync_metadata(sync: GridSync) -> dict[str, str]:
    """The safetensors header metadata of ``sync`` (format, version, mode, sizes; module docstring)."""
    return {"format": FORMAT, "version": str(VERSION), **sync.sizes}


def save_sync_weights(sync: GridSync, path: str | Path, base_model: str | None = None) -> Path:
    """Write ``sync`` in the documented format (module docstring). Returns the path."""
    from safetensors.torch import save_file

    from ..util.atomic import atomic_path

    meta = sync_metadata(sync)
    if base_model:
        meta["base_model"] = str(base_model)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in sync.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_sync_weights(path: str | Path, transformer, mode: str | None = None) -> GridSync:
    """Read a sync weights file and check it against a diffusers ``WanTransformer3DModel``
    (block count and inner dim); see :func:`read_sync_weights` for the rest."""
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    return read_sync_weights(path, len(transformer.blocks), dim, mode)


def read_sync_weights(path: str | Path, num_layers: int, inner_dim: int, mode: str | None = None,
                      what: str = "this transformer") -> GridSync:
    """Read a sync weights file and check it against the DiT it will run on.

    Args:
        path: ``.safetensors`` file in the documented format.
        num_layers, inner_dim: the DiT's block count and width (heads x head dim), from a diffusers
            or a ComfyUI Wan model.
        mode: if given, the file must hold this sync mode (``"hard"`` / ``"soft"``).
        what: how errors name the model.
    Returns:
        a float32 :class:`GridSync` on the CPU (the sampler moves it).
    Raises:
        WeightsError: missing/unreadable file, not a sync file, newer version, wrong mode, a block
            count or inner dim that does not match the model, missing/unexpected keys, wrong
            shapes, NaN/inf values.
    """
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"Sync weights file not found: {path}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable .safetensors file ({brief(exc)}).") from exc
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a grid sync weights file (metadata format {meta.get('format')!r}, expected "
                           f"{FORMAT!r}). See fourd_core/models/sync.py for the format.")
    try:
        version = int(meta.get("version", "0"))
        file_mode = meta["mode"]
        layers, dim, feats = int(meta["num_layers"]), int(meta["inner_dim"]), int(meta["sigma_features"])
        rank_s = meta.get("rank", "full")
        rank = None if rank_s == "full" else int(rank_s)
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"{path}: incomplete or malformed sync metadata ({brief(exc)}); needed: mode, num_layers, "
                           "inner_dim, sigma_features (and rank for soft).") from exc
    if version > VERSION:
        raise WeightsError(f"{path} has sync format version {version}; this version of ComfyUI-FourD reads {VERSION}.")
    if file_mode not in MODES:
        raise WeightsError(f"{path}: unknown sync mode {file_mode!r} (expected 'hard' or 'soft').")
    if mode is not None and file_mode != mode:
        raise WeightsError(f"{path} holds {file_mode!r} sync weights, but the grid mode is {mode!r}. "
                           f"Choose mode '{file_mode}' or another file.")
    if layers != num_layers or dim != inner_dim:
        raise WeightsError(f"{path} was made for a DiT with {layers} blocks of width {dim}; {what} has "
                           f"{num_layers} blocks of width {inner_dim}. Use sync weights trained for this base model.")
    if feats < 2 or feats % 2:
        raise WeightsError(f"{path}: sigma_features must be an even number >= 2, got {feats}.")
    sync = GridSync(file_mode, layers, dim, feats, rank)
    expected = sync.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{path}: {len(missing)} missing tensors (e.g. {missing[:3]}) and {len(unexpected)} "
                           f"unexpected (e.g. {unexpected[:3]}) for {file_mode} sync with rank {rank_s}.")
    for k, v in expected.items():
        t = tensors[k]
        if tuple(t.shape) != tuple(v.shape):
            raise WeightsError(f"{path}: tensor {k} has shape {list(t.shape)}, expected {list(v.shape)}.")
        if not t.is_floating_point() or not torch.isfinite(t.float()).all():
            raise WeightsError(f"{path}: tensor {k} is not finite floating point data; the file is corrupt.")
    sync.load_state_dict({k: t.float() for k, t in tensors.items()}, strict=True)
    return sync.eval().requires_grad_(False)
