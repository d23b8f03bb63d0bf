"""4DNeX on ComfyUI's ``WanModel`` through ModelPatcher mechanisms (no weight surgery, no global
monkey-patch).

* :func:`fourdnex_forward_wrapper`, registered with ``add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL,
  ...)``: the model's ``_forward`` (``comfy/ldm/wan/model.py``, Comfy-Org/ComfyUI a125cd8) rebuilt
  with the 4DNeX shared RoPE (positions of the half width, tiled over both halves), then
  ``forward_orig``. Wrappers registered after this one still run around it (the remaining chain
  gets this function as its ``original``).
* :class:`DomainEmbeddingPatch`, a ``("dit", "double_block", 0)`` block replace: adds domain
  embedding row 0 to the RGB-half tokens and row 1 to the XYZ-half tokens right after the patch
  embedding, then runs block 0 (or a replace another pack installed there before).

Both live on the patched clone only (ModelPatcher wrappers and ``model_options``), so the input
model and every other clone stay stock; both are stateless and move their tensors to the input's
device per call (offloading, multi-GPU clones).
"""

from __future__ import annotations

import torch

from ...fourd_core.errors import InputError
from ...fourd_core.kernels.fourdnex import add_domain_embeddings, shared_rope
from ...fourd_core.native.caches import refuse_unusable_step_cache

WRAPPER_KEY = "fourd_4dnex_native"
GRID_KEY = "fourd_4dnex_grid"     # transformer_options entry: (t, h, w) token grid of the fused latent


def _rebuilt_forward(wan, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options=None, **kwargs):
    """``WanModel._forward`` with 4DNeX shared RoPE. ``x`` is ``[B, C, T, h, 2w]``."""
    if time_dim_concat is not None:
        raise InputError("4DNeX (native) does not support time_dim_concat conditioning; remove that node.")
    transformer_options = dict(transformer_options or {})
    _, _, t, h, w = x.shape
    p_t, p_h, p_w = wan.patch_size
    if t % p_t or h % p_h or w % (2 * p_w):
        raise InputError(f"The 4DNeX latent {tuple(x.shape)} needs a height divisible by {p_h} and a width divisible "
                         f"by {2 * p_w} (two halves of whole patches). Use FourD 4DNeX Conditioning (native).")
    grid = (t // p_t, h // p_h, w // p_w)
    freqs = shared_rope(wan.rope_encode(t, h, w // 2, device=x.device, dtype=x.dtype), grid)
    transformer_options[GRID_KEY] = grid
    return wan.forward_orig(x, timestep, context, clip_fea=clip_fea, freqs=freqs,
                            transformer_options=transformer_options, **kwargs)


def fourdnex_forward_wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None,
                             transformer_options=None, **kwargs):
    """DIFFUSION_MODEL wrapper: replaces the innermost ``_forward`` with the shared-RoPE version (and
    refuses a core step cache that cannot work with I2V models, ``fourd_core.native.caches``)."""
    refuse_unusable_step_cache(transformer_options)
    wan = executor.class_obj

    def original(*args, **kw):
        return _rebuilt_forward(wan, *args, **kw)

    rest = type(executor).new_class_executor(original, wan, executor.wrappers, executor.idx + 1)
    return rest.execute(x, timestep, context, clip_fea, time_dim_concat, transformer_options or {}, **kwargs)


class DomainEmbeddingPatch:
    """Block-0 replace adding the ``[2, dim]`` domain embeddings by token column (see module doc).

    Args:
        embeddings: ``[2, dim]`` float tensor (kept on the CPU; moved per call).
        previous: a block-0 replace that was already on the model, called instead of the original
            block so both packs' patches apply.
    """

    def __init__(self, embeddings: torch.Tensor, previous=None):
        self.embeddings = embeddings.detach().float().cpu()
        self.previous = previous

    def __call__(self, args: dict, extra: dict) -> dict:
        grid = args["transformer_options"].get(GRID_KEY)
        if grid is None:
            raise InputError("4DNeX domain embeddings without the 4DNeX forward wrapper: re-apply FourD Apply 4DNeX "
                             "(native) to an unpatched model.")
        args = dict(args)
        tokens = args["img"]                                   # [B, t*h*w, D], w fastest
        b, n, d = tokens.shape
        t, h, w = grid
        if n != t * h * w:
            raise InputError(f"{n} tokens do not form the 4DNeX token grid {grid}.")
        tokens = tokens.view(b, t * h, w, d)
        args["img"] = add_domain_embeddings(tokens, self.embeddings, width_dim=2, channel_dim=3).view(b, n, d)
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)


def is_fourdnex_patched(model) -> bool:
    """True if this ModelPatcher already carries the 4DNeX wrapper."""
    wrappers = getattr(model, "wrappers", {}) or {}
    return any(WRAPPER_KEY in d for d in wrappers.values())


def install(model, embeddings: torch.Tensor) -> None:
    """Install the wrapper and the block-0 patch on ``model`` (a ModelPatcher clone), in place."""
    from comfy.patcher_extension import WrappersMP

    model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, fourdnex_forward_wrapper)
    to = model.model_options.get("transformer_options", {})
    previous = to.get("patches_replace", {}).get("dit", {}).get(("double_block", 0))
    model.set_model_patch_replace(DomainEmbeddingPatch(embeddings, previous), "dit", "double_block", 0)
