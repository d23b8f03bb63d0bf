"""The 4DNeX release files: the rank-64 LoRA and the learnable domain embeddings.

Official release (``FrozenBurning/4DNex-Lora``; official 3DTopia/4DNeX @ 1101bc6: ``core/inference/wan.py``, ``inference.py``):

* ``pytorch_lora_weights.safetensors``: keys
  ``transformer.blocks.{i}.attn{1,2}.{to_q,to_k,to_v,to_out.0}.lora_{A,B}.weight``, A ``[r, in]``,
  B ``[out, r]``, r = 64, **no alpha stored**. Training used alpha = 32, so the effective scale is
  alpha / r = 0.5: ``W' = W + 0.5 * strength * B @ A``. (diffusers, ComfyUI and other loaders see
  no alpha and default to 1.0; the official code fuses with ``lora_scale=0.5``.)
* ``learnable_domain_embeddings.pt``: a ``torch.save``'d plain tensor ``[2, inner_dim]``; loaded
  here with ``weights_only=True``. A ``.safetensors`` file with the key
  ``learnable_domain_embeddings`` (or one single tensor) works too, as does a merged transformer
  checkpoint that contains that key.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import WeightsError, brief
from .patches import DOMAIN_EMBEDDING_KEY, apply_fourdnex_patches
from .weights import check_weight_dtypes, load_safetensors, load_tensor_file

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DOMAIN_EMBEDDING_NAMES = ("learnable_domain_embeddings.pt", "learnable_domain_embeddings.safetensors")
#: alpha / rank of the released LoRA (32 / 64).
FOURDNEX_LORA_SCALE = 0.5
ADAPTER_NAME = "fourdnex"

_KEY_RE = re.compile(r"^transformer\.blocks\.(\d+)\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)\.lora_(A|B)\.weight$")


def find_release_files(path: str | Path) -> tuple[Path, Path | None]:
    """Locate the LoRA file and the domain-embedding file from a folder or a LoRA file path.

    Returns:
        ``(lora_file, domain_embeddings_file or None)``.
    Raises:
        WeightsError: nothing found; the message lists what is expected in the folder.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        lora = path / LORA_WEIGHT_NAME
        if not lora.exists():
            cands = sorted(path.glob("*.safetensors"))
            cands = [c for c in cands if "domain" not in c.name]
            if len(cands) != 1:
                raise WeightsError(f"No {LORA_WEIGHT_NAME} in {path}. Put the 4DNeX release files there "
                                   f"({LORA_WEIGHT_NAME} and learnable_domain_embeddings.pt from FrozenBurning/4DNex-Lora).")
            lora = cands[0]
        folder = path
    elif path.exists():
        lora, folder = path, path.parent
    else:
        raise WeightsError(f"4DNeX LoRA not found at {path}.")
    emb = next((folder / n for n in DOMAIN_EMBEDDING_NAMES if (folder / n).exists()), None)
    return lora, emb


