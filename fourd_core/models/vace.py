"""Wan2.1 VACE for the diffusers path of the novel-view refinement (diffusers ``WanVACEPipeline``).

Sources (``--vace``):
    * a diffusers folder (``model_index.json`` of ``WanVACEPipeline``: ``Wan2.1-VACE-1.3B-diffusers``
      or ``Wan2.1-VACE-14B-diffusers``);
    * a Hugging Face hub id (downloaded with ``huggingface_hub``; a clear error offline);
    * ``"tiny"``: a random toy VACE model (:func:`ensure_tiny_vace`), no download, meaningless output.

Everything checkable is checked before a weight is read (:func:`check_vace_folder`): the folder's
pipeline class and transformer class (another Wan family, e.g. the I2V model, is refused by name),
the components that must be there, and every ``.safetensors`` file's header against its size (a
truncated download).

The tiny model is the real architecture (``WanVACETransformer3DModel``: a text-to-video Wan DiT with
VACE blocks, diffusers 0.42.1 ``models/transformers/transformer_wan_vace.py``) at toy width with the
tiny preset's VAE, UMT5 and tokenizer (:mod:`fourd_core.models.tiny_preset`), saved by
``WanVACEPipeline.save_pretrained`` and loaded back through :func:`load_vace_pipeline` like a
downloaded one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import WeightsError
from ..util.locks import build_once
from .loading import DTYPES, hub_download, is_hub_id
from .tiny_preset import default_cache_dir
from .weights import check_safetensors_complete

VACE_HUB_IDS = ("Wan-AI/Wan2.1-VACE-1.3B-diffusers", "Wan-AI/Wan2.1-VACE-14B-diffusers")
VACE_PIPELINE = "WanVACEPipeline"
VACE_TRANSFORMER = "WanVACETransformer3DModel"
#: components WanVACEPipeline needs (transformer_2 is Wan2.2's optional second expert)
VACE_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
TINY_VACE_VERSION = 1
TINY_VACE_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=32, ffn_dim=48, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024, vace_layers=[0, 1],
    vace_in_channels=96,
)
_FAMILIES = {
    "WanImageToVideoPipeline": "Wan2.1/2.2 image-to-video (I2V, e.g. the 4DNeX base model)",
    "WanPipeline": "Wan text-to-video (T2V)",
    "WanVideoToVideoPipeline": "Wan video-to-video",
    "WanAnimatePipeline": "Wan-Animate",
}


def _hint() -> str:
    return f"Use a Wan VACE model: {VACE_HUB_IDS[0]} (1.3B) or {VACE_HUB_IDS[1]} (14B), or a folder downloaded from one."


def check_vace_folder(folder: str | Path) -> Path:
    """Check a diffusers Wan VACE folder without loading a weight.

    Raises:
        WeightsError: no ``model_index.json``; a pipeline or transformer of another model family
            (named); a missing component; a truncated or corrupt ``.safetensors`` file. Each names the fix.
    """
    folder = Path(folder).expanduser()
    index = folder / "model_index.json"
    if not index.is_file():
        raise WeightsError(f"{folder} is not a diffusers model folder (no model_index.json). {_hint()}")
    try:
        doc = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{index} is not readable JSON ({exc}); download the model again. {_hint()}") from exc
    cls = doc.get("_class_name")
    if cls != VACE_PIPELINE:
        family = _FAMILIES.get(cls, cls)
        raise WeightsError(f"{folder} is a {family} model ({cls}), not Wan VACE ({VACE_PIPELINE}). {_hint()}")
    for comp in VACE_COMPONENTS:
        entry = doc.get(comp)
        if not (isinstance(entry, list) and entry and entry[0] is not None) or not (folder / comp).is_dir():
            raise WeightsError(f"{folder} has no '{comp}' component; the download is incomplete. {_hint()}")
    cfg = folder / "transformer" / "config.json"
    try:
        tcls = json.loads(cfg.read_text()).get("_class_name")
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{cfg} is missing or unreadable ({exc}); download the model again.") from exc
    if tcls != VACE_TRANSFORMER:
        raise WeightsError(f"{folder}/transformer is a {tcls}, not a {VACE_TRANSFORMER}. {_hint()}")
    for sub in ("transformer", "vae", "text_encoder"):
        files = sorted((folder / sub).glob("*.safetensors"))
        if not files and not list((folder / sub).glob("*.bin")):
            raise WeightsError(f"{folder}/{sub} has no weight files; the download is incomplete. {_hint()}")
        for f in files:
            check_safetensors_complete(f)
    return folder


def resolve_vace(source: str, *, cache_dir: str | None = None, local_files_only: bool = False) -> Path:
    """A checked local VACE folder for ``source`` (folder, hub id or ``"tiny"``).

    Raises:
        WeightsError: see :func:`check_vace_folder`; a source that is neither a folder nor a hub id;
            a failed or offline download (the message says how to get the files by hand).
    """
    if not source or not str(source).strip():
        raise WeightsError(f"No VACE model given. {_hint()} ('tiny' runs a random toy model.)")
    source = str(source).strip()
    if source == "tiny":
        return check_vace_folder(ensure_tiny_vace(cache_dir))
    p = Path(source).expanduser()
    if p.exists():
        return check_vace_folder(p)
    if not is_hub_id(source):
        raise WeightsError(f"VACE model {source!r} is neither an existing folder nor a hub id. {_hint()}")
    folder = hub_download(source, cache_dir=cache_dir, local_files_only=local_files_only)
    return check_vace_folder(folder)


def load_vace_pipeline(folder: str | Path, *, dtype: str = "bfloat16", device: str | torch.device = "cpu",
                       offload: str = "none", shift: float | None = None):
    """Load a checked VACE folder as diffusers ``WanVACEPipeline`` (VAE in float32).

    Args:
        dtype: transformer / text encoder dtype name (``bfloat16``, ``float16``, ``float32``).
        offload: ``"none"`` (everything on ``device``) or ``"model"`` (diffusers model CPU offload).
        shift: flow shift of the UniPC / flow-matching scheduler (3.0 for 480p, 5.0 for 720p); None
            keeps the folder's.

    Raises:
        WeightsError: a bad dtype/offload name or a library error while loading (files from another model).
    """
    from diffusers import AutoencoderKLWan, WanVACEPipeline

    if dtype not in DTYPES:
        raise WeightsError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    if offload not in ("none", "model"):
        raise WeightsError(f"offload must be 'none' or 'model', got {offload!r}.")
    folder = Path(folder)
    try:
        vae = AutoencoderKLWan.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
        pipe = WanVACEPipeline.from_pretrained(folder, vae=vae, torch_dtype=DTYPES[dtype])
    except (WeightsError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise WeightsError(f"Could not load the VACE model from {folder} ({type(exc).__name__}: {str(exc)[:300]}). "
                           f"The files may be incomplete or from another model. {_hint()}") from exc
    if shift is not None and "flow_shift" in pipe.scheduler.config:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=float(shift))
    pipe.set_progress_bar_config(disable=True)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def save_tiny_vace(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny random VACE model into ``folder`` (a diffusers ``WanVACEPipeline`` folder)."""
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    from .tiny_preset import build_tiny_components, save_on_this_rank

    comps = build_tiny_components(seed)
    torch.manual_seed(seed + 10)
    transformer = WanVACETransformer3DModel(**TINY_VACE_TRANSFORMER)
    with torch.no_grad():  # lively random weights (diffusers zero-inits the VACE projections)
        for p in transformer.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.2)
    pipe = WanVACEPipeline(tokenizer=comps["tokenizer"], text_encoder=comps["text_encoder"], vae=comps["vae"],
                           scheduler=comps["scheduler"], transformer=transformer)
    folder = Path(folder)
    save_on_this_rank(pipe)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "README.txt").write_text("fourd tiny random-weight Wan VACE model: outputs are meaningless. "
                                       f"version {TINY_VACE_VERSION}, seed {seed}\n")
    return folder


def _tiny_vace_complete(folder: Path) -> bool:
    """The diffusers folder :func:`save_tiny_vace` writes, its README last."""
    from .tiny_preset import has_component_weights

    return (folder / "model_index.json").is_file() and (folder / "README.txt").is_file() and \
        has_component_weights(folder, ("transformer", "vae", "text_encoder"))


def ensure_tiny_vace(cache_dir: str | Path | None = None) -> Path:
    """Build the tiny VACE model once under ``cache_dir`` (default ``$FOURD_CACHE``) and return its folder;
    safe with several processes on one empty cache (:func:`fourd_core.util.locks.build_once`)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_once(root / f"tiny-vace-v{TINY_VACE_VERSION}", save_tiny_vace, _tiny_vace_complete,
                      what="tiny VACE model")
