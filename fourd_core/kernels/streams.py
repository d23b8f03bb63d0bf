"""The two-stream grid of 4Real-Video (Sec. 3.2, Eqs. 4-10) as tensor functions, and the registry of
grid modes that both model paths (diffusers block hooks, :mod:`fourd_core.models.grid_streams`; ComfyUI
block patches, :mod:`fourd_core.native.grid_patches`) and the trainer read.

Token layouts of a window of ``V`` views x ``T`` latent frames with ``S`` tokens per frame:

* **row layout** ``[V, T * S, D]``: batch = the views, each a video (what the stock forward runs);
* **column layout** ``[T, V * S, D]``: batch = the latent times, each a "video" over the views
  (:func:`rows_to_columns` / :func:`columns_to_rows`); its RoPE is the stock table of a clip of ``V``
  frames (the view index takes the place of time).

After block ``l`` the row stream gave ``y_v = x_v + phi_l(x_v)``; the column stream runs the *same*
block on column-layout tokens (``y_t = x_t + phi_l(x_t)``, Eq. 4). A :class:`TwoStreamMode` says which
tokens the column stream gets (:meth:`~TwoStreamMode.column_input`) and how the two results become the
next block's inputs (:meth:`~TwoStreamMode.merge`). Modes (:data:`GRID_MODES`; the CLI, the nodes'
combos and tooltips, the configs' checks and the docs read this table):
"""

from __future__ import annotations

import torch
from einops import rearrange

from ..errors import InputError
from ..registry import Registry
from .sync import soft_average_weight


# ----------------------------------------------------------------------------------------------
# Layouts
def rows_to_columns(x: torch.Tensor, views: int, times: int) -> torch.Tensor:
    """Row layout ``[V, T*S, D]`` -> column layout ``[T, V*S, D]`` (token (v, tau, s) moves to batch
    ``tau``, position ``v*S + s``).

    Raises:
        ValueError: a shape that is not ``V`` rows of ``T`` frames.
    """
    v, n, d = x.shape
    if v != views or n % times:
        raise ValueError(f"row tokens {tuple(x.shape)} do not match a grid of {views} views x {times} times")
    return rearrange(x, "v (t s) d -> t (v s) d", v=views, t=times)


def columns_to_rows(x: torch.Tensor, views: int, times: int) -> torch.Tensor:
    """Inverse of :func:`rows_to_columns`: ``[T, V*S, D]`` -> ``[V, T*S, D]``."""
    t, n, d = x.shape
    if t != times or n % views:
        raise ValueError(f"column tokens {tuple(x.shape)} do not match a grid of {views} views x {times} times")
    return rearrange(x, "t (v s) d -> v (t s) d", v=views, t=times)