def read_fourdnex_lora(path: str | Path, transformer=None, *, allow_fused: bool = False) -> dict[str, torch.Tensor]:
    """Read and validate a 4DNeX LoRA file.

    Accepts the official diffusers key layout (above) and ComfyUI/original layouts
    (``diffusion_model.blocks.N.self_attn.q.lora_A.weight``...), which diffusers converts.

    Args:
        transformer: optional ``WanTransformer3DModel`` to check shapes against.
        allow_fused: accept a fused-attention LoRA (metadata ``format = "fourd.fused_lora"``, same key
            layout; :func:`fourd_core.models.fused_lora.read_fused_lora` reads it through here).
    Returns:
        state dict in diffusers layout (``transformer.blocks...``).
    Raises:
        WeightsError: unreadable file, a fused-attention LoRA (unless ``allow_fused``: it belongs to the
            grid's fused mode), no LoRA keys, inconsistent ranks, or shapes that do not match the
            transformer (the message gives the expected shape).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        check_weight_dtypes(path, "LoRA file")
        if not allow_fused and _safetensors_format(path) == "fourd.fused_lora":
            raise WeightsError(f"{path} is a LoRA for the 4D grid's fused view-time attention (`train fused`), not a "
                               "4DNeX LoRA: give it to the grid's fused_lora input (FourD Grid Model (native) / FourD 4D "
                               "Grid Sampler, mode 'fused') and pick a 4DNeX release here.")
        sd = load_safetensors(path)
    else:
        sd = load_tensor_file(path)
    if not sd:
        raise WeightsError(f"{path} contains no tensors.")
    family = _foreign_lora_family(sd)
    if family:
        raise WeightsError(f"{path} is a LoRA for {family}, not for Wan2.1 (keys such as {next(iter(sd))!r}). "
                           "4DNeX needs its own Wan2.1-I2V LoRA: pytorch_lora_weights.safetensors from "
                           "FrozenBurning/4DNex-Lora.")
    if any(k.startswith("diffusion_model.") for k in sd) or any(k.startswith("lora_unet_") for k in sd):
        from diffusers import WanImageToVideoPipeline

        try:
            sd = WanImageToVideoPipeline.lora_state_dict(sd)
        except Exception as exc:
            raise WeightsError(f"{path} could not be read as a Wan LoRA ({brief(exc)}). "
                               "Use the 4DNeX release file pytorch_lora_weights.safetensors.") from exc
        if isinstance(sd, tuple):
            sd = sd[0]
    sd = {k: v for k, v in sd.items() if "dora_scale" not in k}
    bad = [k for k in sd if not _KEY_RE.match(k)]
    if bad:
        raise WeightsError(f"{path} is not a 4DNeX/Wan LoRA: unexpected keys such as {bad[:3]}. Expected keys like "
                           "'transformer.blocks.0.attn1.to_q.lora_A.weight'.")
    for k, a in sd.items():
        if not k.endswith("lora_A.weight"):
            continue
        b = sd.get(k[: -len("lora_A.weight")] + "lora_B.weight")
        if b is None:
            raise WeightsError(f"{path} has {k} but no matching lora_B tensor: the file is incomplete. Download it again.")
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise WeightsError(f"{path}: {k} has rank {a.shape[0] if a.ndim else '?'} (shape {tuple(a.shape)}) but its "
                               f"lora_B has shape {tuple(b.shape)}; A is [rank, in] and B [out, rank] with the same "
                               "rank. The file is corrupt or was converted wrongly: download the release again.")
    if any(k.endswith("lora_B.weight") and k[: -len("lora_B.weight")] + "lora_A.weight" not in sd for k in sd):
        raise WeightsError(f"{path} has lora_B tensors without their lora_A: the file is incomplete. Download it again.")
    ranks = {v.shape[0] for k, v in sd.items() if k.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise WeightsError(f"{path} mixes LoRA ranks {sorted(ranks)}; the 4DNeX LoRA has rank 64 everywhere.")
    if transformer is not None:
        modules = dict(transformer.named_modules())
        for k, v in sd.items():
            m = _KEY_RE.match(k)
            name = f"blocks.{m.group(1)}.{m.group(2)}.{m.group(3)}"
            mod = modules.get(name)
            if mod is None:
                raise WeightsError(f"LoRA key {k} targets {name}, which this transformer does not have "
                                   f"({transformer.config.num_layers} blocks). Use the LoRA made for this base model.")
            want = (v.shape[0], mod.in_features) if m.group(4) == "A" else (mod.out_features, v.shape[1])
            if tuple(v.shape) != want:
                raise WeightsError(f"LoRA tensor {k} has shape {tuple(v.shape)}, expected {want} for this transformer. "
                                   "The LoRA belongs to another base model (4DNeX needs Wan2.1-I2V-14B).")
    for k, v in sd.items():
        if not torch.isfinite(v.float()).all():
            raise WeightsError(f"LoRA tensor {k} contains NaN/inf: the file is corrupt. Download it again.")
    return sd


def _safetensors_format(path: Path) -> str | None:
    """The ``format`` entry of a ``.safetensors`` header's metadata (None without one)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("format")


