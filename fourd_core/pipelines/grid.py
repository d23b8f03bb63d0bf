"""4D grid sampling (4Real-Video two-stream sync, 4Real-Video-V2 fused attention) on Wan2.1-I2V.

From a fixed-view video (row 0 of the grid, e.g. the 4DNeX RGB video) and a freeze-time video
(column 0, e.g. the first 4DNeX frame's point cloud rendered along an orbit), generate the whole
``V x T`` grid ``I[v, t]``: row ``v`` is a video seen from viewpoint ``v``, column ``t`` is instant
``t`` seen from every viewpoint.

Output order (everywhere in the pack): **row-major / view-major**. ``GridResult.frames`` is
``[V, T, H, W, 3]``; the flat IMAGE batch (:func:`~fourd_core.pipelines.grid_canvas.grid_to_batch`) has frame ``I[v, t]`` at index
``v * T + t``, so ``batch[v*T : (v+1)*T]`` is the video of view ``v`` and ``batch[0:T]`` is the
fixed-view input row.

Token grid on a latent model (the papers used a pixel-space base model)
----------------------------------------------------------------------
Wan's causal VAE compresses time 4x. A window of ``V_w`` views x ``T_w = 4k+1`` frames is kept as
one latent tensor ``[V_w, 16, T_lat, h, w]`` with ``T_lat = (T_w - 1) / 4 + 1``: row ``v`` is the
window's video of view ``v`` encoded on its own, so latent frame 0 of row ``v`` is exactly the
encoding of the image ``I[v, t0]`` (the freeze-time input in the first time window) and latent
row 0 is the encoded fixed-view video. The row stream runs the pretrained blocks on ``V_w``
sequences over latent time; the column stream on ``T_lat`` sequences over views (see
:mod:`fourd_core.models.grid_streams`).

Known frames enter through Wan's I2V condition: per row, a condition video with the known pixels
and mid-gray elsewhere is VAE-encoded (posterior mode), and the 4 mask channels (one per pixel
frame of each latent frame; frame 0 repeated 4x, as in Wan I2V) are 1 where pixels are known. The
mask is per latent pixel: a latent pixel is known when its whole 8x8 patch is; so **holes of a
rendered freeze-time frame are unknown** (gray + mask 0) while its covered parts are known. Known
frames here are row 0 (all frames), column 0 (minus holes), and in later windows every frame that
an earlier window already generated. Latent frames whose pixel frames (and all earlier ones of the
row: the VAE is causal) are fully known are also *replaced* after every step by their clean
latents noised to the current sigma (``replace_known``), and pasted exactly before decoding: known
rows and columns come back as their VAE round trip.

CLIP features: row ``v`` gets the CLIP of its first window frame ``I[v, t0]``; column ``tau`` gets
the CLIP of the window's first row at pixel frame ``t0 + 4 tau`` (the fixed-view frame at that
time). The same prompt for all; guidance is text CFG (the unconditional pass keeps CLIP and the
condition), as in the 4DNeX pipeline.

Windows (4Real-Video Sec. 3.3, "extending to a wider view and longer time")
-------------------------------------------------------------------------
Larger grids are generated window by window, view windows outer, time windows inner; windows
overlap by ``overlap_views`` rows and ``overlap_frames`` frames, and every frame already generated
is a known frame of later windows (its first row and first column are always known). A grid no
larger than one window is one window. Each window has its own seed (``seed + window index``).
``overlap_frames = 4k+1`` makes the overlap exactly ``k+1`` clean latent frames.

Model sharing with 4DNeX: the grid runs the *base* Wan DiT. The 4DNeX patches are switched off
and an unfused 4DNeX LoRA adapter is disabled during sampling (:func:`base_model_mode`); a LoRA
that was fused into the weights cannot be removed, which is an error. Everything is restored
afterwards, also on errors and cancellation.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch

from ..errors import InputError
from ..kernels.fused import fused_backend_names
from ..kernels.streams import GRID_MODES, grid_mode
from ..kernels.sync import GridSync
from ..models.grid_fused import FusedEngine
from ..models.grid_streams import TwoStreamEngine
from ..models.patches import is_fourdnex_patched, set_fourdnex_enabled
from ..settings import setting, validate
from .fourdnex import GUIDANCE, NEGATIVE, SCHEDULER, SEED, SHIFT, STEPS, make_scheduler, to_pil, vae_latent_stats
from .grid_canvas import GridCanvas, GridResult, fully_known_latents, latent_mask, plan_windows

#: ``callback(step, total, latents)``; may raise (e.g. CancelledError) to stop sampling.
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclasses.dataclass
class GridConfig:
    """Grid sampling parameters.

    Attributes:
        mode: a name of :data:`~fourd_core.kernels.streams.GRID_MODES` (``"soft_avg"``, the
            training-free soft sync of supp. Eq. 13, by default).
        window_views: views per window (the paper: 8). window_frames: pixel frames per window,
            ``4k + 1`` (49 = a whole 4DNeX video).
        overlap_views, overlap_frames: rows / frames shared by consecutive windows (>= 1).
        steps, guidance_scale, shift, scheduler, seed, negative_prompt: as in the 4DNeX sampler
            (text CFG, flow shift, ``"unipc"`` or ``"euler"``, CPU generator seed).
        replace_known: replace fully known latent frames by their noised clean latents every step.
        soft_readout: soft modes: predict from the row stream (``"row"``) or the mean of both.
        fused_backend: ``"auto"`` | ``"flex"`` | ``"dense"`` | ``"gather"`` (fused mode, see
            :class:`~fourd_core.models.grid_fused.FusedEngine`).
    """

    mode: str = setting("soft_avg", help="grid mode", choices=GRID_MODES.names)
    window_views: int = setting(8, help="views per window (the paper: 8)", low=2, high=256, integer=True, node_high=64)
    window_frames: int = setting(49, help="pixel frames per window, 4k+1 (49 = a whole 4DNeX video)", low=5, high=1001,
                                 multiple_of=4, offset=1, node_high=81, hint="e.g. 9, 25, 49")
    overlap_views: int = setting(2, help="views shared by consecutive view windows", low=1, integer=True, node_high=63)
    overlap_frames: int = setting(5, help="frames shared by consecutive time windows (4k+1 = k+1 clean latent frames)",
                                  low=1, integer=True, node_high=80)
    steps: int = setting(30, **STEPS)
    guidance_scale: float = setting(5.0, **GUIDANCE)
    shift: float = setting(3.0, **SHIFT)
    scheduler: str = setting("unipc", **SCHEDULER)
    seed: int = setting(42, **SEED)
    negative_prompt: str = setting("", **NEGATIVE)
    replace_known: bool = setting(True, help="replace fully known latent frames by their noised clean latents every step")
    soft_readout: str = setting("row", help="soft modes: predict from the row stream or the mean of both streams",
                                choices=("row", "mean"))
    fused_backend: str = setting("auto", help="fused mode's attention backend", choices=fused_backend_names)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the fix for any invalid field."""
        validate(self)
        if not self.overlap_views < self.window_views:
            raise InputError(f"overlap_views must be in [1, window_views - 1], got {self.overlap_views}.")
        if not self.overlap_frames < self.window_frames:
            raise InputError(f"overlap_frames must be in [1, window_frames - 1], got {self.overlap_frames}.")