def mean_readout(x_v: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """``(x_v + x_t) / 2`` in float32, in ``x_v``'s dtype (soft sync's optional read-out after the last block)."""
    return ((x_v.float() + x_t.float()) * 0.5).to(x_v.dtype)


# ----------------------------------------------------------------------------------------------
# Modes
class GridMode:
    """A grid mode. Attributes (class level):

    * ``kind``: ``"rows"`` (no coupling), ``"two_stream"`` (a :class:`TwoStreamMode`) or ``"fused"``
      (one sequence, :mod:`fourd_core.kernels.fused`);
    * ``sync``: the kind of trained sync layers it takes (``"hard"``, ``"soft"``) or None;
    * ``stateful``: the column stream keeps its own tokens between blocks (soft sync).
    """

    kind = "two_stream"
    sync: str | None = None
    stateful = False


class TwoStreamMode(GridMode):
    """The per-block rule of a two-stream mode (see the module docstring)."""

    def column_input(self, x_v: torch.Tensor, y_v: torch.Tensor, x_t: torch.Tensor | None) -> torch.Tensor:
        """Row-layout tokens the column stream runs on: the block input ``x_v`` (hard sync: one merged
        copy feeds both streams), the row output ``y_v`` (sequential), or the column stream's own tokens
        ``x_t`` (soft; ``x_v`` before the first block)."""
        return x_v

    def merge(self, index: int, num_blocks: int, y_v: torch.Tensor, y_t: torch.Tensor, layer=None,
              feats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x_v, x_t)`` for block ``index + 1`` (``x_t`` None when the streams share one copy).

        Args:
            y_v, y_t: row-layout outputs of the row and the column stream ``[V, T*S, D]``.
            layer: this block's trained sync layer as a callable (:func:`fourd_core.kernels.sync.layer_runner`)
                or None for the neutral initialisation. feats: its sigma features ``[F]``.
        """
        raise NotImplementedError


GRID_MODES: Registry[GridMode] = Registry("grid mode")


@GRID_MODES.register("soft_avg", help="training-free soft sync: weighted averaging of the two streams, "
                                      "w_l = 0.1 + 0.4 l / L (4Real-Video supp. Eq. 13); the default")
class SoftAverage(TwoStreamMode):
    stateful = True

    def column_input(self, x_v, y_v, x_t):
        return x_v if x_t is None else x_t

    def merge(self, index, num_blocks, y_v, y_t, layer=None, feats=None):
        w = soft_average_weight(index, num_blocks)
        return (((1 - w) * y_v.float() + w * y_t.float()).to(y_v.dtype),
                ((1 - w) * y_t.float() + w * y_v.float()).to(y_t.dtype))


@GRID_MODES.register("hard", help="hard sync, one merged copy x = W_v y_v + W_t y_t (Eq. 8); without trained "
                                  "sync weights exact averaging (Eq. 12)")
class HardSync(TwoStreamMode):
    sync = "hard"

    def merge(self, index, num_blocks, y_v, y_t, layer=None, feats=None):
        if layer is None:
            return ((y_v.float() + y_t.float()) * 0.5).to(y_v.dtype), None
        return layer(y_v, y_t, feats), None


@GRID_MODES.register("soft", help="soft sync with trained ModLinear layers, x_v = y_v + dv, x_t = y_t + dt "
                                  "(Eqs. 9-10); without trained sync weights the streams stay independent")
class SoftSync(TwoStreamMode):
    sync = "soft"
    stateful = True

    def column_input(self, x_v, y_v, x_t):
        return x_v if x_t is None else x_t

    def merge(self, index, num_blocks, y_v, y_t, layer=None, feats=None):
        if layer is None:
            return y_v, y_t
        dv, dt = layer(y_v, y_t, feats)
        return y_v + dv, y_t + dt


@GRID_MODES.register("sequential", help="the baseline the paper argues against: each block runs on the rows, then "
                                        "on the columns (Eq. 5)")
class Sequential(TwoStreamMode):
    def column_input(self, x_v, y_v, x_t):
        return y_v

    def merge(self, index, num_blocks, y_v, y_t, layer=None, feats=None):
        return y_t, None


@GRID_MODES.register("fused", help="4Real-Video-V2: the whole grid is one sequence with sparse view-time "
                                   "attention (same view or same time)")
class Fused(GridMode):
    kind = "fused"


@GRID_MODES.register("rows", help="no coupling: every view denoised on its own (plain Wan I2V per view; a "
                                  "cost baseline)")
class Rows(GridMode):
    kind = "rows"


def grid_mode(name: str) -> GridMode:
    """The mode registered as ``name`` (an instance).

    Raises:
        InputError: an unknown name (lists the known ones).
    """
    return GRID_MODES.get(name)()


def check_sync_for(mode_name: str, sync, num_blocks: int) -> None:
    """Check trained sync layers against a grid mode and the DiT's block count.

    Raises:
        InputError: sync layers for a mode that takes none or another kind, or a layer count that
            differs from the DiT's blocks.
    """
    if sync is None:
        return
    want = grid_mode(mode_name).sync
    if want is None or sync.mode != want:
        raise InputError(f"sync weights of mode {sync.mode!r} cannot be used with grid mode {mode_name!r}"
                         f"{'' if want is None else f' (it takes {want!r} sync weights)'}.")
    if len(sync.layers) != num_blocks:
        raise InputError(f"sync weights have {len(sync.layers)} layers, the transformer {num_blocks} blocks.")


def _document_modes() -> None:
    global __doc__
    __doc__ = (__doc__ or "") + "".join(f"\n* ``{n}``: {GRID_MODES.help(n)}" for n in GRID_MODES) + "\n"


_document_modes()
