"""Assembling the 4DNeX pipeline from a :class:`~fourd_core.models.loading.ModelSpec`: the component loaders of
:mod:`fourd_core.models.loading`, the 4DNeX release (:mod:`fourd_core.models.lora`), the memory placement
(:mod:`fourd_core.models.memory`) and the pipeline class (:mod:`fourd_core.pipelines.fourdnex`) - the one place
that sits above all of them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..errors import WeightsError
from ..models.loading import (BASE_HUB_ID, FOURDNEX_HUB_ID, ModelSpec, _config, _loading, check_weight_files,
                              hub_download, is_hub_id, load_image_encoder_file, load_text_encoder_file,
                              load_transformer_file, load_vae_file, resolve_base)
from ..models.lora import load_fourdnex_release
from ..models.memory import MemoryConfig, apply_memory_config, enable_fp8_storage
from ..models.patches import DOMAIN_EMBEDDING_KEY, apply_fourdnex_patches
from ..models.weights import load_safetensors
from .fourdnex import FourDNeXPipeline


def load_pipeline(spec: ModelSpec, memory: MemoryConfig | None = None, progress=None):
    """Load the base model, apply the 4DNeX release and place everything per ``memory``.

    Args:
        spec: where the weights come from. memory: placement (default: all on the best device).
        progress: optional ``progress(message)`` called between the (slow) loading stages.
    Returns:
        ``(pipe, info)`` - a :class:`~fourd_core.pipelines.fourdnex.FourDNeXPipeline` and a dict
        describing what was loaded (paths, dtypes, LoRA scale).
    Raises:
        WeightsError: any missing, corrupt or mismatched file (the message names the fix).
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

    memory = memory or MemoryConfig()
    say = progress or (lambda msg: None)
    dtype = spec.torch_dtype
    folder, tiny_release = resolve_base(spec)
    if folder is None and not all([spec.transformer_file, spec.vae_file, spec.text_encoder_file, spec.image_encoder_file]):
        raise WeightsError("Without a base model folder or hub id, all four single files are needed: transformer, "
                           "VAE, UMT5 text encoder and CLIP vision encoder.")
    info: dict = {"base": str(folder) if folder else None, "dtype": spec.dtype, "tiny": spec.base == "tiny"}
    if not spec.fourdnex and spec.domain_embeddings_file:
        raise WeightsError("Domain embeddings were given without the 4DNeX LoRA; they only exist together with it. "
                           "Give the LoRA too, or drop the embeddings for plain Wan2.1.")
    check_weight_files(folder, spec)

    def sub_ok(name):
        return folder is not None and (folder / name).exists()

    say("loading transformer")
    keep_fp8 = bool(memory.fp8_storage and not (spec.fuse_lora and spec.fourdnex))
    domain_emb = None
    if spec.transformer_file:
        transformer, domain_emb = load_transformer_file(spec.transformer_file, _config(folder, "transformer", "transformer.json"),
                                                        dtype, keep_fp8=keep_fp8)
        info["transformer"] = str(spec.transformer_file)
    elif sub_ok("transformer"):
        with _loading("transformer", folder / "transformer"):
            transformer = WanTransformer3DModel.from_pretrained(folder, subfolder="transformer", torch_dtype=dtype)
        shards = folder / "transformer"
        for index in shards.glob("*.index.json"):
            shard = json.loads(index.read_text()).get("weight_map", {}).get(DOMAIN_EMBEDDING_KEY)
            if shard:
                domain_emb = load_safetensors(shards / shard, keys=[DOMAIN_EMBEDDING_KEY])[DOMAIN_EMBEDDING_KEY].float()
    else:
        raise WeightsError(f"No transformer in {folder}; give transformer_file.")

    say("loading VAE")
    if spec.vae_file:
        vae = load_vae_file(spec.vae_file, _config(folder, "vae", "vae.json"))
    else:
        with _loading("VAE", folder / "vae"):
            vae = AutoencoderKLWan.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)

    say("loading text encoder")
    if spec.text_encoder_file:
        text_encoder = load_text_encoder_file(spec.text_encoder_file, _config(folder, "text_encoder", "text_encoder.json"), dtype)
    else:
        with _loading("text encoder", folder / "text_encoder"):
            text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype)
    if spec.tokenizer:
        tok_src = spec.tokenizer
    elif sub_ok("tokenizer"):
        tok_src = folder / "tokenizer"
    else:
        tok_src = hub_download(BASE_HUB_ID, cache_dir=spec.cache_dir, local_dir=spec.local_dir,
                               local_files_only=spec.local_files_only, allow_patterns=["tokenizer/*"]) / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(str(tok_src))

    say("loading image encoder")
    if spec.image_encoder_file:
        image_encoder = load_image_encoder_file(spec.image_encoder_file, _config(folder, "image_encoder", "image_encoder.json"))
    else:
        with _loading("image encoder", folder / "image_encoder"):
            image_encoder = CLIPVisionModel.from_pretrained(folder / "image_encoder", torch_dtype=torch.float32)
    if sub_ok("image_processor"):
        image_processor = CLIPImageProcessor.from_pretrained(folder / "image_processor")
    else:
        image_processor = CLIPImageProcessor(**{k: v for k, v in _config(None, "", "image_processor.json").items()
                                                if k != "image_processor_type"})
    if sub_ok("scheduler"):
        scheduler = UniPCMultistepScheduler.from_pretrained(folder, subfolder="scheduler")
    else:
        scheduler = UniPCMultistepScheduler.from_config(_config(None, "", "scheduler.json"))

    pipe = FourDNeXPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), scheduler=scheduler,
                            image_processor=image_processor, image_encoder=image_encoder.eval(),
                            transformer=transformer.eval())
    pipe.set_progress_bar_config(disable=True)

    release = spec.fourdnex
    if spec.base == "tiny" and release == FOURDNEX_HUB_ID:
        release = str(tiny_release)
    if release:
        say("loading 4DNeX LoRA")
        rel_path = Path(release).expanduser()
        if not rel_path.exists() and is_hub_id(release):
            rel_path = hub_download(release, cache_dir=spec.cache_dir, local_dir=spec.lora_local_dir,
                                    local_files_only=spec.local_files_only)
        fuse = spec.fuse_lora
        if memory.fp8_storage and not fuse:
            # unfused LoRA on fp8 weights: cast the base weights first so the adapter stays in `dtype`
            enable_fp8_storage(transformer, dtype)
        info["lora"] = load_fourdnex_release(pipe, rel_path, strength=spec.lora_strength, fuse=fuse,
                                             domain_embeddings=spec.domain_embeddings_file,
                                             embeddings_tensor=domain_emb)
        if not fuse:  # PEFT creates adapters in the base layer's dtype; keep them in the compute dtype
            for name, p in transformer.named_parameters():
                if ".lora_" in name and p.dtype != dtype:
                    p.data = p.data.to(dtype)
            if memory.fp8_storage:
                enable_fp8_storage(transformer, dtype)
    else:
        apply_fourdnex_patches(transformer, domain_emb)
        info["lora"] = None
    say("placing models")
    apply_memory_config(pipe, memory, dtype)
    info["memory"] = dataclasses.asdict(memory)
    return pipe, info
