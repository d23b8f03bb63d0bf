"""What the native nodes share: their category and the check that a core MODEL is a Wan2.1 I2V DiT."""

from __future__ import annotations

from ...fourd_core.errors import InputError
from ..types import CATEGORY

NATIVE_CATEGORY = f"{CATEGORY}/native"


def wan_i2v_model(model):
    """The ``WanModel`` inside a core MODEL, checked to be a Wan2.1 I2V DiT (36 input channels, CLIP
    image projection). Raises :class:`InputError` naming the model 4DNeX needs."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    if dm is None or not all(hasattr(dm, a) for a in ("forward_orig", "rope_encode", "patch_embedding", "blocks")):
        raise InputError("FourD Apply 4DNeX (native) needs a Wan2.1 MODEL from core Load Diffusion Model "
                         "(wan2.1_i2v_480p_14B_*.safetensors or a GGUF of it); this MODEL is not a Wan DiT.")
    in_dim = dm.patch_embedding.weight.shape[1]
    if in_dim != 36 or getattr(dm, "img_emb", None) is None:
        raise InputError(f"This Wan MODEL is not an image-to-video model (input channels {in_dim}, image projection "
                         f"{'missing' if getattr(dm, 'img_emb', None) is None else 'present'}). 4DNeX needs "
                         "Wan2.1-I2V-14B (wan2.1_i2v_480p_14B_*.safetensors).")
    return dm


def add_lora_patches(model, comfy_lora: dict, strength: float, source, what: str) -> None:
    """Add a LoRA in ComfyUI's key layout (:func:`fourd_core.native.lora_keys.lora_to_comfy`) to the
    ModelPatcher ``model`` (a clone) as weight patches at ``strength``, checked against the model's
    weights first (their logical shapes: ComfyUI-GGUF keeps packed storage behind ``tensor_shape``).

    Raises:
        WeightsError: a shape that does not fit, or layers ComfyUI could not read or the model lacks.
    """
    from comfy.lora import load_lora

    from ...fourd_core.errors import WeightsError
    from ...fourd_core.native.lora_keys import check_lora_shapes, lora_targets

    shapes = {f"diffusion_model.{k}": tuple(getattr(v, "tensor_shape", v.shape))
              for k, v in model.model.diffusion_model.named_parameters()}
    check_lora_shapes(comfy_lora, shapes)
    targets = lora_targets(comfy_lora)
    loaded = load_lora(comfy_lora, targets)
    if len(loaded) != len(targets):
        raise WeightsError(f"Only {len(loaded)} of {len(targets)} LoRA layers could be read from {source}.")
    added = model.add_patches(loaded, float(strength))
    if len(added) != len(targets):
        missing = sorted(set(targets.values()) - {k if isinstance(k, str) else k[0] for k in added})
        raise WeightsError(f"The model has no weights {missing[:3]} for {what}.")
