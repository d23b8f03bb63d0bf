"""The 4D grid on a core ComfyUI Wan ``MODEL``: the callables that FourD Grid Model (native) installs
through ModelPatcher mechanisms (ComfyUI-free: they only follow ComfyUI's call protocols; the
node in ``nodes/native/grid.py`` installs them on a clone, so the loaded model is untouched).

* :class:`GridForwardWrapper` (a ``DIFFUSION_MODEL`` wrapper, ``WanModel.forward`` protocol
  ``executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kw)``): checks
  the batch (``k * V`` rows: ComfyUI batches cond and uncond), records the grid state for the call
  in ``transformer_options[GRID_STATE]`` and runs the rest of the chain.

  - two-stream modes: the column stream's RoPE table (``rope_encode`` over ``V`` "frames": the
    view index takes the place of time) and the noise level ``sigma`` for the sync layers;
  - ``"fused"``: every group of ``V`` rows becomes one video of ``V * T`` latent frames (frame
    ``f = v * T + tau``), with one timestep and text per group and the ``V`` rows' CLIP features
    concatenated; the fused RoPE table (time position ``tau + v``,
    :func:`~fourd_core.models.grid_fused.fused_time_positions`) and the fused-attention
    geometry are recorded; the output is split back into rows.

* :class:`GridBlockPatch` (a ``("dit", "double_block", i)`` replace, protocol
  ``patch(args, {"original_block": f}) -> {"img": ...}``):

  - two streams (4Real-Video Sec. 3.2): the row stream is the block's own call on the ``V`` rows;
    the column stream runs the *same block* on the column layout ``[T, V*S, D]`` with row 0's
    modulation and text, and per-column CLIP tokens when ``column_clip`` is given (else row 0's); merged as in
    :class:`~fourd_core.models.grid_streams.TwoStreamEngine`: ``hard`` (Eq. 8; averaging, or the
    trained :class:`~fourd_core.models.sync.GridSync` layer), ``soft`` (Eqs. 9-10 with trained
    layers; independent streams without), ``soft_avg`` (supp. Eq. 13), ``sequential`` (Eq. 5),
    ``rows`` (no coupling);
  - ``"fused"`` (4Real-Video-V2): the block runs once on the fused sequence with the fused RoPE
    table and a :class:`FusedBlockAttention` as ``optimized_attention_override`` in a per-call
    copy of ``transformer_options``.

* :class:`FusedBlockAttention` (ComfyUI's ``optimized_attention_override(func, q, k, v, heads=,
  ...)`` for one block call): a Wan block makes its attention calls in a fixed order (self
  attention; for I2V the CLIP image cross-attention, then the text cross-attention). Call 0 is
  replaced by the masked view-time attention
  (:func:`~fourd_core.models.grid_fused.fused_attention`: flex on CUDA, the exact gathered-keys
  path elsewhere, or the dense reference); call 1 of an I2V block runs ComfyUI's attention per
  view (queries of view ``v`` see only view ``v``'s CLIP tokens); the text call is unchanged.
  Shapes are checked at every call, so a changed call order is an error, never a silent mix-up.
"""

from __future__ import annotations

import torch
from einops import rearrange

from ..errors import InputError
from ..kernels.fused import FusedGeometry, fold_views, fused_attention, fused_backend_for, fused_time_positions, \
    select_rope_frames
from ..kernels.streams import check_sync_for, columns_to_rows, grid_mode, rows_to_columns
from ..kernels.sync import GridSync, layer_runner, sigma_features
from .caches import refuse_unusable_step_cache

GRID_STATE = "fourd_grid_state"
ATTN_OVERRIDE = "optimized_attention_override"