# ----------------------------------------------------------------------------------------------
# Engines
def make_engine(transformer, mode: str, *, sync: GridSync | None = None, soft_readout: str = "row",
                fused_backend: str = "auto", num_train_timesteps: int = 1000, fused_lora: dict | None = None,
                fused_lora_strength: float = 1.0):
    """The engine for a grid mode (:data:`~fourd_core.kernels.streams.GRID_MODES`; 4Real-Video Sec. 3.2 / -V2).

    Returns:
        a :class:`~fourd_core.models.grid_fused.FusedEngine` for ``"fused"``, else a
        :class:`~fourd_core.models.grid_streams.TwoStreamEngine` (``sync`` only for hard / soft).
    Raises:
        InputError: sync weights with ``"fused"``, an unknown mode or backend, sync weights that
            do not fit the transformer (raised by the engines), or a step cache enabled on the model.
    """
    from ..models.step_cache import refuse_for_grid

    refuse_for_grid(transformer)
    if grid_mode(mode).kind == "fused":
        if sync is not None:
            raise InputError("Fused view-time attention has no sync layers; sync weights apply to 'hard'/'soft'.")
        return FusedEngine(transformer, fused_backend, lora=fused_lora, lora_strength=fused_lora_strength)
    if fused_lora is not None:
        raise InputError(f"A fused-attention LoRA applies to grid mode 'fused' only; mode is {mode!r}.")
    return TwoStreamEngine(transformer, mode, sync, soft_readout, num_train_timesteps)


