"""ComfyUI model folders of the native path: the tiny native demo files as extra folders (so core loaders
list them) and the ``fourd_sync`` folder kind for grid sync weights."""

from __future__ import annotations

import logging
import os

from ...fourd_core.errors import FourDError
from ...fourd_core.native.tiny_wan import ensure_native_tiny
from ...fourd_core.native.tiny_vace import ensure_native_tiny_vace
from .. import comfy_bridge as cb

log = logging.getLogger(__name__)
#: ComfyUI model folder kind of trained grid sync layers (``models/fourd_sync/``).
SYNC_FOLDER = "fourd_sync"


def register_sync_folder() -> bool:
    """Inside ComfyUI: the ``fourd_sync`` model folder kind (``models/fourd_sync/``, ``.safetensors``; also
    settable in extra_model_paths.yaml) for trained grid sync layers. False without ComfyUI."""
    fp = cb._folder_paths()
    models_dir = getattr(fp, "models_dir", None)
    if models_dir is None or not hasattr(fp, "add_model_folder_path"):
        return False
    fp.add_model_folder_path(SYNC_FOLDER, os.path.join(models_dir, SYNC_FOLDER), is_default=True)
    entry = getattr(fp, "folder_names_and_paths", {}).get(SYNC_FOLDER)
    if entry is not None:
        entry[1].add(".safetensors")
    return True


def register_tiny_model_folders() -> bool:
    """Inside ComfyUI: write the tiny native files once (``$FOURD_CACHE``, ~22 MB, and the ~21 MB tiny
    VACE model) and add their folders to ``diffusion_models`` and ``loras`` so core loaders list them.
    False without ComfyUI."""
    fp = cb._folder_paths()
    if fp is None or not hasattr(fp, "add_model_folder_path"):
        return False
    try:
        root = ensure_native_tiny()
        vace_root = ensure_native_tiny_vace()
    except (OSError, FourDError) as exc:  # read-only or full cache: the demo is then unavailable, the pack still loads
        log.warning("FourD: could not write the tiny native demo weights (%s); set FOURD_CACHE to a writable folder.", exc)
        return False
    fp.add_model_folder_path("diffusion_models", str(root / "diffusion_models"))
    fp.add_model_folder_path("diffusion_models", str(vace_root / "diffusion_models"))
    fp.add_model_folder_path("loras", str(root / "loras"))
    return True
