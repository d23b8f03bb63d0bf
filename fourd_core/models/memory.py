"""Memory settings for the big diffusers models: offloading, fp8 weight storage, VAE tiling and
the attention backend - all through diffusers' own mechanisms.

Rough sizes for Wan2.1-I2V-14B (official 3DTopia/4DNeX @ 1101bc6: ``inference.py``): DiT 32.8 GB in bf16 (16.4 GB in fp8),
UMT5-XXL 11.4 GB bf16, CLIP-H 2.5 GB fp32, VAE 0.5 GB. The official code puts all of it on one GPU
(about 50-56 GB peak). On one 24 GB GPU use ``offload="group"`` (blocks stream in, a few GB
resident) or ``offload="model"`` together with ``fp8_storage=True`` (DiT resident in fp8).
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import InputError, brief
from ..settings import setting, validate

OFFLOAD_MODES = ("none", "model", "group", "sequential")


def attention_backend_names() -> tuple[str, ...]:
    """The attention backends diffusers knows (``diffusers.models.attention_dispatch.AttentionBackendName``),
    the choices of ``--attention`` and FourD Memory Settings."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return tuple(b.value for b in AttentionBackendName)


def ring_attention_backends() -> tuple[str, ...]:
    """Backends that return the log-sum-exp ring attention merges partial results with: those diffusers
    registers as supporting context parallelism (``_AttentionBackendRegistry._supports_context_parallel``)
    except ``native`` (SDPA), which diffusers refuses for ``return_lse``."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    supported = {str(getattr(b, "value", b)) for b in _AttentionBackendRegistry._supports_context_parallel}
    return tuple(sorted(supported - {"native"}))


@dataclasses.dataclass
class MemoryConfig:
    """How to place the models (every field's rule and help: :func:`fourd_core.settings.setting`).

    Attributes:
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``... (None: CUDA if available, else CPU).
        offload: ``"none"`` (everything on the device), ``"model"`` (each model moves to the device
            while it runs), ``"group"`` (DiT blocks stream in one group at a time, with CUDA streams),
            ``"sequential"`` (per-layer, slowest, least memory).
        fp8_storage: keep DiT linear weights in float8_e4m3fn and up-cast per layer at run time
            (diffusers layerwise casting): halves DiT memory, small quality cost.
        vae_tiling: decode/encode the VAE in spatial tiles (bounded memory at 480x720).
        attention_backend: a diffusers attention backend name (:func:`attention_backend_names`), None for
            the default (PyTorch SDPA).
        release_encoders: with ``offload="none"`` on a GPU, keep UMT5 and CLIP on the CPU except
            while they encode (frees ~14 GB of GPU memory during sampling). Offload modes already
            move them off the GPU.
    """

    device: str | None = setting(None, help="cuda, cuda:1, cpu (default: cuda if available)", allow_none=True)
    offload: str = setting("none", help="none: all on the device; model: each model moves in while it runs; group: DiT "
                           "blocks stream in (fits 24 GB); sequential: per layer, slowest", choices=OFFLOAD_MODES)
    fp8_storage: bool = setting(False, help="store DiT weights in fp8 (half the memory, small quality cost), up-cast "
                                "per layer", flag="--fp8")
    vae_tiling: bool = setting(False, help="tiled VAE encode/decode (less memory)")
    attention_backend: str | None = setting(None, help="diffusers attention backend (default: PyTorch SDPA; flash, "
                                            "sage, xformers need their packages)", choices=lambda: (None, *attention_backend_names()),
                                            allow_none=True, flag="--attention")
    release_encoders: bool = False

    def resolved_device(self) -> torch.device:
        """``device``, or CUDA when available and the CPU otherwise."""
        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def validate(self) -> None:
        """Check every setting and the device.

        Raises:
            InputError: an unknown offload mode or attention backend, or CUDA asked for without a GPU.
        """
        validate(self)
        dev = self.resolved_device()
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {self.device!r} asked for CUDA but torch sees no GPU; use device='cpu'.")


def enable_fp8_storage(transformer, compute_dtype: torch.dtype = torch.bfloat16) -> None:
    """Store the DiT's linear/conv weights in float8_e4m3fn, up-cast per layer at run time.

    Uses diffusers layerwise casting (its default skip patterns plus the model's own keep
    embeddings, norms, modulation tables and the output projection in ``compute_dtype``). Weights
    already stored as fp8 (an fp8 checkpoint) are kept; afterwards every module that still holds
    fp8 weights either has a casting hook or is up-cast (:func:`ensure_fp8_consistent`).
    Idempotent; call again after injecting LoRA adapters.
    """
    if not getattr(transformer, "_fourd_fp8", False):
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
        transformer._fourd_fp8 = True
    ensure_fp8_consistent(transformer, compute_dtype)


def ensure_fp8_consistent(module, compute_dtype: torch.dtype) -> int:
    """Make every fp8-holding sub-module usable after later changes (e.g. PEFT adapter injection
    can drop casting hooks): linear/conv layers outside the skip patterns get the layerwise-casting
    hook back (they stay fp8), anything else with fp8 parameters is up-cast to ``compute_dtype``.
    Returns the number of modules fixed."""
    import re

    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN, apply_layerwise_casting_hook

    skip = list(DEFAULT_SKIP_MODULES_PATTERN) + list(getattr(module, "_skip_layerwise_casting_patterns", None) or [])
    skip += list(getattr(module, "_keep_in_fp32_modules", None) or []) + ["lora_"]
    fp8 = (torch.float8_e4m3fn, torch.float8_e5m2)
    fixed = 0
    for name, sub in module.named_modules():
        params = [p for p in sub.parameters(recurse=False) if p.dtype in fp8]
        if not params:
            continue
        reg = getattr(sub, "_diffusers_hook", None)
        if reg is not None and reg.get_hook("layerwise_casting") is not None:
            continue
        if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)) and not any(re.search(p, name) for p in skip):
            for p in sub.parameters(recurse=False):
                p.data = p.data.to(torch.float8_e4m3fn)
            apply_layerwise_casting_hook(sub, torch.float8_e4m3fn, compute_dtype, False)
        else:
            for p in params:
                p.data = p.data.to(compute_dtype)
        fixed += 1
    return fixed


def apply_memory_config(pipe, config: MemoryConfig, compute_dtype: torch.dtype = torch.bfloat16) -> None:
    """Place the pipeline's models according to ``config`` (in place).

    fp8 storage must be applied after a fused LoRA (fusing into fp8 weights loses precision); the
    loaders take care of that order.

    Raises:
        InputError: invalid settings (e.g. an offload mode that needs a GPU on a CPU machine).
    """
    config.validate()
    device = config.resolved_device()
    if config.fp8_storage:
        enable_fp8_storage(pipe.transformer, compute_dtype)
    if config.attention_backend:
        try:
            pipe.transformer.set_attention_backend(config.attention_backend)
        except Exception as exc:
            raise InputError(f"Attention backend {config.attention_backend!r} is not usable here ({brief(exc)}). "
                             "Install its package or leave the backend empty.") from exc
    if config.vae_tiling:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()

    pipe._fourd_release_encoders = bool(config.release_encoders and device.type != "cpu" and config.offload == "none")
    pipe._fourd_device = device if config.offload == "none" else None
    if device.type == "cpu":
        if config.offload != "none":
            raise InputError(f"offload={config.offload!r} moves models to a GPU; on the CPU use offload='none'.")
        pipe.to("cpu")
        return
    if config.offload == "none":
        pipe.to(device)
        if pipe._fourd_release_encoders:
            pipe.text_encoder.to("cpu")
            pipe.image_encoder.to("cpu")
    elif config.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif config.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif config.offload == "group":
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                  offload_type="block_level", num_blocks_per_group=1, use_stream=True,
                                  exclude_modules=["vae"])
        pipe.vae.to(device)