# ----------------------------------------------------------------------------------------------
# Model state
@contextlib.contextmanager
def base_model_mode(pipe):
    """Run the stock Wan DiT inside: 4DNeX patches off, LoRA adapters disabled; all restored after.

    Raises:
        InputError: the 4DNeX LoRA was fused into the weights (it cannot be taken out); load it
            unfused (``fuse_lora=False`` / the node's ``fuse`` off) to share the model.
    """
    tr = pipe.transformer
    if getattr(tr, "_fourdnex_lora_fused", False):
        raise InputError("The 4DNeX LoRA is fused into this model's weights, so the grid sampler cannot run the base "
                         "Wan model. Load the 4DNeX LoRA unfused (FourD Load 4DNeX LoRA: fuse = off; "
                         "ModelSpec(fuse_lora=False)) or use a model without 4DNeX.")
    from peft.tuners.tuners_utils import BaseTunerLayer

    patched = is_fourdnex_patched(tr)
    was_enabled = bool(getattr(tr, "_fourdnex_enabled", False))
    layers = [m for m in tr.modules() if isinstance(m, BaseTunerLayer)]
    states = [bool(m.disable_adapters) for m in layers]
    grads = {p: p.requires_grad for m in layers for p in m.parameters()}
    try:
        if patched:
            set_fourdnex_enabled(tr, False)
        for m in layers:
            m.enable_adapters(False)
        yield pipe
    finally:
        for m, disabled in zip(layers, states):
            m.enable_adapters(not disabled)
        for p, g in grads.items():
            p.requires_grad_(g)
        if patched:
            set_fourdnex_enabled(tr, was_enabled)


# ----------------------------------------------------------------------------------------------
# Conditions
@torch.no_grad()
def encode_rows(pipe, video: torch.Tensor) -> torch.Tensor:
    """VAE-encode every row on its own (posterior mode), normalised as the DiT sees latents.

    Args:
        video: ``[V, 3, F, H, W]`` in [-1, 1].
    Returns:
        ``[V, 16, T_lat, H/8, W/8]`` float32 on the pipeline's execution device.
    """
    from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    dev = get_module_execution_device(vae)
    out = []
    for row in video:
        z = retrieve_latents(vae.encode(row[None].to(device=dev, dtype=vae.dtype)), sample_mode="argmax")
        out.append(z.float())
    z = torch.cat(out).to(pipe._execution_device)
    mean, inv_std = vae_latent_stats(vae, z)
    return (z - mean) * inv_std


