"""The two-stream grid denoiser (4Real-Video Sec. 3.2, Eqs. 4-10) on diffusers' stock
``WanTransformer3DModel``, as diffusers model hooks (``ModelHook`` / ``HookRegistry``, the mechanism
of diffusers' own ``hooks/first_block_cache.py``; no fork of the forward). The per-block math is
the shared kernel :mod:`fourd_core.kernels.streams` (modes, layouts) and :mod:`fourd_core.kernels.sync`
(sync layers); the fused view-time attention (4Real-Video-V2) is :mod:`fourd_core.models.grid_fused`.

A window of the grid is a latent tensor ``[V, C, T, h, w]``: row ``v`` is the latent video of view
``v`` (the causal Wan VAE encodes each row on its own, so latent frame 0 of row ``v`` encodes the
single image ``I[v, 0]``), ``T`` latent frames, ``S = (h / 2) * (w / 2)`` tokens per frame.

* A hook on the transformer (:class:`_GridForwardHook`) records the call's grid state: views, latent
  times, the noise level ``sigma = timestep / num_train_timesteps`` (for trained sync layers).
* A hook on every block (:class:`_GridBlockHook`) replaces the block's forward: the row stream is the
  block's own forward on the ``V`` rows (``y_v``); the column stream calls the *same* forward on column-layout
  tokens (``y_t``) with the timestep modulation expanded to the column batch and a column context (the
  same text; CLIP features per column, see ``column_clip``); the mode
  (:func:`fourd_core.kernels.streams.grid_mode`) merges them. Calling the block's inner forward for the
  column stream needs no re-entrancy guard, and other hooks registered on the block before (group
  offloading, layerwise casting) run for both calls.

The prediction is read out from the row stream (what the stock forward returns). For soft sync,
``soft_readout="mean"`` returns ``(x_v + x_t) / 2`` after the last block instead.

Everything is removed again (hooks, state) when :meth:`TwoStreamEngine.installed` exits, also on
errors and cancellation. Caching hooks that skip blocks should be off for grid sampling.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.utils.checkpoint
from diffusers.hooks import HookRegistry, ModelHook

from ..errors import InputError
from ..kernels.streams import check_sync_for, columns_to_rows, grid_mode, mean_readout, rows_to_columns
from ..kernels.sync import GridSync, layer_runner, sigma_features

TEXT_TOKENS = 512  # diffusers' Wan attention processor: the last 512 context tokens are text
_FORWARD_HOOK = "fourd_grid_forward"
_BLOCK_HOOK = "fourd_grid_block"
_BLOCK_ARGS = ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb")


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


class TwoStreamEngine:
    """Row/column two-stream denoiser (see module docstring).

    Args:
        transformer: a diffusers ``WanTransformer3DModel`` (Wan2.1: per-sample timestep).
        mode: a two-stream or ``"rows"`` mode of :data:`fourd_core.kernels.streams.GRID_MODES`.
        sync: :class:`~fourd_core.kernels.sync.GridSync` for ``"hard"`` / ``"soft"``; None = the
            neutral initialisation (hard: averaging; soft: independent streams). The engine places it
            on the activations' device on first use (it owns this module).
        soft_readout: ``"row"`` (default) or ``"mean"`` for soft modes.
        num_train_timesteps: ``sigma = timestep / num_train_timesteps`` for the sync modulation.
        checkpoint: recompute each block's two streams in the backward pass (training; see :meth:`_block`).

    Attributes:
        column_clip: raw CLIP features for the column stream, ``[T, N_img, C_img]`` (one per latent
            time of the current window), or None to give every column the context of row 0.
    Raises:
        InputError: a fused or unknown mode, sync layers that do not fit the mode or the DiT, a bad readout.
    """

    def __init__(self, transformer, mode: str, sync: GridSync | None = None, soft_readout: str = "row",
                 num_train_timesteps: int = 1000, checkpoint: bool = False):
        spec = grid_mode(mode)
        if spec.kind == "fused":
            raise InputError(f"{mode!r} is not a two-stream mode; use FusedEngine (fourd_core.models.grid_fused).")
        check_sync_for(mode, sync, len(transformer.blocks))
        if soft_readout not in ("row", "mean"):
            raise InputError(f"soft_readout must be 'row' or 'mean', got {soft_readout!r}.")
        self.transformer, self.mode, self.spec, self.sync = transformer, mode, spec, sync
        self.soft_readout = soft_readout
        self.num_train_timesteps = num_train_timesteps
        self.checkpoint = checkpoint
        self.column_clip: torch.Tensor | None = None
        self._registered: list = []
        self._state: dict = {}

    # -- installation -------------------------------------------------------------------------
    @contextlib.contextmanager
    def installed(self) -> Iterator["TwoStreamEngine"]:
        """Register the hooks (none for ``"rows"``); always removed on exit."""
        if self._registered:
            raise RuntimeError("TwoStreamEngine is already installed.")
        tr = self.transformer
        try:
            if self.spec.kind == "two_stream":
                for module, hook, name in [(tr, _GridForwardHook(self), _FORWARD_HOOK),
                                           *((b, _GridBlockHook(self, i), _BLOCK_HOOK) for i, b in enumerate(tr.blocks))]:
                    registry = HookRegistry.check_if_exists_or_initialize(module)
                    registry.register_hook(hook, name)
                    self._registered.append((registry, name))
            yield self
        finally:
            for registry, name in reversed(self._registered):
                registry.remove_hook(name, recurse=False)
            self._registered.clear()
            self._state = {}

    def _start_call(self, hidden: torch.Tensor, timestep: torch.Tensor) -> None:
        _, _, frames, height, width = hidden.shape
        if timestep.ndim != 1:
            raise InputError("The grid sampler needs a Wan2.1-style model (one timestep per sample).")
        p_t = self.transformer.config.patch_size[0]
        sigma = float(timestep.flatten()[0]) / self.num_train_timesteps
        self._state = {"views": hidden.shape[0], "times": frames // p_t, "height": height, "width": width,
                       "sigma": sigma, "feats": None, "x_t": None, "col": None}

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

    def _layer(self, index: int, like: torch.Tensor):
        """(this block's sync layer as a callable on ``like``'s device, its sigma features), or (None, None)."""
        if self.sync is None:
            return None, None
        st = self._state
        if next(self.sync.parameters()).device != like.device:
            self.sync.to(like.device)
        if st["feats"] is None:
            st["feats"] = sigma_features(st["sigma"], self.sync.features).to(like.device)
        return layer_runner(self.sync.layers[index], like.device), st["feats"]

    def _block(self, index: int, forward, block, args, kwargs):
        """One block of both streams (see the module docstring): ``forward`` is the block's inner forward.
        With ``checkpoint`` (training) the block, both streams and the merge are recomputed in the backward
        pass, the column stream's tokens passed explicitly (diffusers' own block checkpointing would rerun the
        block with the state of the last block)."""
        vals = list(args) + [kwargs[n] for n in _BLOCK_ARGS[len(args):]]
        x_v, enc, temb, rotary = vals[0], vals[1], vals[2], vals[3]
        st = self._state
        ctx, temb_col, rope_col = self._column_inputs(enc, temb, block)

        def streams(x_v_, x_t_, enc_, temb_, ctx_, temb_col_):
            y_v = forward(x_v_, enc_, temb_, rotary)
            views, times = st["views"], st["times"]
            tokens = self.spec.column_input(x_v_, y_v, x_t_)
            y_t = columns_to_rows(forward(rows_to_columns(tokens, views, times), ctx_, temb_col_, rope_col), views, times)
            layer, feats = self._layer(index, y_v)
            return self.spec.merge(index, len(self.transformer.blocks), y_v, y_t, layer, feats)

        if self.checkpoint and torch.is_grad_enabled():
            x_v_next, x_t_next = torch.utils.checkpoint.checkpoint(streams, x_v, st["x_t"], enc, temb, ctx, temb_col,
                                                                   use_reentrant=False)
        else:
            x_v_next, x_t_next = streams(x_v, st["x_t"], enc, temb, ctx, temb_col)
        if not self.spec.stateful:
            return x_v_next
        st["x_t"] = x_t_next
        if index == len(self.transformer.blocks) - 1 and self.soft_readout == "mean":
            return mean_readout(x_v_next, x_t_next)
        return x_v_next

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


class _GridForwardHook(ModelHook):
    """On the transformer: records the grid state of the call (:meth:`TwoStreamEngine._start_call`)."""

    def __init__(self, engine: TwoStreamEngine):
        super().__init__()
        self.engine = engine

    def pre_forward(self, module, *args, **kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        self.engine._start_call(hidden, timestep)
        return args, kwargs


class _GridBlockHook(ModelHook):
    """On ``transformer.blocks[index]``: both streams of that block (:meth:`TwoStreamEngine._block`)."""

    def __init__(self, engine: TwoStreamEngine, index: int):
        super().__init__()
        self.engine, self.index = engine, index

    def new_forward(self, module, *args, **kwargs):
        return self.engine._block(self.index, self.fn_ref.original_forward, module, args, kwargs)
