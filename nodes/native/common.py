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