@torch.no_grad()
def decode_rows(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Decode normalised row latents ``[V, 16, T_lat, h, w]`` -> ``[V, F, H, W, 3]`` in [0, 1] (CPU)."""
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    dev = get_module_execution_device(vae)
    mean, inv_std = vae_latent_stats(vae, latents.float())
    out = []
    for z in latents.float():
        zz = (z[None] / inv_std + mean).to(device=dev, dtype=vae.dtype)
        x = vae.decode(zz, return_dict=False)[0].float().clamp(-1, 1)
        out.append((x[0].permute(1, 2, 3, 0) / 2 + 0.5).cpu())
    return torch.stack(out)


def _clip(pipe, images: torch.Tensor, device) -> torch.Tensor:
    """CLIP penultimate features of ``[N, H, W, 3]`` images -> ``[N, N_img, C]``."""
    if pipe.image_encoder is None or pipe.transformer.config.image_dim is None:
        return None
    return pipe.encode_image([to_pil(im) for im in images], device)


def _check_inputs(fixed_view, freeze_time, holes, pipe):
    for name, t in (("fixed_view", fixed_view), ("freeze_time", freeze_time)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[-1] != 3:
            raise InputError(f"{name} must be an IMAGE batch [N, H, W, 3], got "
                             f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}.")
        if not torch.isfinite(t).all():
            raise InputError(f"{name} contains NaN or inf.")
    if fixed_view.shape[1:] != freeze_time.shape[1:]:
        raise InputError(f"fixed_view frames are {fixed_view.shape[2]}x{fixed_view.shape[1]} but freeze_time frames "
                         f"{freeze_time.shape[2]}x{freeze_time.shape[1]}; render the freeze-time video at the video's size.")
    h, w = fixed_view.shape[1:3]
    mult = pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1]
    if h % mult or w % mult or h < 2 * mult or w < 2 * mult:
        raise InputError(f"Frame size {w}x{h}: width and height must be multiples of {mult} and >= {2 * mult}.")
    if holes is not None:
        if holes.ndim == 4 and holes.shape[-1] == 1:
            holes = holes[..., 0]
        if tuple(holes.shape) != tuple(freeze_time.shape[:3]):
            raise InputError(f"holes must be a MASK [{freeze_time.shape[0]}, {h}, {w}] matching freeze_time, got "
                             f"{list(holes.shape)}.")
        holes = holes.float()
    return holes


# ----------------------------------------------------------------------------------------------
# Sampling
@torch.no_grad()
def sample_window(pipe, engine, pixels: torch.Tensor, known: torch.Tensor, text: dict, config: GridConfig,
                  generator: torch.Generator, callback: StepCallback | None = None, step_offset: int = 0,
                  total_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise one window.

    Args:
        pipe: the Wan I2V pipeline (base model mode, see :func:`base_model_mode`).
        engine: an installed engine from :func:`make_engine`.
        pixels: ``[V, F, H, W, 3]`` in [0, 1]; only pixels with ``known == 1`` are used.
        known: ``[V, F, H, W]`` in {0, 1}; row 0 must be fully known (the column stream's first
            "frame"), as must every first frame up to holes.
        text: ``{"prompt_embeds", "negative_prompt_embeds"}`` ``[1, 512, D_text]`` (negative None
            without CFG).
    Returns:
        ``(latents [V, 16, T_lat, h, w] float32 with fully known latent frames pasted exactly,
        full [V, T_lat] bool: the pasted frames)``.
    """
    tr = pipe.transformer
    device, dtype = pipe._execution_device, tr.dtype
    v, f = known.shape[:2]
    video = ((pixels.float() * 2 - 1) * known[..., None].float()).permute(0, 4, 1, 2, 3)
    cond = encode_rows(pipe, video)
    mask = latent_mask(known).to(cond)
    full = fully_known_latents(known).to(device)
    t_lat = cond.shape[2]
    row_clip = _clip(pipe, pixels[:, 0], device)
    engine.column_clip = None
    if row_clip is not None:
        row_clip = row_clip.to(dtype)
    if row_clip is not None and engine.mode != "fused":   # the fused engine has no column stream
        cols = [min(4 * tau, f - 1) for tau in range(t_lat)]
        engine.column_clip = _clip(pipe, pixels[0, cols], device).to(dtype)

    from diffusers.utils.torch_utils import randn_tensor

    scheduler = make_scheduler(pipe, config.scheduler, config.shift)
    scheduler.set_timesteps(config.steps, device=device)
    noise = randn_tensor(tuple(cond.shape), generator=generator, device=device, dtype=torch.float32)
    prompt, negative = text["prompt_embeds"].to(device, dtype), text.get("negative_prompt_embeds")
    if negative is not None:
        negative = negative.to(device, dtype)
    latents = denoise_window(engine, scheduler, noise, cond, mask, full, prompt, negative, row_clip,
                             config.guidance_scale, config.replace_known, dtype, callback, step_offset,
                             total_steps or config.steps)
    return latents, full


def known_latents_at(sigma, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Clean latents ``cond`` noised to flow-matching level ``sigma`` with the window's own noise:
    ``(1 - sigma) cond + sigma noise`` (what replaces known latent frames at every step; rectified
    flow, Wan's scheduler). ``sigma``: float or 0-d tensor in [0, 1]; ``cond``, ``noise``:
    ``[V, 16, T_lat, h, w]``, same dtype; returns that shape and dtype."""
    return (1 - sigma) * cond + sigma * noise


@torch.no_grad()
def denoise_window(engine, scheduler, noise: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor,
                   full: torch.Tensor, prompt: torch.Tensor, negative: torch.Tensor | None,
                   row_clip: torch.Tensor | None, guidance_scale: float, replace_known: bool, dtype,
                   callback: StepCallback | None = None, step_offset: int = 0, total_steps: int | None = None
                   ) -> torch.Tensor:
    """The denoising loop of one window (after :func:`sample_window` encoded its conditions).

    Known-latent replacement (``replace_known``): the latent frames in ``full`` start as
    :func:`known_latents_at` ``sigma_0`` and are replaced after every step by the clean latents
    noised to the next sigma with the *same* ``noise``; after the loop they are pasted exactly.
    (ComfyUI's KSampler does the same with a LATENT ``noise_mask``: before every model call it sets
    the masked latents to ``(1 - sigma) latent + sigma noise`` and pastes the clean latents into the
    denoised output, see ``nodes/native/grid.py``.)

    Args:
        engine: an installed grid engine. scheduler: a flow-matching scheduler with
            ``set_timesteps`` already called (``timesteps``, ``sigmas``, ``step``).
        noise, cond: ``[V, 16, T_lat, h, w]`` float32 (initial noise, normalised clean condition
            latents). mask: ``[V, 4, T_lat, h, w]`` Wan I2V mask channels (1 = known).
        full: ``[V, T_lat]`` bool, the fully known latent frames.
        prompt, negative: ``[1, 512, D_text]`` text embeddings (negative None: no CFG).
        row_clip: ``[V, N_img, C_img]`` or None.
    Returns:
        the latents ``[V, 16, T_lat, h, w]`` float32, fully known frames pasted exactly.
    """
    sigmas = scheduler.sigmas.float()
    keep = full[:, None, :, None, None]
    latents = noise
    if replace_known:
        latents = torch.where(keep, known_latents_at(sigmas[0], cond, noise), latents)
    cfg = guidance_scale > 1.0 and negative is not None
    total = total_steps or len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        inp = torch.cat([latents, mask, cond], dim=1).to(dtype)
        pred = engine.predict(inp, t, prompt, row_clip, "cond")
        if cfg:
            uncond = engine.predict(inp, t, negative, row_clip, "uncond")
            pred = uncond + guidance_scale * (pred - uncond)
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        if replace_known and i + 1 < len(sigmas):
            latents = torch.where(keep, known_latents_at(sigmas[i + 1], cond, noise), latents)
        if callback is not None:
            callback(step_offset + i + 1, total, latents)
    return torch.where(keep, cond, latents.float())


@torch.no_grad()
def generate_grid(pipe, fixed_view: torch.Tensor, freeze_time: torch.Tensor, prompt: str,
                  config: GridConfig | None = None, *, holes: torch.Tensor | None = None,
                  sync: GridSync | None = None, callback: StepCallback | None = None,
                  text: dict | None = None, fused_lora: dict | None = None,
                  fused_lora_strength: float = 1.0) -> GridResult:
    """Generate the ``V x T`` grid from its first row and first column.

    Args:
        pipe: a diffusers Wan2.1 I2V pipeline (e.g. the cached 4DNeX pipeline with the LoRA
            *unfused*; the grid always runs the base model, see :func:`base_model_mode`).
        fixed_view: ``[T, H, W, 3]`` float in [0, 1]: row 0, the video from viewpoint 0.
        freeze_time: ``[V, H, W, 3]`` float in [0, 1]: column 0, instant 0 from every viewpoint.
            ``freeze_time[0]`` is ignored: frame ``I[0, 0]`` is ``fixed_view[0]``.
        prompt: text prompt (no suffix is added: this is the base model).
        config: :class:`GridConfig`.
        holes: optional ``[V, H, W]`` (or ``[V, H, W, 1]``) MASK, > 0.5 = hole in the freeze-time
            frame (unknown pixel, filled by the model).
        sync: trained sync layers for ``"hard"`` / ``"soft"`` (see
            :func:`~fourd_core.models.sync.load_sync_weights`); None = neutral initialisation.
        callback: ``callback(step, total, latents)`` after every step of every window (``total`` =
            windows x steps); raise to cancel.
        text: optional precomputed ``{"prompt_embeds", "negative_prompt_embeds"}``.
        fused_lora, fused_lora_strength: a trained fused-attention LoRA for mode ``"fused"``
            (:func:`fourd_core.models.fused_lora.read_fused_lora`) and its scale.
    Returns:
        :class:`GridResult` (``frames [V, T, H, W, 3]``; row-major batch via ``.batch()``).
    Raises:
        InputError: bad shapes/sizes/config, a fused LoRA with another mode. CancelledError (or whatever the callback
        raises) when cancelled; the model is restored in every case.
    """
    config = config or GridConfig()
    config.validate()
    holes = _check_inputs(fixed_view, freeze_time, holes, pipe)
    num_t, num_v = fixed_view.shape[0], freeze_time.shape[0]
    h, w = fixed_view.shape[1:3]
    windows = plan_windows(num_v, num_t, config)

    canvas = GridCanvas.start(fixed_view, freeze_time, holes)

    device = pipe._execution_device
    with contextlib.ExitStack() as stack:
        stack.callback(pipe.maybe_free_model_hooks)
        stack.enter_context(base_model_mode(pipe))
        if text is None:
            pe, ne = pipe.encode_prompt(prompt=prompt, negative_prompt=config.negative_prompt,
                                        do_classifier_free_guidance=config.guidance_scale > 1.0,
                                        max_sequence_length=512, device=device)
            text = {"prompt_embeds": pe, "negative_prompt_embeds": ne}
        engine = make_engine(pipe.transformer, config.mode, sync=sync, soft_readout=config.soft_readout,
                             fused_backend=config.fused_backend,
                             num_train_timesteps=int(pipe.scheduler.config.get("num_train_timesteps", 1000)),
                             fused_lora=fused_lora, fused_lora_strength=fused_lora_strength)
        total = len(windows) * config.steps
        with engine.installed():
            for k, (v0, v1, t0, t1) in enumerate(windows):
                generator = torch.Generator("cpu").manual_seed(int(config.seed) + k)
                pixels, known = canvas.window((v0, v1, t0, t1))
                latents, _ = sample_window(pipe, engine, pixels, known, text, config, generator, callback,
                                           step_offset=k * config.steps, total_steps=total)
                canvas.write((v0, v1, t0, t1), decode_rows(pipe, latents))
    return GridResult(frames=canvas.out, windows=windows, mode=config.mode)


def grid_latent_preview(latents: torch.Tensor, view: int = -1, frame: int | None = None) -> torch.Tensor:
    """A cheap false-colour preview of one latent frame (no VAE): channels 0-2 of
    ``latents[view, :, frame]`` min-max normalised, ``[h, w, 3]`` in [0, 1]."""
    t = latents.shape[2]
    z = latents[view, :3, t // 2 if frame is None else frame].float()
    lo, hi = z.amin(), z.amax()
    return ((z - lo) / (hi - lo).clamp_min(1e-6)).permute(1, 2, 0).cpu()
