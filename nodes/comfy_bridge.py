"""The pack's bridge to ComfyUI's services: model folders (``folder_paths``), the output and temp folders,
progress bars, interrupts and the memory manager, all imported lazily so the pack imports and its nodes
run without ComfyUI (tests, other hosts).

The rule (enforced by ``tests/test_layers.py``): ``fourd_core`` never imports ComfyUI; in ``nodes/``,
``comfy``, ``comfy_api`` and ``folder_paths`` are imported only inside functions, never at module level.
Nodes that patch a core MODEL (``nodes/native/``) and the core-type adapters (``nodes/file3d.py``) import
the ComfyUI classes they need there, at call time; everything else goes through this module."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..fourd_core.errors import CancelledError, InputError, WeightsError

TINY_CHOICE = "tiny (random weights, no download)"
HUB_BASE_CHOICE = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (download)"
HUB_LORA_CHOICE = "FrozenBurning/4DNex-Lora (download)"
FROM_BASE = "(from base model)"
NONE = "(none)"


def _folder_paths():
    try:
        import folder_paths  # noqa: PLC0415 - ComfyUI module, only present inside ComfyUI
    except ImportError:
        return None
    return folder_paths


def comfy_available() -> bool:
    return _folder_paths() is not None


def file_list(kind: str) -> list[str]:
    """Files of a ComfyUI model folder kind (``diffusion_models``, ``loras``...); [] without ComfyUI."""
    fp = _folder_paths()
    if fp is None:
        return []
    try:
        return sorted(fp.get_filename_list(kind))
    except KeyError:
        return []


def model_folders(kind: str) -> list[Path]:
    fp = _folder_paths()
    if fp is None:
        return []
    try:
        return [Path(p) for p in fp.get_folder_paths(kind)]
    except KeyError:
        return []


def subfolders_with(kind: str, marker: str | None = None, pattern: str | None = None) -> list[str]:
    """Names of sub-folders of a model folder kind that contain ``marker`` (or a file matching ``pattern``)."""
    out = []
    for root in model_folders(kind):
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if d.is_dir() and ((marker and (d / marker).exists()) or (pattern and any(d.glob(pattern)))):
                out.append(d.name)
    return out


def is_domain_embeddings(name: str) -> bool:
    """Whether a file in models/loras/ is 4DNeX's learnable domain embeddings (``learnable_domain_embeddings.pt`` /
    ``.safetensors``, or any name with "domain_embedding"), which is not a LoRA."""
    return "domain_embedding" in Path(name).name.lower()


def lora_choices() -> list[str]:
    """What a LoRA list offers from models/loras/: 4DNeX release folders (holding a ``*lora*.safetensors``) and
    ``.safetensors`` LoRA files, never the release's domain-embeddings file."""
    files = [f for f in file_list("loras") if f.lower().endswith(".safetensors") and not is_domain_embeddings(f)]
    return subfolders_with("loras", pattern="*lora*.safetensors") + files


def domain_embedding_choices() -> list[str]:
    """The domain-embeddings files in models/loras/ (``.pt`` or ``.safetensors``)."""
    return [f for f in file_list("loras") if is_domain_embeddings(f) and f.lower().endswith((".pt", ".safetensors"))]


def resolve_model(kind: str, name: str) -> str:
    """Full path of ``name`` in a ComfyUI model folder kind, or a clear error naming the folder."""
    p = Path(name).expanduser()
    if p.is_absolute() and p.exists():
        return str(p)
    for root in model_folders(kind):
        cand = root / name
        if cand.exists():
            return str(cand)
    fp = _folder_paths()
    if fp is not None:
        full = fp.get_full_path(kind, name)
        if full:
            return full
    where = ", ".join(str(r) for r in model_folders(kind)) or f"ComfyUI/models/{kind}/"
    raise WeightsError(f"Model file '{name}' not found. Put it in {where} (then refresh the node's list).")


def download_dir(kind: str) -> str | None:
    """First folder of a model kind, where hub downloads go (None without ComfyUI)."""
    folders = model_folders(kind)
    return str(folders[0]) if folders else None


def output_directory() -> Path:
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_output_directory())
    return Path(os.environ.get("FOURD_OUTPUT_DIR", "output")).resolve()


def temp_directory() -> Path:
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_temp_directory())
    return output_directory().parent / "temp"


