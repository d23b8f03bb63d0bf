"""Fused view-time attention (4Real-Video-V2) on diffusers' stock ``WanTransformer3DModel`` and the
pieces the native ComfyUI grid shares (mask, RoPE positions, geometry, the attention itself).
Layouts and the two-stream engine: :mod:`fourd_core.models.grid_streams`.

Fused engine (:class:`FusedEngine`, 4Real-Video-V2)
--------------------------------------------------
One attention over all grid tokens: a token attends to tokens of the same frame, the same view or
the same time (:func:`fused_mask_mod`). Processors on every block's ``attn1`` (masked
self-attention: torch flex attention with a ``BlockMask``; fallbacks without flex: a dense boolean
mask through SDPA, or the allowed keys gathered per query frame)
and ``attn2`` (cross-attention: the same text for all; CLIP image tokens per view, so each row
sees its own first frame as in the row stream). RoPE: each token gets the time position
``tau + v`` (plus its stock h, w positions), so same-view pairs see their time offset, same-time
pairs their view offset and same-frame pairs offset 0.

The processors are swapped in by :meth:`FusedEngine.installed` and put back when it exits, also on
errors and cancellation.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from ..errors import InputError
from .grid_streams import image_token_count, stock_rope

FUSED_BACKENDS = ("auto", "flex", "dense", "gather")


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


def fused_rope(transformer, views: int, times: int, height: int, width: int):
    """RoPE for the fused layout: time position ``tau + v`` for token (v, tau), stock h/w positions.

    Returns ``(cos, sin)``, each ``[1, V*T*S, 1, head_dim]`` in fused token order.
    """
    frames = views + times - 1
    cos, sin = stock_rope(transformer, frames, height, width)
    pos = fused_time_positions(views, times)
    return select_rope_frames(cos, frames, pos), select_rope_frames(sin, frames, pos)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of ``x`` ``[B, L, H, d]`` by the stock Wan frequencies."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s_ = cos[..., 0::2], sin[..., 1::2]
    out = torch.stack([x1 * c - x2 * s_, x1 * s_ + x2 * c], dim=-1).flatten(-2)
    return out.type_as(x)


def _projections(attn, x: torch.Tensor, context: torch.Tensor | None):
    if getattr(attn, "fused_projections", False):
        if context is None:
            return attn.to_qkv(x).chunk(3, dim=-1)
        return (attn.to_q(x), *attn.to_kv(context).chunk(2, dim=-1))
    src = x if context is None else context
    return attn.to_q(x), attn.to_k(src), attn.to_v(src)


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


def flex_available() -> bool:
    """True if ``torch.nn.attention.flex_attention`` can be imported (torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def fused_backend_for(requested: str, device: torch.device) -> str:
    """The fused-attention path for ``device``: ``requested``, or for ``"auto"`` flex on CUDA (when
    available) and the exact gathered-keys path elsewhere.

    Raises:
        InputError: an unknown backend, or ``"flex"`` on a PyTorch without flex attention.
    """
    if requested not in FUSED_BACKENDS:
        raise InputError(f"fused backend must be one of {FUSED_BACKENDS}, got {requested!r}.")
    if requested == "flex" and not flex_available():
        raise InputError("This PyTorch has no flex attention (needs torch >= 2.5); use backend 'dense' or 'gather'.")
    if requested != "auto":
        return requested
    return "flex" if torch.device(device).type == "cuda" and flex_available() else "gather"


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


class FusedGeometry:
    """What fused attention needs for one window: sizes, the mask (shared by all blocks) and, for
    the diffusers processors, the RoPE table.

    Args:
        views, times: grid window size (``T`` in latent frames). tokens_per_frame: ``S``.
        backend: ``"flex"`` | ``"dense"`` | ``"gather"`` (see :func:`fused_attention`).
        rope: optional ``(cos, sin)`` of the fused layout (:func:`fused_rope`).
    """

    def __init__(self, views: int, times: int, tokens_per_frame: int, backend: str, device, rope=None):
        self.views, self.times, self.tokens_per_frame = views, times, tokens_per_frame
        self.rope = rope
        self.backend = backend
        self.block_mask = None
        if backend == "flex":
            self.block_mask = fused_block_mask(views, times, self.tokens_per_frame, device)

    @classmethod
    def for_transformer(cls, transformer, views: int, times: int, height: int, width: int, backend: str,
                        device) -> "FusedGeometry":
        """The geometry of a window of ``height x width`` latent pixels on a diffusers Wan DiT (with
        the fused RoPE table on ``device``)."""
        p_t, p_h, p_w = transformer.config.patch_size
        cos, sin = fused_rope(transformer, views, times, height, width)
        return cls(views, times, (height // p_h) * (width // p_w), backend, device,
                   rope=(cos.to(device), sin.to(device)))


class FusedSelfAttnProcessor:
    """``attn1`` processor: masked self-attention over all grid tokens (see module docstring)."""

    def __init__(self, engine: "FusedEngine"):
        self.engine = engine

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kw):
        g = self.engine.geometry
        q, k, v = _projections(attn, hidden_states, None)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        cos, sin = g.rope
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        out = fused_attention(q, k, v, g)
        out = out.flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: FusedGeometry) -> torch.Tensor:
    """Sparse view-time attention of ``q, k, v`` ``[B, L, H, d]`` -> ``[B, L, H, d]`` (``L = V*T*S``,
    each batch entry one grid).

    ``g.backend == "flex"``: flex attention with the block mask; ``"dense"``: SDPA with the dense
    boolean mask, one view row of queries at a time (mask memory ``T*S x L`` per call; cost
    ``L^2``); ``"gather"``: the allowed keys gathered per query frame (:func:`_gather_attention`).
    Used by the diffusers processors and by the native path's attention override.
    """
    if q.shape[1] != g.views * g.times * g.tokens_per_frame:
        raise ValueError(f"fused attention got {q.shape[1]} tokens for a {g.views} x {g.times} grid of "
                         f"{g.tokens_per_frame} tokens per frame")
    if g.backend == "gather":
        return _gather_attention(q, k, v, g)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    if g.backend == "flex":
        out = _flex(qh, kh, vh, g.block_mask)
    else:
        n_row = g.times * g.tokens_per_frame
        outs = []
        for r in range(g.views):
            sl = slice(r * n_row, (r + 1) * n_row)
            mask = fused_dense_mask(g.views, g.times, g.tokens_per_frame, q.device, rows=sl)
            outs.append(F.scaled_dot_product_attention(qh[:, :, sl], kh, vh, attn_mask=mask))
        out = torch.cat(outs, dim=2)
    return out.transpose(1, 2)


