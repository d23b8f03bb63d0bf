"""The 4DNeX additions to diffusers' ``WanTransformer3DModel``, as small patches (not a fork).

4DNeX (Sec. 4.2; official class ``WanTransformer3DModelDembSameRope``, 3DTopia/4DNeX @ 1101bc6: ``core/inference/wan.py``)
changes the stock Wan DiT in exactly two places for a width-fused ``[RGB | XYZ]`` latent:

1. **Learnable domain embeddings** ``[2, inner_dim]``: row 0 is added to every token of the left
   (RGB) half right after the patch embedding, row 1 to every token of the right (XYZ) half.
2. **Shared RoPE**: rotary positions are computed for *half* the token width and duplicated across
   both halves, so the RGB token at ``(t, h, j)`` and the XYZ token at ``(t, h, j)`` get identical
   rotations.

Both are installed here as diffusers model hooks (``ModelHook`` / ``HookRegistry``): a post-forward
hook on ``patch_embedding`` and a forward hook on the stock ``rope`` module; the tensor math is the
shared kernel :mod:`fourd_core.kernels.fourdnex` (the ComfyUI path calls the same functions). The
blocks, attention processors, attention backends, caches, layerwise casting, group offloading and
``torch.compile`` of diffusers stay untouched. The patches can be switched off
(``set_fourdnex_enabled(model, False)``) to run the stock Wan model, e.g. for the grid sampler.
"""

from __future__ import annotations

import weakref

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from ..errors import InputError, WeightsError
from ..kernels.fourdnex import add_domain_embeddings, shared_rope

#: Parameter name of the domain embeddings, as in the official checkpoint (``learnable_domain_embeddings``).
DOMAIN_EMBEDDING_KEY = "learnable_domain_embeddings"
_ROPE_HOOK = "fourd_4dnex_shared_rope"
_EMBEDDING_HOOK = "fourd_4dnex_domain_embeddings"


