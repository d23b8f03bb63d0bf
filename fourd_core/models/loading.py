"""Loading Wan2.1-I2V-14B and the 4DNeX release from every format users have.

Base model sources (``ModelSpec.base``):
    * a diffusers folder (``Wan2.1-I2V-14B-480P-Diffusers``, with ``model_index.json``);
    * a Hugging Face hub id, downloaded with ``huggingface_hub`` into ``cache_dir`` / ``local_dir``
      (only the parts that are not overridden by single files);
    * ``"tiny"``: the random-weight preset (:mod:`fourd_core.models.tiny_preset`), no download;
    * ``None`` when all four single files are given (component configs then come from the packaged
      Wan2.1-I2V-14B-480P configs; the tokenizer from ``tokenizer`` or the hub).
Single-file overrides (ComfyUI ``models/`` files or the original Wan release):
    * ``transformer_file``: original / ComfyUI key layout (``blocks.N.self_attn.q.weight``, with or
      without ``model.diffusion_model.``), fp16/bf16/fp32, ``fp8_e4m3fn`` or ComfyUI "scaled fp8";
      also a diffusers-layout single file;
    * ``vae_file`` (``wan_2.1_vae.safetensors``, original layout or diffusers layout);
    * ``text_encoder_file`` (``umt5_xxl_fp16.safetensors`` / fp8: Hugging Face T5 key layout);
    * ``image_encoder_file`` (``clip_vision_h.safetensors``: Hugging Face CLIP vision layout).
The 4DNeX release (``ModelSpec.fourdnex``): a folder, a LoRA file, or a hub id; see
:mod:`fourd_core.models.lora`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch

from ..errors import WeightsError, brief
from ..settings import setting
from .patches import DOMAIN_EMBEDDING_KEY
from .weights import check_safetensors_complete, check_weight_dtypes, load_safetensors

BASE_HUB_ID = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
FOURDNEX_HUB_ID = "FrozenBurning/4DNex-Lora"
PACKAGED_CONFIGS = Path(__file__).parent / "configs" / "wan21_i2v_14b_480p"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclasses.dataclass
class ModelSpec:
    """Where the models come from. See the module docstring for the accepted formats.

    Attributes:
        base: diffusers folder, hub id, ``"tiny"``, or None (all single files given).
        fourdnex: 4DNeX release folder / LoRA file / hub id; None loads plain Wan (no 4DNeX).
        lora_strength: multiplies the release's effective scale 0.5 (alpha 32 / rank 64).
        fuse_lora: merge the LoRA into the weights (official behaviour) or keep an adapter.
        dtype: DiT and UMT5 dtype name (``bfloat16`` official). CLIP and the VAE stay float32.
        cache_dir: hub cache; local_dir / lora_local_dir: download the base / the 4DNeX release into
            these folders instead (ComfyUI's models/diffusers and models/loras).
        local_files_only: never touch the network.
    """

    base: str | None = BASE_HUB_ID
    transformer_file: str | None = None
    vae_file: str | None = None
    text_encoder_file: str | None = None
    image_encoder_file: str | None = None
    tokenizer: str | None = None
    fourdnex: str | None = FOURDNEX_HUB_ID
    domain_embeddings_file: str | None = None
    lora_strength: float = setting(1.0, help="multiplies the release scale 0.5 (alpha 32 / rank 64); 1.0 = as trained",
                                   low=0.0, high=10.0, node_high=2.0, step=0.05)
    fuse_lora: bool = setting(True, help="merge the LoRA into the weights (official) instead of keeping an adapter",
                              flag="--no-fuse-lora")
    dtype: str = setting("bfloat16", help="DiT and UMT5 dtype (CLIP and the VAE stay float32)", choices=tuple(DTYPES))
    cache_dir: str | None = None
    local_dir: str | None = None
    lora_local_dir: str | None = None
    local_files_only: bool = setting(False, help="never use the network", flag="--offline")

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a torch dtype. Raises :class:`WeightsError` for an unknown name."""
        if self.dtype not in DTYPES:
            raise WeightsError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}.")
        return DTYPES[self.dtype]


