"""Synchronisation layers of the 4Real-Video two-stream DiT (Sec. 3.2.4, Eqs. 8-10): the math both model
paths (diffusers hooks, ComfyUI block patches) and the trainer run. Their file format is
:mod:`fourd_core.models.sync`.

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
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError

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
            raise InputError(f"sync mode must be one of {MODES}, got {mode!r}.")
        self.mode, self.features, self.rank, self.dim = mode, features, rank, dim
        if mode == "hard":
            self.layers = nn.ModuleList(HardSyncLayer(dim, features) for _ in range(num_layers))
        else:
            self.layers = nn.ModuleList(SoftSyncLayer(dim, features, rank) for _ in range(num_layers))

    @property
    def sizes(self) -> dict[str, str]:
        """Mode and sizes as strings (what the file header records, :func:`fourd_core.models.sync.sync_metadata`)."""
        meta = {"mode": self.mode, "num_layers": str(len(self.layers)), "inner_dim": str(self.dim),
                "sigma_features": str(self.features)}
        if self.mode == "soft":
            meta["rank"] = "full" if self.rank is None else str(self.rank)
        return meta

    @classmethod
    def neutral(cls, mode: str, transformer, features: int = SIGMA_FEATURES, rank: int | None = None) -> "GridSync":
        """The paper's initialisation for ``transformer`` (hard: averaging; soft: independent streams)."""
        dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        return cls(mode, len(transformer.blocks), dim, features, rank)


def layer_runner(layer: nn.Module, device: torch.device):
    """``layer`` as a callable whose computation runs on ``device``.

    When every parameter already lives there (the usual case: the caller placed the module, or a host's
    memory manager loaded it) this is the module itself. Otherwise (a partial low-VRAM load that left
    some weights, or parts of one layer, on the offload device) the layer runs on copies of its weights
    on ``device`` through ``torch.func.functional_call``, and the module is never moved behind the
    owner's back.
    """
    params = dict(layer.named_parameters())
    if all(p.device == device for p in params.values()):
        return layer
    moved = {n: p.to(device) for n, p in params.items()}

    def run(*args):
        return torch.func.functional_call(layer, moved, args)

    return run
