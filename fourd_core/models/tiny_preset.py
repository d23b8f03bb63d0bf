"""The tiny random-weight preset: the real Wan2.1-I2V architecture at toy width, for machines
without the 14B weights (CI, a first try on a laptop).

**The outputs of this preset are meaningless** (random weights); it exists so the whole pipeline -
loaders, 4DNeX patches, LoRA, sampling, decoding, geometry, exports - runs end to end in seconds on
a CPU with no downloads. It is written to disk in the same formats as the real release (a diffusers
``model_index.json`` folder with a tokenizer, ``pytorch_lora_weights.safetensors`` in the official
key layout, ``learnable_domain_embeddings.pt``) and loaded back through the same loaders.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..util.locks import build_once

TINY_VERSION = 1
#: Default sampling size of the tiny preset (per modality); the real model uses 480x720.
TINY_SAMPLING = {"height": 96, "width": 144, "num_frames": 49, "steps": 8}

TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
    text_dim=32, freq_dim=32, ffn_dim=48, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, image_dim=32, added_kv_proj_dim=24, rope_max_seq_len=1024,
)
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                temperal_downsample=[False, True, True], dropout=0.0)
TINY_T5 = dict(vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
                 patch_size=14, projection_dim=32)
LORA_RANK = 4


def default_cache_dir() -> Path:
    """``$FOURD_CACHE`` or ``~/.cache/fourd``."""
    return Path(os.environ.get("FOURD_CACHE", Path.home() / ".cache" / "fourd")).expanduser()


def build_tokenizer():
    """A byte-level tokenizer with T5's special tokens (pad 0, eos 1, unk 2), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_tokens = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for t in sorted(byte_tokens):
        vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def build_tiny_components(seed: int = 0) -> dict:
    """Random tiny versions of every Wan2.1-I2V component (real classes, toy sizes)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**TINY_TRANSFORMER)
    with torch.no_grad():  # diffusers zero-inits nothing here, but make the output projection lively
        for p in transformer.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.2)
    vae = AutoencoderKLWan(**TINY_VAE)
    text_encoder = UMT5EncoderModel(UMT5Config(**TINY_T5))
    image_encoder = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP))
    image_processor = CLIPImageProcessor(size={"shortest_edge": TINY_CLIP["image_size"]},
                                         crop_size={"height": TINY_CLIP["image_size"], "width": TINY_CLIP["image_size"]})
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                        flow_shift=3.0, solver_order=2, solver_type="bh2")
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=build_tokenizer(),
                image_encoder=image_encoder, image_processor=image_processor, scheduler=scheduler)


def tiny_lora_state_dict(transformer, rank: int = LORA_RANK, seed: int = 1) -> dict[str, torch.Tensor]:
    """A random LoRA in the official 4DNeX key layout (attn1/attn2 q, k, v, out.0; A ``[r, in]``, B ``[out, r]``)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, _ in enumerate(transformer.blocks):
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                lin = transformer.get_submodule(f"blocks.{i}.{attn}.{proj}")
                sd[f"transformer.blocks.{i}.{attn}.{proj}.lora_A.weight"] = torch.randn(rank, lin.in_features, generator=g) * 0.1
                sd[f"transformer.blocks.{i}.{attn}.{proj}.lora_B.weight"] = torch.randn(lin.out_features, rank, generator=g) * 0.1
    return sd


def save_on_this_rank(pipe) -> None:
    """Let ``pipe.save_pretrained`` write every component from whichever process calls it.

    transformers 5 writes a model only on global rank 0 once ``torch.distributed`` is initialised
    (``PreTrainedModel.save_pretrained`` asks ``should_save_on_this_rank``; huggingface/transformers
    ``src/transformers/distributed/mixin.py``, v5) and otherwise returns without writing. A tiny model
    is built by whichever rank wins the build lock (:func:`fourd_core.util.locks.build_once`), so under
    ``torchrun`` a rank-1 builder left ``text_encoder/`` and ``image_encoder/`` empty. This sets, on
    this pipeline's own freshly built components only, an instance attribute that answers "yes"
    (nothing global changes; a transformers without the method ignores it).
    """
    from transformers import PreTrainedModel

    for component in pipe.components.values():
        if isinstance(component, PreTrainedModel):
            component.should_save_on_this_rank = lambda is_main_process=True: is_main_process


def save_tiny_preset(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny preset into ``folder``: ``base/`` (diffusers folder) and ``lora/`` (release files)."""
    from diffusers import WanImageToVideoPipeline
    from safetensors.torch import save_file

    folder = Path(folder)
    comps = build_tiny_components(seed)
    pipe = WanImageToVideoPipeline(**comps)
    save_on_this_rank(pipe)
    pipe.save_pretrained(folder / "base", safe_serialization=True)
    (folder / "lora").mkdir(parents=True, exist_ok=True)
    save_file(tiny_lora_state_dict(comps["transformer"]), str(folder / "lora" / "pytorch_lora_weights.safetensors"))
    inner = TINY_TRANSFORMER["num_attention_heads"] * TINY_TRANSFORMER["attention_head_dim"]
    emb = torch.randn(2, inner, generator=torch.Generator().manual_seed(seed + 2)) * 0.5
    torch.save(emb, folder / "lora" / "learnable_domain_embeddings.pt")
    (folder / "README.txt").write_text("fourd tiny random-weight preset: outputs are meaningless. "
                                       f"version {TINY_VERSION}, seed {seed}\n")
    return folder


def has_component_weights(folder: Path, components) -> bool:
    """Whether each ``folder/<component>/`` of a diffusers folder holds a ``config.json`` and ``*.safetensors``."""
    return all((folder / c / "config.json").is_file() and any((folder / c).glob("*.safetensors")) for c in components)


def _tiny_preset_complete(folder: Path) -> bool:
    """Every file :func:`save_tiny_preset` writes, its README last."""
    return all((folder / rel).is_file() for rel in ("base/model_index.json", "lora/pytorch_lora_weights.safetensors",
                                                    "lora/learnable_domain_embeddings.pt", "README.txt")) and \
        has_component_weights(folder / "base", ("transformer", "vae", "text_encoder", "image_encoder"))


def ensure_tiny_preset(cache_dir: str | Path | None = None) -> Path:
    """Build the tiny preset once under ``cache_dir`` (default ``$FOURD_CACHE``) and return its folder.

    Safe with many processes starting on an empty cache at once (``torchrun``, two ComfyUI servers):
    one builds it in a temporary folder and renames it into place, the others wait and use that
    same folder; a complete preset is never replaced (:func:`fourd_core.util.locks.build_once`).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_once(root / f"tiny-v{TINY_VERSION}", save_tiny_preset, _tiny_preset_complete, what="tiny preset")