_FOREIGN_MARKERS = (
    (("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "lora_te_", "lora_te1_"),
     "Stable Diffusion / SDXL (kohya or diffusers UNet keys)"),
    (("double_blocks", "single_blocks", "transformer_blocks"), "Flux / SD3 / another DiT"),
)


def _foreign_lora_family(sd: dict) -> str | None:
    """Name the model family of a LoRA whose keys clearly belong to another architecture."""
    keys = list(sd)
    if any("blocks." in k and ("attn1" in k or "self_attn" in k) and "transformer_blocks" not in k for k in keys) or \
            any(re.search(r"lora_unet_blocks_\d+_(self|cross)_attn", k) for k in keys):
        return None  # Wan-style names
    for markers, family in _FOREIGN_MARKERS:
        if any(m in k for k in keys for m in markers):
            return family
    return None


def read_domain_embeddings(path: str | Path) -> torch.Tensor:
    """Read the ``[2, inner_dim]`` domain embeddings from ``.pt`` (weights_only) or ``.safetensors``.

    Raises:
        WeightsError: missing/corrupt file, or no tensor of shape ``[2, D]`` in it.
    """
    sd = load_tensor_file(path)
    if DOMAIN_EMBEDDING_KEY in sd:
        t = sd[DOMAIN_EMBEDDING_KEY]
    else:
        cands = [k for k in sd if k.endswith(DOMAIN_EMBEDDING_KEY)] or list(sd)
        if len(cands) != 1:
            raise WeightsError(f"{path} holds {len(sd)} tensors and none is named '{DOMAIN_EMBEDDING_KEY}'.")
        t = sd[cands[0]]
    if t.ndim != 2 or t.shape[0] != 2:
        raise WeightsError(f"Domain embeddings in {path} have shape {tuple(t.shape)}; expected [2, inner_dim].")
    return t.float()


def load_fourdnex_release(pipe, path: str | Path, *, strength: float = 1.0, fuse: bool = True,
                          domain_embeddings: str | Path | None = None,
                          embeddings_tensor: torch.Tensor | None = None) -> dict:
    """Apply the 4DNeX LoRA and domain embeddings to a Wan I2V pipeline (in place).

    The transformer gets the 4DNeX patches (:func:`apply_fourdnex_patches`), the domain embeddings,
    and the LoRA at effective scale ``0.5 * strength`` (alpha/r of the release). ``fuse=True``
    merges it into the weights (no runtime cost; what the official code does) and drops the
    adapter; ``fuse=False`` keeps a PEFT adapter named ``"fourdnex"`` whose scale can be changed.

    Args:
        pipe: a diffusers Wan I2V pipeline (``WanLoraLoaderMixin``).
        path: release folder or LoRA file. domain_embeddings: explicit embeddings file (else found
            beside the LoRA). embeddings_tensor: ``[2, inner_dim]`` embeddings from elsewhere (a
            merged transformer checkpoint), used when no file is given or found.
    Returns:
        info dict: lora file, rank, effective scale, fused flag, domain-embedding source.
    Raises:
        WeightsError: see :func:`read_fourdnex_lora` and :func:`read_domain_embeddings`; also when
            no domain embeddings exist at all: the release was trained with them, and zeros would
            silently give a different model (official 3DTopia/4DNeX @ 1101bc6: ``inference.py``).
    """
    lora_file, emb_file = find_release_files(path)
    emb_file = Path(domain_embeddings) if domain_embeddings is not None else emb_file
    transformer = pipe.transformer
    sd = read_fourdnex_lora(lora_file, transformer)
    rank = next(v.shape[0] for k, v in sd.items() if k.endswith("lora_A.weight"))
    if emb_file is not None:
        emb = read_domain_embeddings(emb_file)
    elif embeddings_tensor is not None:
        emb = embeddings_tensor
    else:
        raise WeightsError(f"No domain embeddings for the 4DNeX LoRA {lora_file}: put "
                           f"{DOMAIN_EMBEDDING_NAMES[0]} (from FrozenBurning/4DNex-Lora) beside it, or give the "
                           "file explicitly (--domain-embeddings / the node's domain_embeddings input).")
    apply_fourdnex_patches(transformer, emb)

    scale = FOURDNEX_LORA_SCALE * float(strength)
    if ADAPTER_NAME in getattr(transformer, "peft_config", {}):
        pipe.delete_adapters(ADAPTER_NAME)
    pipe.load_lora_weights(sd, adapter_name=ADAPTER_NAME)
    if fuse:
        pipe.fuse_lora(components=["transformer"], lora_scale=scale, adapter_names=[ADAPTER_NAME])
        pipe.unload_lora_weights()
    else:
        pipe.set_adapters([ADAPTER_NAME], [scale])
    # A fused LoRA cannot be taken out again: the grid sampler (base model) checks this flag.
    transformer._fourdnex_lora_fused = bool(fuse)
    return {"lora_file": str(lora_file), "rank": int(rank), "scale": scale, "fused": bool(fuse),
            "domain_embeddings": str(emb_file) if emb_file is not None else "from transformer checkpoint"}


def set_fourdnex_strength(pipe, strength: float) -> float:
    """Change the strength of an unfused 4DNeX adapter in place (PEFT ``set_adapters``; no reload).

    Args:
        strength: multiplies the trained scale 0.5 (alpha 32 / rank 64).
    Returns:
        the new effective scale ``0.5 * strength``.
    Raises:
        WeightsError: the LoRA was fused into the weights (a fused LoRA cannot be re-scaled; reload).
    """
    transformer = pipe.transformer
    if ADAPTER_NAME not in getattr(transformer, "peft_config", {}):
        raise WeightsError("The 4DNeX LoRA is fused into the weights (or not loaded); its strength can only change "
                           "by reloading. Load it with fuse off to change the strength in place.")
    scale = FOURDNEX_LORA_SCALE * float(strength)
    pipe.set_adapters([ADAPTER_NAME], [scale])
    return scale
