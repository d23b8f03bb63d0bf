"""A stand-in for ComfyUI core's 3D value classes and socket types, for tests on a machine without a ComfyUI
that has them (0.3.64 and 0.8.0 have neither).

Written for these tests from the fields and behaviour core declares in comfyanonymous/ComfyUI
``comfy_api/latest/_util/geometry_types.py`` at commit 0b5657d47bcf0a024cc391839713922e44839ef8 (``SPLAT``,
``File3D``) and the io type strings of ``comfy_api/latest/_io.py`` (``FILE_3D``, ``FILE_3D_GLB``,
``FILE_3D_PLY``, ``FILE_3D_POINT_CLOUD_ANY``, ``FILE_3D_SPLAT_ANY``, ``SPLAT``); not core's code. It keeps
what the pack's adapters may rely on: the constructor's keyword names, the attributes, File3D's format
handling and its byte accessors.

:func:`install` puts a fake ``comfy_api.latest`` (``IO``, ``Types``) into ``sys.modules``, so the pack
detects the types at import as it would in such a ComfyUI.
"""

from __future__ import annotations

import shutil
import sys
import types
from io import BytesIO
from pathlib import Path

CORE_COMMIT = "0b5657d47bcf0a024cc391839713922e44839ef8"


class SPLAT:
    """Gaussian splats, batch-first: positions/scales ``(B, N, 3)`` (scales linear std), rotations ``(B, N, 4)``
    wxyz, opacities ``(B, N, 1)`` in [0, 1], sh ``(B, N, K, 3)`` (DC at ``[..., 0, :]``), counts ``(B,)`` or None."""

    def __init__(self, positions, scales, rotations, opacities, sh, counts=None):
        self.positions, self.scales, self.rotations = positions, scales, rotations
        self.opacities, self.sh, self.counts = opacities, sh, counts

    def _comfy_cache_tensors(self):
        return self.positions, self.scales, self.rotations, self.opacities, self.sh, self.counts


class File3D:
    """A 3D file: a path (format from its suffix) or a binary stream plus a format string (lower case, no dot)."""

    def __init__(self, source, file_format: str = ""):
        self._source = source
        self._format = file_format or (Path(source).suffix.lstrip(".").lower() if isinstance(source, str) else "")

    @property
    def format(self) -> str:
        return self._format

    @format.setter
    def format(self, value: str) -> None:
        self._format = value.lstrip(".").lower() if value else ""

    @property
    def is_disk_backed(self) -> bool:
        return isinstance(self._source, str)

    def get_bytes(self) -> bytes:
        if isinstance(self._source, str):
            return Path(self._source).read_bytes()
        self._source.seek(0)
        return self._source.read()

    def get_data(self) -> BytesIO:
        return BytesIO(self.get_bytes())

    def save_to(self, path: str) -> str:
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(self._source, str):
            if Path(self._source).resolve() != dest.resolve():
                shutil.copy2(self._source, dest)
        else:
            dest.write_bytes(self.get_bytes())
        return str(dest)


def _io(type_string: str):
    return types.SimpleNamespace(io_type=type_string)


IO = types.SimpleNamespace(File3DAny=_io("FILE_3D"), File3DGLB=_io("FILE_3D_GLB"), File3DPLY=_io("FILE_3D_PLY"),
                           File3DPointCloudAny=_io("FILE_3D_POINT_CLOUD_ANY"),
                           File3DSplatAny=_io("FILE_3D_SPLAT_ANY"), Splat=_io("SPLAT"))
Types = types.SimpleNamespace(File3D=File3D, SPLAT=SPLAT)


def install(monkeypatch) -> None:
    """Make ``from comfy_api.latest import IO, Types`` return this stand-in for the test's duration."""
    latest = types.ModuleType("comfy_api.latest")
    latest.IO, latest.Types = IO, Types
    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.latest", latest)