def call_sigma(transformer_options: dict, timestep: torch.Tensor | None) -> float | None:
    """The flow-matching noise level of this model call: ComfyUI's ``transformer_options["sigmas"]``
    (falls back to ``timestep / 1000``, Wan's ``ModelSamplingDiscreteFlow`` multiplier; None if
    neither is known)."""
    sig = transformer_options.get("sigmas")
    if isinstance(sig, torch.Tensor) and sig.numel():
        return float(sig.flatten()[0])
    return None if timestep is None else float(timestep.flatten()[0]) / 1000.0


class GridForwardWrapper:
    """DIFFUSION_MODEL wrapper: per-call grid state for the block patches (see module doc).

    Args:
        views: ``V``. mode: a name of :data:`~fourd_core.kernels.streams.GRID_MODES`. fused_backend: ``"auto"`` |
            ``"flex"`` | ``"dense"`` | ``"gather"`` (fused mode).
        column_clip: two-stream modes: raw CLIP features ``[T, N_img, C_img]`` of the columns (one per
            latent time; the diffusers engine's ``column_clip``), embedded by the model's ``img_emb``
            and put before row 0's text for the column stream; None = the columns use row 0's
            context (its CLIP included).
    """

    def __init__(self, views: int, mode: str = "soft_avg", fused_backend: str = "auto",
                 column_clip: torch.Tensor | None = None):
        self.kind = grid_mode(mode).kind                           # validates the name
        fused_backend_for(fused_backend, torch.device("cpu"))      # validates the name
        self.views, self.mode, self.fused_backend = int(views), mode, fused_backend
        self.column_clip = column_clip
        self._geometry: dict = {}

    def __call__(self, executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options=None,
                 **kwargs):
        wan = executor.class_obj
        refuse_unusable_step_cache(transformer_options)
        b, _, t, h, w = x.shape
        if b % self.views:
            raise InputError(f"The grid model expects batches of {self.views} rows (one per view), got a batch of {b}. "
                             "Use the LATENT of FourD Grid Conditioning (native) with the same number of views.")
        opts = dict(transformer_options or {})
        times = t // wan.patch_size[0]
        if self.kind == "fused":
            return self._fused(executor, wan, x, timestep, context, clip_fea, time_dim_concat, opts, **kwargs)
        opts[GRID_STATE] = {"mode": self.mode, "views": self.views, "times": times,
                            "sigma": call_sigma(opts, timestep), "feats": None,
                            "col_freqs": wan.rope_encode(self.views, h, w, device=x.device, dtype=x.dtype), "x_t": {},
                            "col_img": self._column_image_tokens(wan, clip_fea, times, x)}
        return executor(x, timestep, context, clip_fea, time_dim_concat, opts, **kwargs)

    def _column_image_tokens(self, wan, clip_fea, times: int, x: torch.Tensor):
        """``img_emb(column_clip)`` ``[T, N_img, D]`` for the column stream, or None."""
        if self.column_clip is None or self.kind != "two_stream":
            return None
        if clip_fea is None or getattr(wan, "img_emb", None) is None:
            raise InputError("column_clip needs an image-to-video model with CLIP conditioning (clip_vision_output on "
                             "the conditioning, from FourD Grid Conditioning (native)).")
        col = self.column_clip
        if col.shape[0] != times or tuple(col.shape[1:]) != tuple(clip_fea.shape[1:]):
            raise InputError(f"column_clip has {col.shape[0]} entries of {list(col.shape[1:])} for {times} latent times "
                             f"of {list(clip_fea.shape[1:])}: connect the column_clip of the same FourD Grid "
                             "Conditioning / Window (native) as the conditioning.")
        return wan.img_emb(col.to(device=x.device, dtype=x.dtype))

    def geometry(self, times: int, tokens_per_frame: int, device) -> FusedGeometry:
        """The fused-attention geometry (mask / flex BlockMask), built once per size and device."""
        key = (times, tokens_per_frame, torch.device(device))
        if key not in self._geometry:
            backend = fused_backend_for(self.fused_backend, torch.device(device))
            self._geometry[key] = FusedGeometry(self.views, times, tokens_per_frame, backend, device)
        return self._geometry[key]

    def _fused(self, executor, wan, x, timestep, context, clip_fea, time_dim_concat, opts, **kwargs):
        views = self.views
        b, _, t, h, w = x.shape
        p_t, p_h, p_w = wan.patch_size
        if time_dim_concat is not None:
            raise InputError("Fused grid mode does not support time_dim_concat conditioning; use a two-stream mode.")
        if timestep.ndim != 1:
            raise InputError("Fused grid mode needs a Wan2.1-style model (one timestep per sample).")
        k, times = b // views, t // p_t
        xf = rearrange(x, "(k v) c t h w -> k c (v t) h w", v=views)
        tf = timestep.reshape(k, views)[:, 0]
        ctx = context.reshape(k, views, *context.shape[1:])[:, 0]
        clip = None if clip_fea is None else clip_fea.reshape(k, views * clip_fea.shape[1], *clip_fea.shape[2:])
        frames = views + times - 1
        table = wan.rope_encode(frames * p_t, h, w, device=x.device, dtype=x.dtype)
        tokens = ((h + p_h // 2) // p_h) * ((w + p_w // 2) // p_w)
        opts[GRID_STATE] = {"mode": "fused", "views": views, "times": times,
                            "fused_freqs": select_rope_frames(table, frames, fused_time_positions(views, times)),
                            "geometry": self.geometry(times, tokens, x.device),
                            "img_tokens": 0 if clip is None else clip.shape[1]}
        out = executor(xf, tf, ctx, clip, None, opts, **kwargs)
        return rearrange(out, "k c (v t) h w -> (k v) c t h w", v=views)


class FusedBlockAttention:
    """``optimized_attention_override`` for one fused block call (see module doc).

    Args:
        state: the call's grid state (``geometry``, ``img_tokens``).
        previous: an override that was already in ``transformer_options`` (used for the
            cross-attentions), or None.
    """

    def __init__(self, state: dict, previous=None):
        self.state, self.previous, self.calls = state, previous, 0

    def _run(self, func, args, kwargs):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        call, self.calls = self.calls, self.calls + 1
        q, k, v = args[:3]
        heads = kwargs["heads"] if "heads" in kwargs else args[3]
        g = self.state["geometry"]
        n = g.views * g.times * g.tokens_per_frame
        if kwargs.get("skip_reshape") or kwargs.get("mask") is not None or q.ndim != 3:
            raise InputError("Fused grid attention got an unexpected attention call (masked or pre-shaped); this "
                             "ComfyUI's Wan blocks are not supported by fused mode, use a two-stream mode.")
        b = q.shape[0]
        if call == 0:                                           # self-attention over all grid tokens
            if q.shape[1] != n or k.shape[1] != n:
                raise InputError(f"Fused grid attention expected the self-attention over {n} tokens first, got "
                                 f"{q.shape[1]} queries and {k.shape[1]} keys.")
            dh = q.shape[-1] // heads
            out = fused_attention(*(t.reshape(b, n, heads, dh) for t in (q, k, v)), g)
            return out.reshape(b, n, heads * dh)
        n_img = self.state["img_tokens"]
        if call == 1 and n_img:                                 # CLIP image cross-attention, per view
            if k.shape[1] != n_img or q.shape[1] != n:
                raise InputError(f"Fused grid attention expected the image cross-attention over {n_img} CLIP tokens, "
                                 f"got {k.shape[1]} keys.")
            qv, kv, vv = (fold_views(t, g.views) for t in (q, k, v))
            out = self._run(func, (qv, kv, vv) + tuple(args[3:]), kwargs)
            return out.reshape(b, n, out.shape[-1])
        return self._run(func, args, kwargs)                    # text cross-attention: unchanged


class GridBlockPatch:
    """Grid replace for block ``index`` of ``num_blocks`` (see module doc): calls the shared kernel
    (:mod:`fourd_core.kernels.streams`) for the mode's rule.

    Args:
        mode: a name of :data:`~fourd_core.kernels.streams.GRID_MODES`. previous: a replace already
            installed on this block (run for the row stream instead of the plain block). sync: trained
            :class:`~fourd_core.kernels.sync.GridSync` for ``hard`` / ``soft`` (shared by all blocks), None =
            the neutral initialisation.
    Raises:
        InputError: an unknown mode, or sync layers that do not fit the mode or the block count.
    """

    def __init__(self, index: int, num_blocks: int, mode: str, previous=None, sync: GridSync | None = None):
        self.spec = grid_mode(mode)
        check_sync_for(mode, sync, num_blocks)
        self.index, self.num_blocks, self.mode, self.previous, self.sync = index, num_blocks, mode, previous, sync

    def _row(self, args, extra):
        return (self.previous(args, extra) if self.previous is not None else extra["original_block"](args))["img"]

    def _sync_layer(self, st: dict, like: torch.Tensor):
        """(this block's sync layer as a callable on ``like``'s device, the sigma features), or (None, None).

        ComfyUI's memory manager loads the sync layers (the node registers them as an additional
        model of the MODEL, :func:`nodes.native.grid.register_sync_model`), so their weights are
        normally on ``like.device`` already; a partial (low-VRAM) load can leave some of them on the
        offload device, and :func:`~fourd_core.kernels.sync.layer_runner` then runs on copies without
        moving the module behind the memory manager's back."""
        if self.sync is None:
            return None, None
        if st.get("feats") is None:
            if st.get("sigma") is None:
                raise InputError("Trained sync layers need the noise level of the call (transformer_options['sigmas']).")
            st["feats"] = sigma_features(st["sigma"], self.sync.features).to(like.device)
        return layer_runner(self.sync.layers[self.index], like.device), st["feats"]

    def __call__(self, args: dict, extra: dict) -> dict:
        st = args["transformer_options"].get(GRID_STATE)
        if st is None:
            raise InputError("Grid block patch without its forward wrapper: apply FourD Grid Model (native) again.")
        if self.spec.kind == "fused":
            opts = dict(args["transformer_options"])
            opts[ATTN_OVERRIDE] = FusedBlockAttention(st, opts.get(ATTN_OVERRIDE))
            return {"img": self._row(dict(args, pe=st["fused_freqs"], transformer_options=opts), extra)}
        y_v = self._row(args, extra)
        if self.spec.kind == "rows":
            return {"img": y_v}
        views, times = st["views"], st["times"]
        x, txt, vec = args["img"], args["txt"], args["vec"]
        block = extra["original_block"]
        col_img = st.get("col_img")

        def column_run(tokens, group):
            r = slice(group * views, group * views + 1)
            ctx = txt[r].expand(times, *txt.shape[1:])
            if col_img is not None:                            # per-column CLIP tokens, then row 0's text
                ctx = torch.cat([col_img.to(txt.dtype), ctx[:, col_img.shape[1]:]], dim=1)
            out = block({"img": rows_to_columns(tokens, views, times), "txt": ctx,
                         "vec": vec[r].expand(times, *vec.shape[1:]), "pe": st["col_freqs"],
                         "transformer_options": args["transformer_options"]})["img"]
            return columns_to_rows(out, views, times)

        outs = []
        for g in range(x.shape[0] // views):                  # ComfyUI batches cond and uncond: k groups of V rows
            rows = slice(g * views, (g + 1) * views)
            yv = y_v[rows]
            yt = column_run(self.spec.column_input(x[rows], yv, st["x_t"].get(g)), g)
            layer, feats = self._sync_layer(st, yv)
            xv_next, xt_next = self.spec.merge(self.index, self.num_blocks, yv, yt, layer, feats)
            if self.spec.stateful:
                st["x_t"][g] = xt_next
            outs.append(xv_next)
        return {"img": torch.cat(outs, dim=0)}
