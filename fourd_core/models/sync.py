"""Synchronisation layers of the 4Real-Video two-stream DiT (Sec. 3.2.4, Eqs. 8-10) and their file.

The two token streams of the grid (row stream ``y_v``: every row a video; column stream ``y_t``:
every column a freeze-time video) are combined after every pretrained block ``l`` by one of:

* **hard sync** (Eq. 8): ``x_{l+1} = W_v(sigma) * y_v + W_t(sigma) * y_t``, per-channel weights
  ``W = w + m(sigma)`` with ``w`` initialised to 1/2 and the sigma modulation ``m`` zero-initialised,
  so the neutral layer is exact averaging (the paper's training-free hard sync, Eq. 12);
* **soft sync** (Eqs. 9-10): ``(dv, dt) = ModLinear([y_v, y_t]; sigma)``, ``x_v = y_v + dv``,
  ``x_t = y_t + dt``; ``ModLinear(h) = Linear(h * (1 + scale(sigma)) + shift(sigma))`` on the
  channel-concatenated tokens ``h = [y_v, y_t]`` (``2D`` channels), its output layer
  zero-initialised, so the neutral layer leaves the two streams independent;
* **training-free soft sync** (supplementary Sec. 7, Eq. 13): weighted averaging
  ``x_v = (1 - w_l) y_v + w_l y_t``, ``x_t = (1 - w_l) y_t + w_l y_v`` with
  ``w_l = 0.1 + 0.4 * l / L``, ``l = 1..L`` the 1-based block index (so the last block averages).
  See :func:`soft_average_weight`; it has no parameters and no file.

``sigma`` is the flow-matching noise level in [0, 1] of the current denoising step (``timestep /
1000``); it enters through the sinusoidal features of :func:`sigma_features`.

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

import math
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError, brief

FORMAT = "fourd.grid_sync"
VERSION = 1
SIGMA_FEATURES = 32
MODES = ("hard", "soft")


def sigma_features(sigma: float | torch.Tensor, dim: int = SIGMA_FEATURES) -> torch.Tensor:
    """Sinusoidal features of the noise level: ``[cos(1000 sigma f_k), sin(1000 sigma f_k)]``.

    ``f_k = 10000^(-k / (dim/2))``, ``k = 0..dim/2-1`` (the timestep sinusoid of Wan, cos first).

    Args:
        sigma: flow-matching noise level in [0, 1] (scalar or 0-d tensor).
        dim: even feature size ``F``.
    Returns:
        ``[dim]`` float32 tensor (on sigma's device if a tensor).
    """
    s = torch.as_tensor(sigma, dtype=torch.float32).reshape(())
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=s.device) / half)
    arg = 1000.0 * s * freqs
    return torch.cat([torch.cos(arg), torch.sin(arg)])


def soft_average_weight(layer: int, num_layers: int) -> float:
    """The paper's training-free soft-sync weight ``w_l = 0.1 + 0.4 * l / L`` (supp. Eq. 13).

    Args:
        layer: 0-based block index; the formula uses ``l = layer + 1`` (1..L).
        num_layers: ``L``.
    """
    return 0.1 + 0.4 * (layer + 1) / num_layers


class HardSyncLayer(nn.Module):
    """Eq. 8 with per-channel weights: ``W_v(s) * y_v + W_t(s) * y_t``, ``W = w + m(s)``.

    Neutral init: ``w_v = w_t = 1/2``, ``m = 0`` -> exact averaging (Eq. 12).
    """

    def __init__(self, dim: int, features: int = SIGMA_FEATURES):
        super().__init__()
        self.w_v = nn.Parameter(torch.full((dim,), 0.5))
        self.w_t = nn.Parameter(torch.full((dim,), 0.5))
        self.mod = nn.Linear(features, 2 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, y_v: torch.Tensor, y_t: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """``y_v, y_t`` ``[..., D]`` (same layout); ``feats`` ``[F]``. Returns ``[..., D]``."""
        m_v, m_t = self.mod(feats.to(self.mod.weight)).float().chunk(2)
        w_v = self.w_v.float() + m_v
        w_t = self.w_t.float() + m_t
        return (w_v * y_v.float() + w_t * y_t.float()).to(y_v.dtype)


class SoftSyncLayer(nn.Module):
    """Eqs. 9-10: ``(dv, dt) = Linear([y_v, y_t] * (1 + scale(s)) + shift(s))``.

    Args:
        dim: ``D``. rank: None for a full ``[2D, 2D]`` linear layer, or ``r`` for ``up(down(h))``.
    Neutral init: the output layer (``linear`` / ``up``) and the modulation are zero ->
    ``dv = dt = 0`` (independent streams).
    """

    def __init__(self, dim: int, features: int = SIGMA_FEATURES, rank: int | None = None):
        super().__init__()
        self.dim, self.rank = dim, rank
        self.mod = nn.Linear(features, 4 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)
        if rank is None:
            self.linear = nn.Linear(2 * dim, 2 * dim)
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        else:
            self.down = nn.Linear(2 * dim, rank, bias=False)
            self.up = nn.Linear(rank, 2 * dim)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, y_v: torch.Tensor, y_t: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the updates ``(dv, dt)``, each shaped like ``y_v``."""
        scale, shift = self.mod(feats.to(self.mod.weight)).float().chunk(2)
        h = torch.cat([y_v, y_t], dim=-1).float() * (1 + scale) + shift
        if self.rank is None:
            out = nn.functional.linear(h, self.linear.weight.float(), self.linear.bias.float())
        else:
            out = nn.functional.linear(nn.functional.linear(h, self.down.weight.float()),
                                       self.up.weight.float(), self.up.bias.float())
        dv, dt = out.chunk(2, dim=-1)
        return dv.to(y_v.dtype), dt.to(y_t.dtype)


class GridSync(nn.Module):
    """One sync layer per DiT block (``layers[l]`` follows ``transformer.blocks[l]``).

    Attributes:
        mode: ``"hard"`` or ``"soft"``. features: sigma feature size ``F``.
        rank: soft only, None (full) or the low rank.
    """

    def __init__(self, mode: str, num_layers: int, dim: int, features: int = SIGMA_FEATURES,
                 rank: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"sync mode must be one of {MODES}, got {mode!r}.")
        self.mode, self.features, self.rank, self.dim = mode, features, rank, dim
        if mode == "hard":
            self.layers = nn.ModuleList(HardSyncLayer(dim, features) for _ in range(num_layers))
        else:
            self.layers = nn.ModuleList(SoftSyncLayer(dim, features, rank) for _ in range(num_layers))

    @classmethod
    def neutral(cls, mode: str, transformer, features: int = SIGMA_FEATURES, rank: int | None = None) -> "GridSync":
        """The paper's initialisation for ``transformer`` (hard: averaging; soft: independent streams)."""
        dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        return cls(mode, len(transformer.blocks), dim, features, rank)

    def metadata(self) -> dict[str, str]:
        """The safetensors header metadata of this sync module (format, version, mode, sizes)."""
        meta = {"format": FORMAT, "version": str(VERSION), "mode": self.mode, "num_layers": str(len(self.layers)),
                "inner_dim": str(self.dim), "sigma_features": str(self.features)}
        if self.mode == "soft":
            meta["rank"] = "full" if self.rank is None else str(self.rank)
        return meta


def save_sync_weights(sync: GridSync, path: str | Path, base_model: str | None = None) -> Path:
    """Write ``sync`` in the documented format (module docstring). Returns the path."""
    from safetensors.torch import save_file

    from ..util.atomic import atomic_path

    meta = sync.metadata()
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
