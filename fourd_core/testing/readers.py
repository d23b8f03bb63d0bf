"""Readers of the pack's own output files, for tests and scripts (production code only writes these):
PLY point clouds, 16-bit depth PNGs and the 4D viewer's ``.fourd4d`` assets."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, brief
from ..io.viewer_asset import MAGIC, POINT_FIELDS, SPLAT_FIELDS, VERSION


def read_ply(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a PLY point cloud: ``(points [N, 3] float32, colors [N, 3] float32 in [0, 1])``.

    Accepts ASCII and binary files with ``x y z`` and optional ``red green blue`` (uchar, or float
    in [0, 1]); missing colours read as white.

    Raises:
        InputError: missing file, not a PLY, or no ``vertex`` element with x, y, z.
    """
    from plyfile import PlyData

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"PLY file not found: {path}.")
    try:
        v = PlyData.read(str(path))["vertex"].data
        pts = np.stack([v["x"], v["y"], v["z"]], axis=-1).astype(np.float32)
    except Exception as exc:
        raise InputError(f"{path} is not a readable PLY point cloud with x, y, z vertices ({brief(exc)}).") from exc
    names = v.dtype.names or ()
    if all(k in names for k in ("red", "green", "blue")):
        col = np.stack([v["red"], v["green"], v["blue"]], axis=-1)
        col = col.astype(np.float32) / (255.0 if col.dtype.kind in "ui" else 1.0)
    else:
        col = np.ones_like(pts)
    return torch.from_numpy(pts), torch.from_numpy(col)


def read_depth_png(path: str | Path, scale: float) -> torch.Tensor:
    """Inverse of :func:`fourd_core.io.cameras.write_depth_png`: ``[H, W]`` float32 depth (0 where invalid)."""
    import imageio.v2 as imageio

    return torch.from_numpy(imageio.imread(str(path)).astype(np.float32) / scale)


def _header(data: bytes) -> tuple[dict, memoryview]:
    if data[:4] != MAGIC:
        raise ValueError("not a FD4D viewer asset")
    version, hlen = struct.unpack_from("<II", data, 4)
    if version != VERSION:
        raise ValueError(f"FD4D version {version}; this reader reads version {VERSION}")
    return json.loads(data[12:12 + hlen]), memoryview(data)[12 + hlen:]


def read_layer(data: bytes, layer: str) -> dict[str, list[np.ndarray]] | None:
    """One layer of an asset: ``{field: [per-frame array]}`` (``"points"``: positions ``[n, 3]`` float32,
    colors ``[n, 3]`` uint8; ``"splats"``: positions, colors, scales ``[n, 3]``, rotations ``[n, 4]``,
    opacities ``[n]``, all float32), or None when the asset has no such layer.

    Raises:
        ValueError: not a version-2 FD4D asset, or an unknown layer name.
    """
    if layer not in ("points", "splats"):
        raise ValueError(f"unknown layer {layer!r}: 'points' or 'splats'")
    header, body = _header(data)
    spec = header.get(layer)
    if spec is None:
        return None
    fields = POINT_FIELDS if layer == "points" else SPLAT_FIELDS
    out = {}
    for key, (dtype, width) in fields.items():
        arrays = [np.frombuffer(body, dtype=dtype, count=n * width, offset=o).reshape((n, width) if width > 1 else (n,))
                  for n, o in zip(spec["counts"], spec[key])]
        out[key] = arrays
    return out


def read_viewer_asset(data: bytes) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    """Decode an asset: ``(header, positions per frame [n, 3] float32, colours per frame [n, 3])`` of its
    points layer, or of its splats layer when it has no points (colours then float32 in [0, 1+]).

    Raises:
        ValueError: not a version-2 FD4D asset.
    """
    header, _ = _header(data)
    layer = read_layer(data, "points" if header.get("points") else "splats")
    if layer is None:
        return header, [], []
    return header, layer["positions"], layer["colors"]
