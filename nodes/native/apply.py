"""FourD Apply 4DNeX (native): the 4DNeX release on a core ``MODEL``."""

from __future__ import annotations

from ...fourd_core.errors import InputError, WeightsError
from ...fourd_core.models.lora import find_release_files, read_domain_embeddings
from ...fourd_core.native.lora_keys import check_lora_shapes, lora_strength, lora_targets, read_fourdnex_lora_comfy
from .. import comfy_bridge as cb
from ..types import CATEGORY
from . import patches
from .folders import register_tiny_model_folders

NATIVE_CATEGORY = f"{CATEGORY}/native"
BESIDE = "(beside the LoRA)"


def release_choices() -> list[str]:
    """4DNeX release folders (with a ``*lora*.safetensors``) and LoRA files in models/loras/."""
    register_tiny_model_folders()   # idempotent; keeps the demo release listed if folder_paths was reset
    return cb.lora_choices()


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


class FourDApply4DNeXNative:
    DESCRIPTION = ("Turn a core Wan2.1-I2V MODEL (Load Diffusion Model: fp16, fp8_scaled or GGUF) into 4DNeX: adds the "
                   "release LoRA as model patches at its trained scale 0.5 x strength (do NOT load it with the core "
                   "LoRA loader: its keys are not mapped there and it would run at scale 1.0), the learnable domain "
                   "embeddings (RGB / XYZ halves) and the shared RoPE of the fused width. Returns a patched clone; the "
                   "input MODEL stays stock. Sample with ModelSamplingSD3 (shift 3) + KSampler (cfg 5).")
    CATEGORY = NATIVE_CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A clone of the MODEL with the 4DNeX LoRA, domain embeddings and shared RoPE.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        embs = [BESIDE] + cb.domain_embedding_choices()
        return {"required": {
            "model": ("MODEL", {"tooltip": "Wan2.1-I2V-14B from core Load Diffusion Model (any weight format core or a "
                                "GGUF pack loads)."}),
            "release": (release_choices(), {"tooltip": "4DNeX release folder in models/loras/ (with "
                        "pytorch_lora_weights.safetensors and learnable_domain_embeddings.pt) or the LoRA file itself."}),
            "domain_embeddings": (embs, {"tooltip": "learnable_domain_embeddings.pt/.safetensors; default: the file "
                                  "next to the LoRA."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                   "tooltip": "Multiplies the trained LoRA scale 0.5 (alpha 32 / rank 64). 1.0 = as trained."}),
        }}

    def apply(self, model, release, domain_embeddings, strength):
        from comfy.lora import load_lora

        dm = wan_i2v_model(model)
        if patches.is_fourdnex_patched(model):
            raise InputError("This MODEL already has 4DNeX applied; connect the unpatched MODEL from Load Diffusion Model.")
        lora_file, emb_file = find_release_files(cb.resolve_model("loras", release))
        if domain_embeddings != BESIDE:
            emb_file = cb.resolve_model("loras", domain_embeddings)
        if emb_file is None:
            raise WeightsError(f"No learnable_domain_embeddings.pt/.safetensors next to {lora_file}. Put the file from "
                               "the 4DNeX release there, or pick it in domain_embeddings.")
        lora = read_fourdnex_lora_comfy(lora_file)
        # ComfyUI-GGUF keeps quantised parameters whose logical shape is ``tensor_shape`` (its
        # state_dict() holds meta stand-ins of the packed shape, so read the parameters themselves)
        shapes = {f"diffusion_model.{k}": tuple(getattr(v, "tensor_shape", v.shape))
                  for k, v in model.model.diffusion_model.named_parameters()}
        check_lora_shapes(lora, shapes)
        emb = read_domain_embeddings(emb_file)
        if emb.shape[1] != dm.dim:
            raise WeightsError(f"Domain embeddings {tuple(emb.shape)} do not fit this model (width {dm.dim}); use the "
                               "release made for this base model (Wan2.1-I2V-14B: [2, 5120]).")
        targets = lora_targets(lora)
        loaded = load_lora(lora, targets)
        if len(loaded) != len(targets):
            raise WeightsError(f"Only {len(loaded)} of {len(targets)} LoRA layers could be read from {lora_file}.")
        out = model.clone()
        added = out.add_patches(loaded, lora_strength(strength))
        if len(added) != len(targets):
            missing = sorted(set(targets.values()) - {k if isinstance(k, str) else k[0] for k in added})
            raise WeightsError(f"The model has no weights {missing[:3]} for the 4DNeX LoRA.")
        patches.install(out, emb)
        return (out,)