@contextlib.contextmanager
def _loading(what: str, where):
    """Turn a library's raw error while loading ``what`` from ``where`` into a WeightsError naming the fix."""
    try:
        yield
    except (WeightsError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise WeightsError(f"Could not load the {what} from {where} ({brief(exc)}). "
                           "The files may be incomplete or from another model: download them again "
                           f"(Wan2.1-I2V-14B-480P-Diffusers layout).") from exc


def check_weight_files(folder: Path | None, spec: ModelSpec) -> None:
    """Check every safetensors file that will be loaded (folder components and single files) from
    its header, before any model is built (:func:`fourd_core.models.weights.check_safetensors_complete`,
    :func:`~fourd_core.models.weights.check_weight_dtypes`).

    Raises:
        WeightsError: a truncated or corrupt file, named with the fix.
    """
    files = [Path(p).expanduser() for p in (spec.transformer_file, spec.vae_file, spec.text_encoder_file,
                                            spec.image_encoder_file) if p]
    if folder is not None:
        for sub in ("transformer", "vae", "text_encoder", "image_encoder"):
            files += sorted((folder / sub).glob("*.safetensors"))
    for f in files:
        if f.suffix == ".safetensors":
            check_safetensors_complete(f)
            check_weight_dtypes(f)


def is_hub_id(s: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    p = Path(s).expanduser()
    return (not p.exists()) and s.count("/") == 1 and not s.startswith((".", "/", "~")) and "\\" not in s


def hub_download(repo_id: str, *, cache_dir=None, local_dir=None, local_files_only=False,
                 allow_patterns=None, ignore_patterns=None) -> Path:
    """Download (or find in the cache) a hub snapshot; returns its folder.

    Raises:
        WeightsError: offline and not cached, unknown repo, or any network failure; the message says
            how to get the files by hand.
    """
    from huggingface_hub import snapshot_download

    if local_dir is not None:
        local_dir = str(Path(local_dir).expanduser() / repo_id.split("/")[-1])
    try:
        path = snapshot_download(repo_id, cache_dir=cache_dir, local_dir=local_dir, local_files_only=local_files_only,
                                 allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
    except Exception as exc:
        name = type(exc).__name__
        offline = local_files_only or "Offline" in name or "LocalEntryNotFound" in name or "Connect" in name
        how = (f"This machine cannot download it{' (offline mode)' if offline else ''}. On a machine with internet run "
               f"`hf download {repo_id} --local-dir <folder>` and pass that folder instead of the hub id.")
        raise WeightsError(f"Could not get '{repo_id}' from the Hugging Face hub ({brief(exc)}). {how}") from exc
    return Path(path)


def _config(folder: Path | None, sub: str, packaged: str) -> dict:
    if folder is not None:
        for name in ("config.json", "scheduler_config.json", "preprocessor_config.json"):
            p = folder / sub / name
            if p.exists():
                return json.loads(p.read_text())
    return json.loads((PACKAGED_CONFIGS / packaged).read_text())


def _is_original_wan_layout(keys) -> bool:
    return any(k.startswith("model.diffusion_model.") or ".self_attn." in k or k.startswith("head.") for k in keys)


def _keep_fp32(model, state_dict: dict) -> None:
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for k, v in state_dict.items():
        if v.is_floating_point() and any(m in k.split(".") for m in keep):
            state_dict[k] = v.float()


def _load_into(model_cls_or_factory, config, state_dict: dict, what: str, path: Path):
    """Instantiate on the meta device and assign ``state_dict`` with strict key and shape checks."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = model_cls_or_factory(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not match a {what}: {len(missing)} missing tensors (e.g. {missing[:3]}) and "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}). Is it the right file for this slot?")
    for k, v in expected.items():
        if tuple(v.shape) != tuple(state_dict[k].shape):
            hint = ""
            if k == "patch_embedding.weight" and state_dict[k].shape[1] == 16:
                hint = " This is a text-to-video Wan model (16 input channels); 4DNeX needs Wan2.1-I2V-14B (36)."
            raise WeightsError(f"{path}: tensor {k} has shape {tuple(state_dict[k].shape)}, the {what} expects "
                               f"{tuple(v.shape)}.{hint}")
    model.load_state_dict(state_dict, assign=True, strict=True)
    return model


def load_transformer_file(path: str | Path, config: dict, dtype: torch.dtype, *, keep_fp8: bool = False):
    """Load a single-file Wan transformer (original/ComfyUI or diffusers key layout).

    Args:
        config: ``WanTransformer3DModel`` config dict.
        keep_fp8: keep float8 weights as stored (for fp8 weight storage) instead of up-casting.
    Returns:
        ``(model, domain_embeddings or None)``; merged 4DNeX checkpoints carry
        ``learnable_domain_embeddings``, which is returned separately.
    Raises:
        WeightsError: unreadable file, wrong model (key or shape mismatch, e.g. a T2V model).
    """
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    path = Path(path)
    sd = load_safetensors(path, dtype=dtype, keep_fp8=keep_fp8)
    emb = None
    for k in [k for k in sd if k.endswith(DOMAIN_EMBEDDING_KEY)]:
        emb = sd.pop(k).float()
    if _is_original_wan_layout(sd):
        sd = convert_wan_transformer_to_diffusers(sd)
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    _keep_fp32(WanTransformer3DModel, sd)
    model = _load_into(lambda c: WanTransformer3DModel.from_config(c), cfg, sd, "Wan transformer", path)
    return model, emb


def load_vae_file(path: str | Path, config: dict):
    """Load a single-file Wan VAE (original ``Wan2.1_VAE`` / ComfyUI layout, or diffusers layout) in float32.

    Raises:
        WeightsError: unreadable file or key/shape mismatch.
    """
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    path = Path(path)
    sd = load_safetensors(path, dtype=torch.float32)
    if "decoder.middle.0.residual.0.gamma" in sd:
        sd = convert_wan_vae_to_diffusers(sd)
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    return _load_into(lambda c: AutoencoderKLWan.from_config(c), cfg, sd, "Wan VAE", path)


def load_text_encoder_file(path: str | Path, config: dict, dtype: torch.dtype):
    """Load a single-file UMT5 encoder (ComfyUI ``umt5_xxl_*.safetensors``, HF T5 key layout).

    Raises:
        WeightsError: unreadable file or key/shape mismatch.
    """
    from transformers import UMT5Config, UMT5EncoderModel

    path = Path(path)
    sd = load_safetensors(path, dtype=dtype)
    sd = {k: v for k, v in sd.items() if not k.startswith("decoder.") and k != "lm_head.weight"}
    if "shared.weight" in sd and "encoder.embed_tokens.weight" not in sd:
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    if "encoder.embed_tokens.weight" in sd and "shared.weight" not in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    cfg = UMT5Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    model = _load_into(lambda c: UMT5EncoderModel(c), cfg, sd, "UMT5 text encoder", path)
    return model.eval()


def load_image_encoder_file(path: str | Path, config: dict):
    """Load a single-file CLIP vision encoder (ComfyUI ``clip_vision_h.safetensors``) in float32.

    The projection head (``visual_projection``) is not used by Wan and is dropped.

    Raises:
        WeightsError: unreadable file or key/shape mismatch.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    path = Path(path)
    sd = load_safetensors(path, dtype=torch.float32)
    sd = {k: v for k, v in sd.items() if not k.startswith(("visual_projection", "text_model", "text_projection",
                                                             "logit_scale"))}
    cfg = CLIPVisionConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    from accelerate import init_empty_weights

    with init_empty_weights():  # key prefix differs between transformers versions ("vision_model." or none)
        prefixed = any(k.startswith("vision_model.") for k in CLIPVisionModel(cfg).state_dict())
    sd = {k.removeprefix("vision_model."): v for k, v in sd.items()}
    if prefixed:
        sd = {"vision_model." + k: v for k, v in sd.items()}
    return _load_into(lambda c: CLIPVisionModel(c), cfg, sd, "CLIP vision encoder", path).eval()


def resolve_base(spec: ModelSpec) -> tuple[Path | None, Path | None]:
    """Resolve ``spec.base`` (and the tiny preset's own release) to local folders.

    Returns:
        ``(base_folder or None, default_release_folder or None)``.
    Raises:
        WeightsError: a path that is not a diffusers folder, or a failed download.
    """
    if spec.base is None:
        return None, None
    if spec.base == "tiny":
        from .tiny_preset import ensure_tiny_preset

        root = ensure_tiny_preset(spec.cache_dir)
        return root / "base", root / "lora"
    p = Path(spec.base).expanduser()
    if p.exists():
        if not (p / "model_index.json").exists():
            raise WeightsError(f"{p} is not a diffusers model folder (no model_index.json). Point to the "
                               f"'Wan2.1-I2V-14B-480P-Diffusers' folder, or use single-file checkpoints.")
        return p, None
    if not is_hub_id(spec.base):
        raise WeightsError(f"Base model {spec.base!r} is neither an existing folder nor a hub id like '{BASE_HUB_ID}'.")
    ignore = []
    for sub, override in (("transformer", spec.transformer_file), ("vae", spec.vae_file),
                          ("text_encoder", spec.text_encoder_file), ("image_encoder", spec.image_encoder_file)):
        if override:
            ignore += [f"{sub}/*.safetensors", f"{sub}/*.bin", f"{sub}/*.pth"]
    return hub_download(spec.base, cache_dir=spec.cache_dir, local_dir=spec.local_dir,
                        local_files_only=spec.local_files_only, ignore_patterns=ignore or None), None
