"""FourD Apply 4DNeX (native): the 4DNeX release on a core ``MODEL``."""

from __future__ import annotations

from ...fourd_core.errors import InputError, WeightsError
from ...fourd_core.models.lora import find_release_files, read_domain_embeddings
from ...fourd_core.native.lora_keys import lora_strength, read_fourdnex_lora_comfy
from .. import comfy_bridge as cb
from . import patches
from .common import NATIVE_CATEGORY, add_lora_patches, wan_i2v_model
from .folders import register_tiny_model_folders

BESIDE = "(beside the LoRA)"


def release_choices() -> list[str]:
    """4DNeX release folders (with a ``*lora*.safetensors``) and LoRA files in models/loras/."""
    register_tiny_model_folders()   # idempotent; keeps the demo release listed if folder_paths was reset
    return cb.lora_choices()


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
        dm = wan_i2v_model(model)
        if patches.is_fourdnex_patched(model):
            raise InputError("This MODEL already has 4DNeX applied; connect the unpatched MODEL from Load Diffusion Model.")
        lora_file, emb_file = find_release_files(cb.resolve_model("loras", release))
        if domain_embeddings != BESIDE:
            emb_file = cb.resolve_model("loras", domain_embeddings)
        lora = read_fourdnex_lora_comfy(lora_file)       # first: a fused-attention LoRA is refused as such
        if emb_file is None:
            raise WeightsError(f"No learnable_domain_embeddings.pt/.safetensors next to {lora_file}. Put the file from "
                               "the 4DNeX release there, or pick it in domain_embeddings.")
        emb = read_domain_embeddings(emb_file)
        if emb.shape[1] != dm.dim:
            raise WeightsError(f"Domain embeddings {tuple(emb.shape)} do not fit this model (width {dm.dim}); use the "
                               "release made for this base model (Wan2.1-I2V-14B: [2, 5120]).")
        out = model.clone()
        add_lora_patches(out, lora, lora_strength(strength), lora_file, "the 4DNeX LoRA")
        patches.install(out, emb)
        return (out,)
