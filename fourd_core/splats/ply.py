"""The standard 3DGS PLY file (the reference implementation's ``save_ply`` layout), SH degree 0.

``binary_little_endian 1.0``, one ``vertex`` element with float32 properties, in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

``opacity`` is the logit, ``scale_*`` the natural-log standard deviations, ``rot_*`` the quaternion
(w, x, y, z), ``f_dc_*`` the degree-0 SH coefficients, ``n*`` zeros (kept for readers that expect
them). No ``f_rest_*``: viewers (SuperSplat, gsplat, nerfstudio, ComfyUI) treat the set as SH degree 0.
The reader also accepts files with ``f_rest_*``, double or other extra properties (ignored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..util.atomic import write_bytes_atomic
from .gaussians import Gaussians, Gaussians4D

__all__ = [
    "PLY_PROPERTIES",
    "gaussians_ply_bytes",
    "read_gaussians_ply",
    "write_gaussians_ply",
    "write_gaussians_sequence",
]
PLY_PROPERTIES = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "uint8": "u1",
          "char": "i1", "int8": "i1", "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
          "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4"}


def gaussians_ply_bytes(g: Gaussians) -> bytes:
    """Encode splats as a standard 3DGS PLY (see the module docstring). Non-finite splats are dropped."""
    cols = [g.means, torch.zeros_like(g.means), g.sh0, g.logit_opacities[:, None], g.log_scales, g.quats]
    data = torch.cat([c.detach().float().cpu() for c in cols], 1)
    data = data[torch.isfinite(data).all(1)].numpy().astype("<f4")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(data)}"]
    header += [f"property float {p}" for p in PLY_PROPERTIES] + ["end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + np.ascontiguousarray(data).tobytes()


def write_gaussians_ply(path: str | Path, g: Gaussians) -> Path:
    """Write :func:`gaussians_ply_bytes` atomically. Returns the path."""
    return write_bytes_atomic(path, gaussians_ply_bytes(g))


def read_gaussians_ply(path: str | Path) -> Gaussians:
    """Read a 3DGS PLY (binary little endian, any property types/order; extra properties ignored).

    Raises:
        InputError: missing file, not a PLY, ASCII/big-endian format, or a missing 3DGS property.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"PLY file not found: {path}.")
    raw = path.read_bytes()
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise InputError(f"{path} is not a PLY file.")
    body_start = raw.index(b"\n", end) + 1
    lines = raw[:end].decode("ascii", "replace").splitlines()
    fmt, count, props, in_vertex = None, 0, [], False
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                count = int(parts[2])
            elif props or count == 0:
                break  # elements after vertex do not change its layout
        elif parts[0] == "property" and in_vertex:
            if parts[1] == "list" or parts[1] not in _TYPES:
                raise InputError(f"{path}: unsupported vertex property '{line}'.")
            props.append((parts[2], "<" + _TYPES[parts[1]]))
    if fmt != "binary_little_endian":
        raise InputError(f"{path}: only binary_little_endian Gaussian PLY files are supported (got {fmt}).")
    names = [p for p, _ in props]
    missing = [p for p in PLY_PROPERTIES if p not in names and not p.startswith("n")]
    if missing:
        raise InputError(f"{path} is not a Gaussian-splat PLY: missing properties {missing}.")
    arr = np.frombuffer(raw, dtype=np.dtype(props), count=count, offset=body_start)

    def cols(*keys):
        return torch.from_numpy(np.stack([arr[k].astype(np.float32) for k in keys], 1))

    return Gaussians(cols("x", "y", "z"), cols("scale_0", "scale_1", "scale_2"), cols("rot_0", "rot_1", "rot_2", "rot_3"),
                     cols("opacity")[:, 0].contiguous(), cols("f_dc_0", "f_dc_1", "f_dc_2"))


def write_gaussians_sequence(g4d: Gaussians4D, folder: str | Path, frames: list[int] | None = None,
                             name: str = "frame_{:05d}.ply", progress=None) -> list[Path]:
    """Write one PLY per frame (``frame_#####.ply``; deformable splats at view 0) into ``folder``.

    Args:
        progress: optional ``progress(done, total)`` called after each file.
    Returns:
        The written paths, in frame order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = list(range(g4d.num_frames)) if frames is None else [int(i) for i in frames]
    out = []
    for n, t in enumerate(frames):
        out.append(write_gaussians_ply(folder / name.format(t), g4d.frame(t)))
        if progress is not None:
            progress(n + 1, len(frames))
    return out