def _gather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: FusedGeometry) -> torch.Tensor:
    """The sparse pattern without a mask: for query frame (r, tau) gather the keys of row r (T
    frames) and of column tau in the other views (V - 1 frames) and attend densely over those
    ``(T + V - 1) * S`` keys. Exact (each allowed key once); cost ``L * (T + V - 1) * S``."""
    views, times, s = g.views, g.times, g.tokens_per_frame
    b, n, heads, d = q.shape
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


class FusedCrossAttnProcessor:
    """``attn2`` processor for the fused layout: text cross-attention for all tokens; CLIP image
    cross-attention per view (queries of view v see the image tokens of view v only). Shapes:
    ``hidden_states [B, V*T*S, C]`` (each batch entry one grid, tokens in order v, tau, s) and
    ``encoder_hidden_states [B, V*I + 512, C]`` (``I`` CLIP tokens per view, view-major, then the text).

    Both attentions go through diffusers' ``dispatch_attention_fn`` with the attention backend of
    the processor it replaces (``_attention_backend``, set by ``set_attention_backend`` / Memory
    Settings), so flash/sage/cuDNN choices hold in fused grid mode too.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, engine: "FusedEngine", backend=None):
        self.engine = engine
        self._attention_backend = backend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kw):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        g = self.engine.geometry
        n_img = image_token_count(attn, encoder_hidden_states)
        img, text = encoder_hidden_states[:, :n_img], encoder_hidden_states[:, n_img:]
        q, k, v = _projections(attn, hidden_states, text)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        out = dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend).flatten(2, 3).type_as(q)
        if n_img:
            if getattr(attn, "fused_projections", False):
                k_img, v_img = attn.to_added_kv(img).chunk(2, dim=-1)
            else:
                k_img, v_img = attn.add_k_proj(img), attn.add_v_proj(img)
            k_img = attn.norm_added_k(k_img)
            # each batch entry is one grid: fold (batch, view) so the queries of view v of entry b
            # see the image tokens of view v of entry b only (tokens are view-major within an entry)
            b, per = q.shape[0], n_img // g.views
            qv = q.reshape(b * g.views, -1, q.shape[2], q.shape[3])
            k_img = k_img.unflatten(2, (attn.heads, -1)).reshape(b * g.views, per, attn.heads, -1)
            v_img = v_img.unflatten(2, (attn.heads, -1)).reshape(b * g.views, per, attn.heads, -1)
            o_img = dispatch_attention_fn(qv, k_img, v_img, attn_mask=None, dropout_p=0.0, is_causal=False,
                                          backend=self._attention_backend)
            out = out + o_img.reshape(b, -1, attn.heads * o_img.shape[-1]).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


class FusedEngine:
    """4Real-Video-V2 fused view-time attention on the stock Wan forward.

    Args:
        transformer: diffusers ``WanTransformer3DModel``.
        backend: ``"flex"`` (torch flex attention + BlockMask; compiled on CUDA, eager reference on
            CPU), ``"dense"`` (boolean mask via SDPA; the reference), ``"gather"`` (allowed keys
            gathered per query frame, no mask, sparse cost) or ``"auto"`` (flex on CUDA when
            available, gather otherwise).
    """

    def __init__(self, transformer, backend: str = "auto"):
        fused_backend_for(backend, torch.device("cpu"))  # validates the name (and flex availability)
        self.transformer, self.requested_backend = transformer, backend
        self.geometry: FusedGeometry | None = None
        self._geometry_key = None
        self.mode = "fused"
        self.column_clip = None  # unused; for a uniform engine interface
        self._saved: list = []

    def backend_for(self, device: torch.device) -> str:
        """The fused-attention path for ``device``: the requested one, or for ``"auto"`` flex on CUDA
        (when available) and the exact gathered-keys path elsewhere (:func:`fused_backend_for`)."""
        return fused_backend_for(self.requested_backend, device)

    @contextlib.contextmanager
    def installed(self) -> Iterator["FusedEngine"]:
        """Swap in the fused processors on every block; the originals are restored on exit."""
        if self._saved:
            raise RuntimeError("FusedEngine is already installed.")
        try:
            for block in self.transformer.blocks:
                self._saved.append((block.attn1, block.attn1.processor))
                self._saved.append((block.attn2, block.attn2.processor))
                block.attn1.set_processor(FusedSelfAttnProcessor(self))
                block.attn2.set_processor(FusedCrossAttnProcessor(
                    self, backend=getattr(block.attn2.processor, "_attention_backend", None)))
            yield self
        finally:
            for attn, proc in reversed(self._saved):
                attn.set_processor(proc)
            self._saved.clear()
            self.geometry = None

    def predict(self, latent_input: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                row_clip: torch.Tensor | None, cache_name: str = "cond") -> torch.Tensor:
        """Same contract as :meth:`TwoStreamEngine.predict` (row layout in and out)."""
        views, c, times, h, w = latent_input.shape
        key = (views, times, h, w, latent_input.device)
        if self.geometry is None or self._geometry_key != key:
            self.geometry = FusedGeometry.for_transformer(self.transformer, views, times, h, w,
                                                          self.backend_for(latent_input.device), latent_input.device)
            self._geometry_key = key
        x = rearrange(latent_input, "v c t h w -> 1 c (v t) h w")  # the whole grid as one video
        clip = None if row_clip is None else row_clip.reshape(1, -1, row_clip.shape[-1])
        tr = self.transformer
        ctx = tr.cache_context(cache_name) if hasattr(tr, "cache_context") else contextlib.nullcontext()
        with ctx:
            out = tr(hidden_states=x, timestep=timestep.reshape(-1)[:1], encoder_hidden_states=text[:1],
                     encoder_hidden_states_image=clip, return_dict=False)[0]
        return rearrange(out, "1 c (v t) h w -> v c t h w", v=views, t=times)
