"""Grid denoisers on diffusers' stock ``WanTransformer3DModel``: the token layouts and the two-stream
engine (4Real-Video), as block hooks (no fork of the forward). The fused view-time attention
(4Real-Video-V2) is :mod:`fourd_core.models.grid_fused`.

Token grid
----------
A window of the grid is a latent tensor ``[V, C, T, h, w]``: row ``v`` is the latent video of view
``v`` (the causal Wan VAE encodes each row on its own, so latent frame 0 of row ``v`` encodes the
single image ``I[v, 0]``), ``T`` latent frames. After the patch embedding a frame has
``S = (h / 2) * (w / 2)`` tokens in (h, w) order.

* **row layout** ``[V, T * S, D]``: what the stock forward runs (batch = V views, each a video);
* **column layout** ``[T, V * S, D]``: batch = T latent times, each a "video" over the views
  (:func:`rows_to_columns` / :func:`columns_to_rows`). Its RoPE is the stock ``transformer.rope``
  evaluated for a clip of ``V`` frames: the view index takes the place of the time index.
* **fused layout** ``[1, V * T * S, D]``: all grid tokens in one sequence, frame index
  ``f = v * T + tau`` (:class:`~fourd_core.models.grid_fused.FusedEngine`).

Two-stream engine (:class:`TwoStreamEngine`, 4Real-Video Sec. 3.2, Eqs. 4-10)
------------------------------------------------------------------------------
The stock forward runs the **row stream**. A forward hook on every ``transformer.blocks[l]`` takes
the block's row output ``y_v = x_v + phi_l(x_v)`` and runs the *same block* on column-layout
tokens (``y_t = x_t + phi_l(x_t)``, Eq. 4), with the timestep modulation expanded to the column
batch and a column context (the same text; CLIP features per column, see ``column_clip``). Then:

* ``"hard"`` (Eq. 8): one merged copy ``x_{l+1} = W_v y_v + W_t y_t`` feeds both streams; neutral
  weights = averaging (Eq. 12);
* ``"soft"`` (Eqs. 9-10): the streams stay separate, ``x_v = y_v + dv``, ``x_t = y_t + dt``; the
  column copy lives in the hook's state between blocks and is initialised from the block-0 input;
  without weights (``sync=None``) or with zero-initialised ones the streams are independent;
* ``"soft_avg"`` (supp. Eq. 13): training-free soft sync, weighted averaging with
  ``w_l = 0.1 + 0.4 l / L``;
* ``"sequential"`` (Eq. 5, the baseline the paper argues against): ``y = block_row(x)``,
  ``x_{l+1} = block_col(y)``;
* ``"rows"``: no hooks: every row denoised on its own (plain Wan I2V per view; a cost baseline).

The prediction is read out from the row stream (what the stock forward returns). For soft sync,
``soft_readout="mean"`` returns ``(x_v + x_t) / 2`` after the last block instead.

Everything is restored (hooks removed, processors put back) when the ``installed()`` context exits,
also on errors and cancellation. Block-level forward hooks call the block module again for the
column stream, so diffusers' offloading hooks onload it again (correct, one extra transfer per
block under group offloading); caching hooks that skip blocks should be off for grid sampling.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from einops import rearrange

from ..errors import InputError
from .sync import GridSync, sigma_features, soft_average_weight

TWO_STREAM_MODES = ("hard", "soft", "soft_avg", "sequential", "rows")
MODES = TWO_STREAM_MODES + ("fused",)
TEXT_TOKENS = 512  # diffusers' Wan attention processor: the last 512 context tokens are text


# ----------------------------------------------------------------------------------------------
# Layouts
def rows_to_columns(x: torch.Tensor, views: int, times: int) -> torch.Tensor:
    """Row layout ``[V, T*S, D]`` -> column layout ``[T, V*S, D]`` (token (v, tau, s) moves to
    batch ``tau``, position ``v*S + s``)."""
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


def stock_rope(transformer, frames: int, height: int, width: int):
    """``transformer.rope`` for a latent clip of ``frames`` frames of ``height x width`` latent pixels.

    Returns the stock ``(cos, sin)``, each ``[1, frames * S, 1, head_dim]`` in (t, h, w) order. The
    rope module only reads the input's shape, so a meta tensor stands in for the latents.
    """
    p_t = transformer.config.patch_size[0]
    dummy = torch.empty((1, 1, frames * p_t, height, width), device="meta")
    return transformer.rope(dummy)


def image_token_count(attn, context: torch.Tensor) -> int:
    """CLIP image tokens at the front of ``context`` (0 for a model without image cross-attention)."""
    return context.shape[1] - TEXT_TOKENS if attn.add_k_proj is not None else 0


# ----------------------------------------------------------------------------------------------
# Two streams
class TwoStreamEngine:
    """Row/column two-stream denoiser (see module docstring).

    Args:
        transformer: a diffusers ``WanTransformer3DModel`` (Wan2.1: per-sample timestep).
        mode: one of :data:`TWO_STREAM_MODES`.
        sync: :class:`~fourd_core.models.sync.GridSync` for ``"hard"`` / ``"soft"``; None = the
            neutral initialisation (hard: averaging; soft: independent streams).
        soft_readout: ``"row"`` (default) or ``"mean"`` for soft modes.
        num_train_timesteps: ``sigma = timestep / num_train_timesteps`` for the sync modulation.

    Attributes:
        column_clip: raw CLIP features for the column stream, ``[T, N_img, C_img]`` (one per latent
            time of the current window), or None to give every column the context of row 0.
    """

    def __init__(self, transformer, mode: str, sync: GridSync | None = None, soft_readout: str = "row",
                 num_train_timesteps: int = 1000):
        if mode not in TWO_STREAM_MODES:
            raise InputError(f"two-stream mode must be one of {TWO_STREAM_MODES}, got {mode!r}.")
        if sync is not None:
            want = "hard" if mode == "hard" else "soft" if mode == "soft" else None
            if want is None or sync.mode != want:
                raise InputError(f"sync weights of mode {sync.mode!r} cannot be used with grid mode {mode!r}.")
            if len(sync.layers) != len(transformer.blocks):
                raise InputError(f"sync weights have {len(sync.layers)} layers, the transformer {len(transformer.blocks)} blocks.")
        if soft_readout not in ("row", "mean"):
            raise InputError(f"soft_readout must be 'row' or 'mean', got {soft_readout!r}.")
        self.transformer, self.mode, self.sync = transformer, mode, sync
        self.soft_readout = soft_readout
        self.num_train_timesteps = num_train_timesteps
        self.column_clip: torch.Tensor | None = None
        self._handles: list = []
        self._inside = False
        self._state: dict = {}

    # -- installation -------------------------------------------------------------------------
    @contextlib.contextmanager
    def installed(self) -> Iterator["TwoStreamEngine"]:
        """Register the hooks (none for ``"rows"``); always removed on exit."""
        if self._handles:
            raise RuntimeError("TwoStreamEngine is already installed.")
        tr = self.transformer
        try:
            if self.mode != "rows":
                self._handles.append(tr.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
                for i, block in enumerate(tr.blocks):
                    self._handles.append(block.register_forward_hook(self._make_block_hook(i), with_kwargs=True))
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self._state = {}
            self._inside = False

    def _pre_forward(self, module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        _, _, frames, height, width = hidden.shape
        p_t, p_h, p_w = module.config.patch_size
        if timestep.ndim != 1:
            raise InputError("The grid sampler needs a Wan2.1-style model (one timestep per sample).")
        sigma = float(timestep.flatten()[0]) / self.num_train_timesteps
        self._state = {"views": hidden.shape[0], "times": frames // p_t, "height": height, "width": width,
                       "sigma": sigma, "feats": None, "x_t": None, "col": None}
        return None

    def _column_inputs(self, enc: torch.Tensor, temb: torch.Tensor, block) -> tuple:
        """(context, temb, rope) for the column batch; computed once per forward."""
        st = self._state
        if st["col"] is not None:
            return st["col"]
        views, times = st["views"], st["times"]
        if temb.ndim != 3:
            raise InputError("The grid sampler supports Wan2.1 models (timestep modulation [B, 6, D]).")
        temb_col = temb[:1].expand(times, -1, -1)
        n_img = image_token_count(block.attn2, enc)
        if self.column_clip is not None and n_img > 0:
            clip = self.column_clip
            if clip.shape[0] != times:
                raise InputError(f"column_clip has {clip.shape[0]} entries for {times} latent times.")
            # inputs go to the activation device; offloading hooks (if any) bring the weights there
            embedder = self.transformer.condition_embedder.image_embedder
            img = embedder(clip.to(device=enc.device, dtype=enc.dtype)).to(device=enc.device, dtype=enc.dtype)
            if img.shape[1] != n_img:
                raise InputError(f"column CLIP gives {img.shape[1]} image tokens, the rows {n_img}.")
            ctx = torch.cat([img, enc[:1, n_img:].expand(times, -1, -1)], dim=1)
        else:
            ctx = enc[:1].expand(times, -1, -1)
        cos, sin = stock_rope(self.transformer, views, st["height"], st["width"])
        st["col"] = (ctx, temb_col, (cos.to(enc.device), sin.to(enc.device)))
        return st["col"]

    def _make_block_hook(self, index: int):
        def hook(block, args, kwargs, output):
            if self._inside:
                return None
            return self._after_block(index, block, args, kwargs, output)

        return hook

    def _run_block(self, block, x, ctx, temb, rope):
        self._inside = True
        try:
            return block(x, ctx, temb, rope)
        finally:
            self._inside = False

    def _after_block(self, index, block, args, kwargs, y_v):
        names = ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb")
        vals = list(args) + [kwargs[n] for n in names[len(args):]]
        x_v, enc, temb = vals[0], vals[1], vals[2]
        st = self._state
        views, times = st["views"], st["times"]
        ctx, temb_col, rope_col = self._column_inputs(enc, temb, block)
        if self.mode == "sequential":  # Eq. 5
            y_col = self._run_block(block, rows_to_columns(y_v, views, times), ctx, temb_col, rope_col)
            return columns_to_rows(y_col, views, times)
        if self.mode in ("soft", "soft_avg"):
            x_t = st["x_t"] if st["x_t"] is not None else x_v
        else:
            x_t = x_v  # hard: the merged copy feeds both streams
        y_t = columns_to_rows(self._run_block(block, rows_to_columns(x_t, views, times), ctx, temb_col, rope_col),
                              views, times)
        last = index == len(self.transformer.blocks) - 1
        if self.mode == "hard":  # Eq. 8
            if self.sync is None:
                return ((y_v.float() + y_t.float()) * 0.5).to(y_v.dtype)
            return self.sync.layers[index](y_v, y_t, self._feats(y_v))
        if self.mode == "soft_avg":  # supp. Eq. 13
            w = soft_average_weight(index, len(self.transformer.blocks))
            x_v_next = ((1 - w) * y_v.float() + w * y_t.float()).to(y_v.dtype)
            x_t_next = ((1 - w) * y_t.float() + w * y_v.float()).to(y_t.dtype)
        elif self.sync is None:  # soft, neutral: independent streams
            x_v_next, x_t_next = y_v, y_t
        else:  # soft, Eqs. 9-10
            dv, dt = self.sync.layers[index](y_v, y_t, self._feats(y_v))
            x_v_next, x_t_next = y_v + dv, y_t + dt
        st["x_t"] = x_t_next
        if last and self.soft_readout == "mean":
            return ((x_v_next.float() + x_t_next.float()) * 0.5).to(x_v_next.dtype)
        return x_v_next

    def _feats(self, like: torch.Tensor) -> torch.Tensor:
        st = self._state
        if st["feats"] is None:
            if next(self.sync.parameters()).device != like.device:
                self.sync.to(like.device)
            st["feats"] = sigma_features(st["sigma"], self.sync.features).to(like.device)
        return st["feats"]

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, latent_input: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                row_clip: torch.Tensor | None, cache_name: str = "cond") -> torch.Tensor:
        """One denoiser evaluation on a window.

        Args:
            latent_input: ``[V, C_in, T, h, w]`` (noisy latents | mask | condition), model dtype.
            timestep: 0-d or ``[1]`` tensor (the scheduler's timestep, ``1000 * sigma``).
            text: ``[1, 512, D_text]`` prompt embeddings (shared by all views).
            row_clip: ``[V, N_img, C_img]`` CLIP features per row, or None for T2V models.
        Returns:
            the flow prediction ``[V, 16, T, h, w]`` (row layout).
        """
        v = latent_input.shape[0]
        tr = self.transformer
        ctx = tr.cache_context(cache_name) if hasattr(tr, "cache_context") else contextlib.nullcontext()
        with ctx:
            return tr(hidden_states=latent_input, timestep=timestep.reshape(-1)[:1].expand(v),
                      encoder_hidden_states=text.expand(v, -1, -1), encoder_hidden_states_image=row_clip,
                      return_dict=False)[0]