#: Longest file/folder name made from a prefix; the rest of the file system's 255 bytes is left for
#: the number (``_00001``), suffixes and hidden temporary names (``.fourd-tmp-<pid>-...``).
MAX_NAME_BYTES = 160


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot name an output (None when it can): it must be relative, stay inside the
    output folder, and each part must fit in :data:`MAX_NAME_BYTES` bytes."""
    p = (prefix or "").strip().replace("\\", "/")
    if not p or p.startswith("/") or re.match(r"^[A-Za-z]:", p) or any(
            part in ("..", "") for part in p.split("/")[:-1]) or p.split("/")[-1] in ("", "..", "."):
        return (f"filename_prefix '{prefix}' must be a relative name inside the output folder, "
                "e.g. 'fourd/my_scene' (no '..', no absolute paths).")
    long = [part for part in p.split("/") if len(part.encode("utf-8")) > MAX_NAME_BYTES]
    if long:
        return (f"filename_prefix has a part of {len(long[0].encode('utf-8'))} bytes ('{long[0][:24]}...'); "
                f"file systems allow 255 and the pack needs room for numbers and suffixes: keep each part of "
                f"the prefix under {MAX_NAME_BYTES} characters.")
    return None


def safe_output_folder(prefix: str, base: Path | None = None) -> tuple[Path, str]:
    """A new numbered name ``<prefix>_NNNNN`` inside the output directory (callers use it as a folder,
    or add a suffix for a single file); the number is one past any folder or file already using it.

    The prefix may contain sub-folders (``fourd/park``) but can never leave the output directory:
    absolute paths, ``..`` and drive letters are refused with a clear error.

    Nothing is created here: writers create the folder (and its parents) when they write, so a
    rejected or failed node leaves the output directory unchanged.

    Returns:
        ``(absolute folder, path relative to the output directory with forward slashes)``.
    Raises:
        InputError: see :func:`prefix_problem`.
    """
    base = (base or output_directory()).resolve()
    prefix = (prefix or "fourd").strip().replace("\\", "/")
    problem = prefix_problem(prefix)
    if problem:
        raise InputError(problem)
    stem = re.sub(r"[^\w.\-/ ]", "_", prefix)
    target_dir = (base / stem).parent.resolve()
    if os.path.commonpath([str(base), str(target_dir)]) != str(base):
        raise InputError(f"filename_prefix '{prefix}' points outside the output folder.")
    name = Path(stem).name
    # numbers already used by folders or files (``name_00003``, ``name_00003.safetensors``...)
    taken = [int(m.group(1)) for d in (target_dir.iterdir() if target_dir.is_dir() else ())
             if (m := re.fullmatch(re.escape(name) + r"_(\d{5})(\..*)?", d.name))]
    folder = target_dir / f"{name}_{(max(taken) + 1 if taken else 1):05d}"
    return folder, folder.relative_to(base).as_posix()


def preview_asset_ui(prefix: str, data: bytes) -> dict:
    """Write a 4D viewer asset (``.fourd4d`` bytes) under a new numbered name in the temp folder and
    return the node's ``{"ui": ...}`` entry the web widget (``web/fourd``) reads."""
    import posixpath

    from ..fourd_core.util.atomic import write_bytes_atomic

    folder, rel = safe_output_folder(prefix, base=temp_directory())
    name = folder.name + ".fourd4d"
    write_bytes_atomic(folder.parent / name, data)
    return {"ui": {"fourd_scene": [{"filename": name, "subfolder": posixpath.dirname(rel), "type": "temp"}]}}


def free_memory() -> None:
    """Ask ComfyUI to unload its models and empty the CUDA cache (no-op without ComfyUI)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.unload_all_models()
    mm.soft_empty_cache()


def soft_empty_cache() -> None:
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.soft_empty_cache()


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Stop (``/interrupt``)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()


class Progress:
    """``comfy.utils.ProgressBar`` per step with an optional preview image, plus the interrupt check.

    Without ComfyUI it only honours ``cancel`` (a zero-argument callable) for tests/other hosts.
    """

    def __init__(self, total: int, cancel=None):
        self.total = total
        self.cancel = cancel
        try:
            import comfy.utils

            self.bar = comfy.utils.ProgressBar(total)
        except ImportError:
            self.bar = None

    def __call__(self, step: int, total: int | None = None, preview=None) -> None:
        check_interrupt()
        if self.cancel is not None and self.cancel():
            raise CancelledError(f"Cancelled at step {step}/{total or self.total}.")
        if self.bar is not None:
            self.bar.update_absolute(step, total or self.total, ("JPEG", preview, 512) if preview is not None else None)
