"""Fused view-time attention of 4Real-Video-V2 as tensor functions: the sparse pattern, its RoPE
positions, and the attention backends both model paths use (diffusers processors,
:mod:`fourd_core.models.grid_fused`; ComfyUI's attention override, :mod:`fourd_core.native.grid_patches`).

The whole grid window is one sequence of ``L = V * T * S`` tokens, frame index ``f = v * T + tau`` (token
order v, tau, s). A token attends to tokens of the same view or the same latent time (which includes the
same frame; :func:`fused_mask_mod`). RoPE: token (v, tau) gets the time position ``tau + v``
(:func:`fused_time_positions`), so same-view pairs see their time offset, same-time pairs their view
offset and same-frame pairs offset 0. Each view cross-attends to its own CLIP tokens (:func:`fold_views`).

Backends (:data:`FUSED_BACKENDS`, ``"auto"`` = flex on CUDA when available, else gather):
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from ..errors import InputError
from ..registry import Registry


def fused_frame_ids(views: int, times: int, tokens_per_frame: int, device=None):
    """(view, time) index of every fused token, each ``[V*T*S]`` int64 (token order v, tau, s)."""
    idx = torch.arange(views * times * tokens_per_frame, device=device)
    frame = idx // tokens_per_frame
    return frame // times, frame % times


def fused_mask_mod(views: int, times: int, tokens_per_frame: int):
    """flex-attention ``mask_mod(b, h, q, kv)``: True iff q and kv are in the same view or the same
    latent time (which includes the same frame). 4Real-Video-V2's sparse view-time pattern."""
    s, t = tokens_per_frame, times

    def mask_mod(b, h, q_idx, kv_idx):
        fq, fk = q_idx // s, kv_idx // s
        return ((fq // t) == (fk // t)) | ((fq % t) == (fk % t))

    return mask_mod


def fused_dense_mask(views: int, times: int, tokens_per_frame: int, device=None,
                     rows: slice | None = None) -> torch.Tensor:
    """Dense boolean mask ``[L_q, L]`` (True = may attend) of the fused pattern, ``L = V*T*S``;
    ``rows`` selects a slice of query tokens (default all)."""
    vv, tt = fused_frame_ids(views, times, tokens_per_frame, device)
    qv, qt = (vv, tt) if rows is None else (vv[rows], tt[rows])
    return (qv[:, None] == vv[None, :]) | (qt[:, None] == tt[None, :])


def fused_time_positions(views: int, times: int) -> torch.Tensor:
    """RoPE time position of every fused frame ``f = v * T + tau``: ``tau + v``, ``[V*T]`` int64
    (4Real-Video-V2: same-view pairs see their time offset, same-time pairs their view offset)."""
    return (torch.arange(views)[:, None] + torch.arange(times)[None, :]).reshape(-1)


def select_rope_frames(table: torch.Tensor, frames: int, positions: torch.Tensor) -> torch.Tensor:
    """Pick whole frames of a RoPE table laid out ``[B, frames * S, ...]`` (frame-major).

    Args:
        table: a stock table for a clip of ``frames`` frames (diffusers' ``cos``/``sin``
            ``[1, F*S, 1, d]`` or ComfyUI's ``rope_encode`` ``[1, F*S, 1, d/2, 2, 2]``).
        positions: ``[N]`` frame indices into the table.
    Returns:
        ``[B, N * S, ...]``: frame ``i`` of the result is frame ``positions[i]`` of the table.
    """
    b, n = table.shape[:2]
    s = n // frames
    rest = table.shape[2:]
    out = table.reshape(b, frames, s, *rest)[:, positions.to(table.device)]
    return out.reshape(b, positions.numel() * s, *rest)


def fold_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """``[B, V * n, ...]`` (view-major) -> ``[B * V, n, ...]``: each view becomes its own batch entry, so the
    queries of view v cross-attend to the CLIP tokens of view v only (and ``reshape(B, V * n, ...)``
    undoes it)."""
    b, n = x.shape[:2]
    if n % views:
        raise ValueError(f"{n} tokens do not split into {views} views")
    return x.reshape(b * views, n // views, *x.shape[2:])


# ----------------------------------------------------------------------------------------------
# Backends
class FusedBackend:
    """One way to compute the fused attention: :meth:`prepare` builds what every block of a window shares
    (e.g. a flex ``BlockMask``), :meth:`attend` computes ``[B, L, H, d]`` -> ``[B, L, H, d]``."""

    def available(self, device: torch.device) -> bool:
        return True

    def prepare(self, views: int, times: int, tokens_per_frame: int, device):
        return None

    def attend(self, q, k, v, g: "FusedGeometry") -> torch.Tensor:
        raise NotImplementedError


FUSED_BACKENDS: Registry[FusedBackend] = Registry("fused attention backend")


def flex_available() -> bool:
    """True if ``torch.nn.attention.flex_attention`` can be imported (torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


_COMPILED_FLEX = None


def _flex(q, k, v, block_mask):
    """flex attention on ``[B, H, L, d]``: compiled on CUDA, the eager reference elsewhere."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda:
        if _COMPILED_FLEX is None:
            _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
        return _COMPILED_FLEX(q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flex_attention(q, k, v, block_mask=block_mask)


def fused_block_mask(views: int, times: int, tokens_per_frame: int, device):
    """flex ``BlockMask`` of the fused pattern over ``L = V*T*S`` tokens.

    Eager ``create_block_mask`` materialises the ``[L, L]`` boolean mask (and its two comparison
    terms): ~60 GB at a real grid (8 views x 13 latent frames x 1,350 tokens = 140,400 tokens). On
    CUDA it is therefore compiled, which computes the block summary without the dense mask (torch's
    documented way for long sequences); elsewhere the eager path (small test sizes).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    n = views * times * tokens_per_frame
    build = torch.compile(create_block_mask) if torch.device(device).type == "cuda" else create_block_mask
    return build(fused_mask_mod(views, times, tokens_per_frame), None, None, n, n, device=device)


@FUSED_BACKENDS.register("flex", help="torch flex attention with a BlockMask (compiled on CUDA; the eager reference "
                                      "elsewhere)")
class FlexBackend(FusedBackend):
    def available(self, device):
        return flex_available()

    def prepare(self, views, times, tokens_per_frame, device):
        return fused_block_mask(views, times, tokens_per_frame, device)

    def attend(self, q, k, v, g):
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        return _flex(qh, kh, vh, g.state).transpose(1, 2)


@FUSED_BACKENDS.register("dense", help="SDPA with the dense boolean mask, one view row of queries at a time (the "
                                       "reference; cost L^2)")
class DenseBackend(FusedBackend):
    def attend(self, q, k, v, g):
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        n_row = g.times * g.tokens_per_frame
        outs = []
        for r in range(g.views):
            sl = slice(r * n_row, (r + 1) * n_row)
            mask = fused_dense_mask(g.views, g.times, g.tokens_per_frame, q.device, rows=sl)
            outs.append(F.scaled_dot_product_attention(qh[:, :, sl], kh, vh, attn_mask=mask))
        return torch.cat(outs, dim=2).transpose(1, 2)


@FUSED_BACKENDS.register("gather", help="the allowed keys gathered per query frame, dense attention over those "
                                        "(T + V - 1) S keys: exact, no mask, sparse cost")
class GatherBackend(FusedBackend):
    def attend(self, q, k, v, g):
        views, times, s = g.views, g.times, g.tokens_per_frame
        b = q.shape[0]
        qf, kf, vf = (rearrange(t, "b (v t s) h d -> b v t s h d", v=views, t=times, s=s) for t in (q, k, v))
        outs = []
        for r in range(views):
            others = [u for u in range(views) if u != r]

            def keys(t):
                row = repeat(t[:, r], "b t s h d -> b tau (t s) h d", tau=times)   # row r: the same keys for every tau
                col = rearrange(t[:, others], "b v t s h d -> b t (v s) h d")       # column tau: the other views
                return rearrange(torch.cat([row, col], dim=2), "b t n h d -> (b t) h n d")  # [B*T, H, (T+V-1)S, d]

            qr = rearrange(qf[:, r], "b t s h d -> (b t) h s d")
            o = F.scaled_dot_product_attention(qr, keys(kf), keys(vf))  # [B*T, H, S, d]
            outs.append(rearrange(o, "(b t) h s d -> b t s h d", b=b))
        return rearrange(torch.stack(outs, dim=1), "b v t s h d -> b (v t s) h d")


AUTO = "auto"


def fused_backend_names() -> tuple[str, ...]:
    """``("auto", *registered)``: the choices of every fused-backend setting."""
    return (AUTO, *FUSED_BACKENDS.names())


def fused_backend_for(requested: str, device: torch.device) -> str:
    """The fused-attention backend for ``device``: ``requested``, or for ``"auto"`` flex on CUDA (when
    available) and the exact gathered-keys path elsewhere.

    Raises:
        InputError: an unknown backend, or one that is not available here (e.g. ``"flex"`` on a PyTorch
            without flex attention).
    """
    if requested != AUTO and requested not in FUSED_BACKENDS:
        raise InputError(f"fused backend must be one of {fused_backend_names()}, got {str(requested)[:40]!r}.")
    if requested != AUTO:
        if not FUSED_BACKENDS.get(requested)().available(torch.device(device)):
            raise InputError(f"The fused backend {requested!r} is not available here (flex needs torch >= 2.5); use "
                             "'dense' or 'gather'.")
        return requested
    return "flex" if torch.device(device).type == "cuda" and flex_available() else "gather"


class FusedGeometry:
    """What fused attention needs for one window: sizes, the backend's shared state (e.g. the flex
    ``BlockMask``) and, for the diffusers processors, the RoPE table.

    Args:
        views, times: grid window size (``T`` in latent frames). tokens_per_frame: ``S``.
        backend: a registered backend name (:data:`FUSED_BACKENDS`; not ``"auto"``: resolve it with
            :func:`fused_backend_for`).
        rope: optional ``(cos, sin)`` of the fused layout.
    """

    def __init__(self, views: int, times: int, tokens_per_frame: int, backend: str, device, rope=None):
        self.views, self.times, self.tokens_per_frame = views, times, tokens_per_frame
        self.rope = rope
        self.backend = backend
        self.impl = FUSED_BACKENDS.get(backend)()
        self.state = self.impl.prepare(views, times, tokens_per_frame, device)

    @property
    def block_mask(self):
        """The flex ``BlockMask`` (None for the other backends)."""
        return self.state if self.backend == "flex" else None


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: FusedGeometry) -> torch.Tensor:
    """Sparse view-time attention of ``q, k, v`` ``[B, L, H, d]`` -> ``[B, L, H, d]`` (``L = V*T*S``,
    each batch entry one grid), with the backend of ``g``.

    Raises:
        ValueError: a token count that does not match the geometry.
    """
    if q.shape[1] != g.views * g.times * g.tokens_per_frame:
        raise ValueError(f"fused attention got {q.shape[1]} tokens for a {g.views} x {g.times} grid of "
                         f"{g.tokens_per_frame} tokens per frame")
    return g.impl.attend(q, k, v, g)


def _document_backends() -> None:
    global __doc__
    __doc__ = (__doc__ or "") + "".join(f"\n* ``{n}``: {FUSED_BACKENDS.help(n)}" for n in FUSED_BACKENDS) + "\n"


_document_backends()
