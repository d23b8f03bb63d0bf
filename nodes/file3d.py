"""Typed 3D outputs for core 3D nodes, where the running ComfyUI has them.

2026 builds of ComfyUI have ``comfy_api.latest`` types ``IO.File3DGLB``, ``IO.File3DPointCloudAny``
and the value class ``Types.File3D(source, file_format)`` (what core SaveGLB, Preview3D/Load3D and
PreviewPointCloud take). Older builds (0.3.64) have none of them: the pack's nodes then only return
path strings, which core Preview3D takes. Detected once, when the pack is imported.
"""

from __future__ import annotations

import io
from pathlib import Path


def _detect():
    try:
        from comfy_api.latest import IO, Types
    except Exception:  # no ComfyUI, or a build without the versioned API
        return None
    if not (hasattr(IO, "File3DGLB") and hasattr(IO, "File3DPointCloudAny") and hasattr(Types, "File3D")):
        return None
    return IO, Types


_API = _detect()


def available() -> bool:
    """True when this ComfyUI has the File3D types."""
    return _API is not None


def io_type(name: str, fallback: str) -> str:
    """The socket type string of ``IO.<name>`` (e.g. ``File3DGLB``)."""
    return getattr(getattr(_API[0], name), "io_type", fallback)


def extra_outputs() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``(types, names, tooltips)`` of the typed outputs FourD Export appends (empty on old builds)."""
    if _API is None:
        return (), (), ()
    return ((io_type("File3DGLB", "FILE_3D_GLB"), io_type("File3DPointCloudAny", "FILE_3D_POINT_CLOUD_ANY")),
            ("glb", "point_cloud"),
            ("Frame-0 GLB as a File3D (core SaveGLB, Preview3D).",
             "Frame-0 PLY point cloud as a File3D (core PreviewPointCloud)."))


def file3d(path: str | Path | None, file_format: str):
    """``Types.File3D`` holding the bytes of ``path`` (None when the file was not written)."""
    if _API is None or path is None or not Path(path).is_file():
        return None
    return _API[1].File3D(io.BytesIO(Path(path).read_bytes()), file_format=file_format)
