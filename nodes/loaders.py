"""Loader nodes: base Wan2.1-I2V model, the 4DNeX release, memory settings.

They produce cheap specs; the sampler loads the pipeline once (``fourd_core.pipelines.cache``) and
keeps it while the specs stay the same.
"""

from __future__ import annotations

from ..fourd_core.models.loading import BASE_HUB_ID, FOURDNEX_HUB_ID, ModelSpec
from ..fourd_core.models.memory import MemoryConfig, attention_backend_names
from ..fourd_core.settings import node_input, spec
from . import comfy_bridge as cb
from .types import DIFFUSERS_CATEGORY, DIFFUSERS_NOTE, MEMORY, MODEL, FourDModel

NO_BASE = "(none: single files only)"


class FourDLoadWan:
    DESCRIPTION = DIFFUSERS_NOTE + ("Choose the Wan2.1-I2V-14B-480P base model: a diffusers folder in models/diffusers/, the hub "
                   "download (into models/diffusers/), single files from diffusion_models/, text_encoders/, "
                   "clip_vision/ and vae/, or the tiny random preset (no download, meaningless output) to try the "
                   "graph on a CPU. Nothing is loaded until the sampler runs; the model then stays cached.")
    CATEGORY = DIFFUSERS_CATEGORY
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("What to load (loaded once by the sampler, cached between runs).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        bases = [cb.TINY_CHOICE, cb.HUB_BASE_CHOICE, NO_BASE] + cb.subfolders_with("diffusers", "model_index.json")
        return {
            "required": {
                "base": (bases, {"default": cb.HUB_BASE_CHOICE, "tooltip": "Wan2.1-I2V-14B-480P in diffusers format "
                                 "(folder in models/diffusers/ or the hub download), or the tiny CPU preset."}),
                "transformer": ([cb.FROM_BASE] + cb.file_list("diffusion_models"), {
                    "tooltip": "Optional single-file DiT from models/diffusion_models/ (e.g. "
                               "wan2.1_i2v_480p_14B_fp16.safetensors or _fp8_e4m3fn); overrides the base's."}),
                "text_encoder": ([cb.FROM_BASE] + cb.file_list("text_encoders"), {
                    "tooltip": "Optional UMT5-XXL file from models/text_encoders/ (umt5_xxl_fp16.safetensors)."}),
                "clip_vision": ([cb.FROM_BASE] + cb.file_list("clip_vision"), {
                    "tooltip": "Optional CLIP-H file from models/clip_vision/ (clip_vision_h.safetensors)."}),
                "vae": ([cb.FROM_BASE] + cb.file_list("vae"), {
                    "tooltip": "Optional Wan VAE file from models/vae/ (wan_2.1_vae.safetensors)."}),
                "dtype": (["bfloat16", "float16", "float32"], {"default": "bfloat16",
                          "tooltip": "DiT/UMT5 compute dtype (bfloat16 as officially; CLIP and the VAE stay float32)."}),
            },
            "optional": {"memory": (MEMORY, {"tooltip": "Offloading / fp8 / tiling settings (FourD Memory Settings)."})},
        }

    def load(self, base, transformer, text_encoder, clip_vision, vae, dtype, memory=None):
        files = {}
        for key, kind, value in (("transformer_file", "diffusion_models", transformer),
                                 ("text_encoder_file", "text_encoders", text_encoder),
                                 ("image_encoder_file", "clip_vision", clip_vision), ("vae_file", "vae", vae)):
            files[key] = None if value == cb.FROM_BASE else cb.resolve_model(kind, value)
        if base == cb.TINY_CHOICE:
            spec = ModelSpec(base="tiny", dtype="float32", **files)
        elif base == cb.HUB_BASE_CHOICE:
            spec = ModelSpec(base=BASE_HUB_ID, local_dir=cb.download_dir("diffusers"), dtype=dtype, fourdnex=None, **files)
        elif base == NO_BASE:
            spec = ModelSpec(base=None, dtype=dtype, local_dir=cb.download_dir("diffusers"), fourdnex=None, **files)
        else:
            spec = ModelSpec(base=cb.resolve_model("diffusers", base), dtype=dtype, fourdnex=None, **files)
        return (FourDModel(spec, memory or MemoryConfig(offload=_default_offload())),)


def _default_offload() -> str:
    import torch

    return "group" if torch.cuda.is_available() else "none"


class FourDLoad4DNeX:
    DESCRIPTION = DIFFUSERS_NOTE + ("Apply the 4DNeX release (FrozenBurning/4DNex-Lora): the rank-64 LoRA at its trained scale "
                   "0.5 x strength, and the learnable domain embeddings. Put pytorch_lora_weights.safetensors and "
                   "learnable_domain_embeddings.pt in a folder under models/loras/, pick a single LoRA file, or "
                   "download from the hub (into models/loras/).")
    CATEGORY = DIFFUSERS_CATEGORY
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model spec with the 4DNeX LoRA and embeddings.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        releases = [cb.HUB_LORA_CHOICE] + cb.lora_choices()
        embs = ["(beside the LoRA)"] + cb.domain_embedding_choices()
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From FourD Load Wan2.1-I2V."}),
                "release": (releases, {"default": cb.HUB_LORA_CHOICE, "tooltip": "4DNeX release folder or LoRA file in "
                            "models/loras/, or the hub download. Ignored by the tiny preset (it has its own)."}),
                "domain_embeddings": (embs, {"tooltip": "learnable_domain_embeddings.pt/.safetensors; default: the file "
                                      "next to the LoRA."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                       "tooltip": "Multiplies the trained scale 0.5 (alpha 32 / rank 64). 1.0 = as trained."}),
                "fuse": ("BOOLEAN", {"default": True, "tooltip": "Merge the LoRA into the weights (fastest, as "
                                     "officially). Off keeps an adapter (needed with fp8 storage of fp8 files)."}),
            }
        }

    def apply(self, model, release, domain_embeddings, strength, fuse):
        if model.spec.base == "tiny":
            return (model.replace(fourdnex=FOURDNEX_HUB_ID, lora_strength=strength, fuse_lora=fuse),)
        if release == cb.HUB_LORA_CHOICE:
            path = FOURDNEX_HUB_ID
        else:
            path = cb.resolve_model("loras", release)
        emb = None if domain_embeddings.startswith("(") else cb.resolve_model("loras", domain_embeddings)
        return (model.replace(fourdnex=path, domain_embeddings_file=emb, lora_strength=strength, fuse_lora=fuse,
                              lora_local_dir=cb.download_dir("loras")),)


