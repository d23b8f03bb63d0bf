"""Fused view-time attention (4Real-Video-V2) on diffusers' stock ``WanTransformer3DModel``: attention
processors that call the shared kernel (:mod:`fourd_core.kernels.fused`: the pattern, RoPE positions,
backends), and the diffusers RoPE table of the fused layout. The two-stream engine:
:mod:`fourd_core.models.grid_streams`.

Fused engine (:class:`FusedEngine`, 4Real-Video-V2)
--------------------------------------------------
One attention over all grid tokens: a token attends to tokens of the same frame, the same view or
the same time (:func:`~fourd_core.kernels.fused.fused_mask_mod`). Processors on every block's ``attn1`` (masked
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
from einops import rearrange

from ..kernels.fused import (FusedGeometry, fold_views, fused_attention, fused_backend_for, fused_time_positions,
                             select_rope_frames)
from .grid_streams import image_token_count, stock_rope


def fused_geometry_for(transformer, views: int, times: int, height: int, width: int, backend: str,
                       device) -> FusedGeometry:
    """The geometry of a window of ``height x width`` latent pixels on a diffusers Wan DiT (with the
    fused RoPE table on ``device``)."""
    p_t, p_h, p_w = transformer.config.patch_size
    cos, sin = fused_rope(transformer, views, times, height, width)
    return FusedGeometry(views, times, (height // p_h) * (width // p_w), backend, device,
                         rope=(cos.to(device), sin.to(device)))


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
            b = q.shape[0]
            k_img, v_img = (fold_views(t.unflatten(2, (attn.heads, -1)), g.views) for t in (k_img, v_img))
            o_img = dispatch_attention_fn(fold_views(q, g.views), k_img, v_img, attn_mask=None, dropout_p=0.0,
                                          is_causal=False, backend=self._attention_backend)
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
        lora: a trained fused-attention LoRA (:func:`fourd_core.models.fused_lora.read_fused_lora`), active
            only while the engine is installed; lora_strength: its scale (1.0 = as trained).
    """

    def __init__(self, transformer, backend: str = "auto", lora: dict | None = None, lora_strength: float = 1.0):
        fused_backend_for(backend, torch.device("cpu"))  # validates the name (and flex availability)
        self.transformer, self.requested_backend = transformer, backend
        self.lora, self.lora_strength = lora, float(lora_strength)
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
        restore_lora = self._activate_lora() if self.lora is not None else None
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
            if restore_lora is not None:
                restore_lora()

    def _activate_lora(self):
        """Load the fused-attention LoRA as a PEFT adapter and make it the only active one at
        ``lora_strength``; returns the function that deletes it again and restores every layer's other
        adapters (active set, enabled flag, ``requires_grad``) as they were before. Loaded afresh on every
        install: an engine with another LoRA (or none) on the same transformer never sees this one."""
        from peft.tuners.lora import LoraLayer

        from .fused_lora import ADAPTER

        tr = self.transformer
        if ADAPTER in (getattr(tr, "peft_config", None) or {}):     # left behind by a process killed mid-run
            tr.delete_adapters(ADAPTER)
        saved = [(m, list(m.active_adapters), bool(m.disable_adapters), {n: p.requires_grad for n, p in m.named_parameters()})
                 for m in tr.modules() if isinstance(m, LoraLayer)]
        tr.load_lora_adapter(self.lora, adapter_name=ADAPTER, prefix="transformer")
        layers = [m for m in tr.modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A]
        for m in layers:
            m.set_adapter(ADAPTER)
            m.set_scale(ADAPTER, self.lora_strength)
            m.enable_adapters(True)

        def restore():
            with warnings.catch_warnings():       # PEFT warns that it re-activates another adapter: set back below
                warnings.filterwarnings("ignore", message=f"Adapter {ADAPTER} was active")
                tr.delete_adapters(ADAPTER)
            for m, active, disabled, grads in saved:
                m.set_adapter(active)
                m.enable_adapters(not disabled)
                for n, p in m.named_parameters():
                    p.requires_grad_(grads.get(n, p.requires_grad))

        return restore

    def predict(self, latent_input: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                row_clip: torch.Tensor | None, cache_name: str = "cond") -> torch.Tensor:
        """Same contract as :meth:`TwoStreamEngine.predict` (row layout in and out)."""
        views, c, times, h, w = latent_input.shape
        key = (views, times, h, w, latent_input.device)
        if self.geometry is None or self._geometry_key != key:
            self.geometry = fused_geometry_for(self.transformer, views, times, h, w,
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
