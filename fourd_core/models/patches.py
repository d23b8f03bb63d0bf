"""The 4DNeX additions to diffusers' ``WanTransformer3DModel``, as small patches (not a fork).

4DNeX (Sec. 4.2; official class ``WanTransformer3DModelDembSameRope``, 4dnex.md sections 1.6 and 5)
changes the stock Wan DiT in exactly two places for a width-fused ``[RGB | XYZ]`` latent:

1. **Learnable domain embeddings** ``[2, inner_dim]``: row 0 is added to every token of the left
   (RGB) half right after the patch embedding, row 1 to every token of the right (XYZ) half.
2. **Shared RoPE**: rotary positions are computed for *half* the token width and duplicated across
   both halves, so the RGB token at ``(t, h, j)`` and the XYZ token at ``(t, h, j)`` get identical
   rotations.

Both are installed here as (a) a forward hook on ``patch_embedding`` and (b) a thin wrapper around
the stock ``rope`` module. The blocks, attention processors, attention backends, caches,
layerwise casting, group offloading and ``torch.compile`` of diffusers stay untouched. The patches
can be switched off (``set_fourdnex_enabled(model, False)``) to run the stock Wan model, e.g. for
the grid sampler.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import WeightsError

#: Parameter name of the domain embeddings, as in the official checkpoint (4dnex.md sec. 5).
DOMAIN_EMBEDDING_KEY = "learnable_domain_embeddings"


class WidthSharedRope(nn.Module):
    """Wraps diffusers' ``WanRotaryPosEmbed`` so both width halves share RoPE positions.

    Input ``hidden_states`` ``[B, C, F, H, W]`` (latent, before patchify); output the stock
    ``(freqs_cos, freqs_sin)``, each ``[1, F' * H' * W', 1, head_dim]`` in (t, h, w) order, where
    the positions of token column ``j`` and ``j + W'/2`` coincide. When ``enabled`` is False the
    stock module is called unchanged. Source: 4DNeX official ``samerope`` (4dnex.md sec. 5).
    """

    def __init__(self, rope: nn.Module):
        super().__init__()
        self.inner = rope
        self.enabled = True

    def forward(self, hidden_states: torch.Tensor):
        if not self.enabled:
            return self.inner(hidden_states)
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.inner.patch_size
        if width % (2 * p_w) != 0:
            raise ValueError(
                f"4DNeX shared RoPE needs a latent width divisible by {2 * p_w} (two equal halves of whole "
                f"patches), got {width}. Use a per-modality pixel width that is a multiple of 16."
            )
        cos, sin = self.inner(hidden_states[..., : width // 2])
        shape = (1, frames // p_t, height // p_h, width // (2 * p_w), cos.shape[-1])

        def duplicate(freqs: torch.Tensor) -> torch.Tensor:
            f = freqs.reshape(shape)
            return torch.cat([f, f], dim=3).reshape(1, -1, 1, shape[-1])

        return duplicate(cos), duplicate(sin)


def _add_domain_embeddings(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on ``patch_embedding``: add row 0 to the left half of the token grid, row 1 to
    the right half. ``output`` is ``[B, inner_dim, F', H', W']``."""
    owner = module._fourdnex_owner()
    if owner is None or not owner._fourdnex_enabled:
        return output
    emb = getattr(owner, DOMAIN_EMBEDDING_KEY).to(device=output.device, dtype=output.dtype)
    half = output.shape[-1] // 2
    e_rgb = emb[0].view(1, -1, 1, 1, 1)
    e_xyz = emb[1].view(1, -1, 1, 1, 1)
    return torch.cat([output[..., :half] + e_rgb, output[..., half:] + e_xyz], dim=-1)


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
    import weakref

    if not is_fourdnex_patched(transformer):
        if getattr(transformer, "_parallel_config", None) is not None:
            # the context-parallel split hooks sit on `rope`'s output: wrapping it now would put the
            # width duplication *after* the split and give every rank wrong positions
            raise ValueError("Apply the 4DNeX patches before enable_parallelism (context parallelism splits the "
                             "output of `rope`; use fourd_core.distributed.runtime.enable_scene_parallel).")
        inner_dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        ref = transformer.patch_embedding.weight
        device = ref.device if ref.device.type != "meta" else torch.device("cpu")
        param = nn.Parameter(torch.zeros(2, inner_dim, dtype=ref.dtype, device=device), requires_grad=False)
        transformer.register_parameter(DOMAIN_EMBEDDING_KEY, param)
        transformer.rope = WidthSharedRope(transformer.rope)
        transformer.patch_embedding._fourdnex_owner = weakref.ref(transformer)
        transformer._fourdnex_hook = transformer.patch_embedding.register_forward_hook(_add_domain_embeddings)
        transformer._fourdnex_patched = True
    set_fourdnex_enabled(transformer, True)
    if domain_embeddings is not None:
        set_domain_embeddings(transformer, domain_embeddings)
    return transformer


def set_fourdnex_enabled(transformer: nn.Module, enabled: bool) -> None:
    """Switch the 4DNeX patches on or off (off = the stock Wan forward, bit for bit).

    Raises:
        ValueError: if the model was never patched and ``enabled`` is True.
    """
    if not is_fourdnex_patched(transformer):
        if enabled:
            raise ValueError("Call apply_fourdnex_patches(transformer) before enabling the 4DNeX mode.")
        return
    transformer._fourdnex_enabled = bool(enabled)
    transformer.rope.enabled = bool(enabled)


def set_domain_embeddings(transformer: nn.Module, embeddings: torch.Tensor) -> None:
    """Copy ``embeddings`` ``[2, inner_dim]`` into the patched model's domain-embedding parameter.

    Raises:
        WeightsError: shape mismatch (says the expected inner_dim) or NaN/inf values.
    """
    param = getattr(transformer, DOMAIN_EMBEDDING_KEY, None)
    if param is None:
        raise ValueError("Call apply_fourdnex_patches(transformer) before setting domain embeddings.")
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