class FourDMemorySettings:
    DESCRIPTION = DIFFUSERS_NOTE + ("How the 14B model is placed on your GPU. 24 GB: offload 'group' (blocks stream from RAM) or "
                   "'model' + fp8 storage. 48 GB+: 'model'. 80 GB: 'none'. CPU works (very slowly).")
    CATEGORY = DIFFUSERS_CATEGORY
    RETURN_TYPES = (MEMORY,)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = ("Memory settings for FourD Load Wan2.1-I2V.",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "device": (["auto", "cuda", "cpu"], {"tooltip": "auto: the GPU if there is one."}),
                "offload": node_input(MemoryConfig, "offload", default="group"),
                "fp8_storage": node_input(MemoryConfig, "fp8_storage"),
                "vae_tiling": node_input(MemoryConfig, "vae_tiling"),
                "attention_backend": (["default", *attention_backend_names()],
                                      {"tooltip": "default: " + spec(MemoryConfig, "attention_backend").help}),
            }
        }

    def make(self, device, offload, fp8_storage, vae_tiling, attention_backend):
        if device == "cpu" and offload != "none":
            offload = "none"
        return (MemoryConfig(device=None if device == "auto" else device, offload=offload, fp8_storage=fp8_storage,
                             vae_tiling=vae_tiling,
                             attention_backend=None if attention_backend == "default" else attention_backend),)