class SharedRopeHook(ModelHook):
    """On diffusers' ``WanRotaryPosEmbed`` (``transformer.rope``): both width halves share RoPE positions.

    Input ``hidden_states`` ``[B, C, F, H, W]`` (latent, before patchify); output the stock ``(freqs_cos,
    freqs_sin)``, each ``[1, F' * H' * W', 1, head_dim]`` in (t, h, w) order, where the positions of
    token column ``j`` and ``j + W'/2`` coincide (:func:`fourd_core.kernels.fourdnex.shared_rope`). With the
    patches switched off the stock module runs unchanged. A context-parallel split registered later on
    the same module (``enable_parallelism``) wraps this hook and splits its output.
    """

    def __init__(self, owner):
        super().__init__()
        self.owner = weakref.ref(owner)

    def new_forward(self, module, hidden_states, *args, **kwargs):
        owner = self.owner()
        if owner is None or not owner._fourdnex_enabled:
            return self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = module.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)
        if width % p_w:
            raise InputError(f"The latent width {width} is not a multiple of the patch width {p_w}.")
        cos, sin = self.fn_ref.original_forward(hidden_states[..., : width // 2], *args, **kwargs)
        return shared_rope(cos, grid), shared_rope(sin, grid)


class DomainEmbeddingHook(ModelHook):
    """On ``transformer.patch_embedding``: adds row 0 of the domain embeddings to the left (RGB) half of the
    token grid and row 1 to the right (XYZ) half (:func:`fourd_core.kernels.fourdnex.add_domain_embeddings`;
    the output is ``[B, inner_dim, F', H', W']``)."""

    def __init__(self, owner):
        super().__init__()
        self.owner = weakref.ref(owner)

    def post_forward(self, module, output):
        owner = self.owner()
        if owner is None or not owner._fourdnex_enabled:
            return output
        return add_domain_embeddings(output, getattr(owner, DOMAIN_EMBEDDING_KEY), width_dim=-1, channel_dim=1)


def is_fourdnex_patched(transformer: nn.Module) -> bool:
    """True if :func:`apply_fourdnex_patches` was applied to ``transformer``."""
    return getattr(transformer, "_fourdnex_patched", False)


def apply_fourdnex_patches(transformer: nn.Module, domain_embeddings: torch.Tensor | None = None) -> nn.Module:
    """Install the 4DNeX domain embeddings and shared RoPE on a diffusers ``WanTransformer3DModel``.

    Idempotent. The model is modified in place and returned. The parameter is registered as
    ``transformer.learnable_domain_embeddings`` (the official name), zero-initialised unless
    ``domain_embeddings`` is given, in the dtype of the patch embedding (as the official code casts
    it to the model dtype; this also keeps ``transformer.dtype`` unchanged).

    Args:
        transformer: a ``WanTransformer3DModel`` (any size).
        domain_embeddings: optional ``[2, inner_dim]`` tensor (see :func:`set_domain_embeddings`).
    Returns:
        the same module, patched and enabled.
    Raises:
        WeightsError: if ``domain_embeddings`` has the wrong shape or non-finite values.
    """
    if not is_fourdnex_patched(transformer):
        if getattr(transformer, "_parallel_config", None) is not None:
            # the context-parallel split hooks sit on `rope`'s output: wrapping it now would put the
            # width duplication *after* the split and give every rank wrong positions
            raise InputError("Apply the 4DNeX patches before enable_parallelism (context parallelism splits the "
                             "output of `rope`; use fourd_core.distributed.runtime.enable_scene_parallel).")
        inner_dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        ref = transformer.patch_embedding.weight
        device = ref.device if ref.device.type != "meta" else torch.device("cpu")
        param = nn.Parameter(torch.zeros(2, inner_dim, dtype=ref.dtype, device=device), requires_grad=False)
        transformer.register_parameter(DOMAIN_EMBEDDING_KEY, param)
        HookRegistry.check_if_exists_or_initialize(transformer.rope).register_hook(SharedRopeHook(transformer), _ROPE_HOOK)
        HookRegistry.check_if_exists_or_initialize(transformer.patch_embedding).register_hook(
            DomainEmbeddingHook(transformer), _EMBEDDING_HOOK)
        transformer._fourdnex_patched = True
    set_fourdnex_enabled(transformer, True)
    if domain_embeddings is not None:
        set_domain_embeddings(transformer, domain_embeddings)
    return transformer


def set_fourdnex_enabled(transformer: nn.Module, enabled: bool) -> None:
    """Switch the 4DNeX patches on or off (off = the stock Wan forward, bit for bit).

    Raises:
        InputError: if the model was never patched and ``enabled`` is True.
    """
    if not is_fourdnex_patched(transformer):
        if enabled:
            raise InputError("Call apply_fourdnex_patches(transformer) before enabling the 4DNeX mode.")
        return
    transformer._fourdnex_enabled = bool(enabled)


def set_domain_embeddings(transformer: nn.Module, embeddings: torch.Tensor) -> None:
    """Copy ``embeddings`` ``[2, inner_dim]`` into the patched model's domain-embedding parameter.

    Raises:
        WeightsError: shape mismatch (says the expected inner_dim) or NaN/inf values.
    """
    param = getattr(transformer, DOMAIN_EMBEDDING_KEY, None)
    if param is None:
        raise InputError("Call apply_fourdnex_patches(transformer) before setting domain embeddings.")
    if tuple(embeddings.shape) != tuple(param.shape):
        raise WeightsError(
            f"Domain embeddings have shape {tuple(embeddings.shape)}, but this transformer expects "
            f"{tuple(param.shape)} ([2, inner_dim]). Use the learnable_domain_embeddings file that belongs "
            "to the same base model (Wan2.1-I2V-14B: [2, 5120])."
        )
    if not torch.isfinite(embeddings).all():
        raise WeightsError("Domain embeddings contain NaN or inf values: the file is corrupt. Download it again.")
    with torch.no_grad():
        param.data = embeddings.detach().to(device=param.device, dtype=param.dtype).clone()
