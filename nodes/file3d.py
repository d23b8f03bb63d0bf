"""Core ComfyUI 3D types where the running ComfyUI has them: the pack's one home for them.

2026 builds of ComfyUI have, in ``comfy_api.latest``:

* ``Types.File3D(source, file_format)``: a 3D file held as a path or a binary stream, with the socket types
  ``IO.File3DAny`` (``FILE_3D``), ``IO.File3DGLB``, ``IO.File3DPLY``, ``IO.File3DPointCloudAny`` and
  ``IO.File3DSplatAny`` (what core SaveGLB, Preview3D, PreviewPointCloud, PreviewGaussianSplat and the save
  nodes take);
* ``Types.SPLAT(positions, scales, rotations, opacities, sh, counts)`` with the socket type ``IO.Splat``
  (``SPLAT``): a batch of Gaussian splats in render-ready form (comfyanonymous/ComfyUI
  ``comfy_api/latest/_util/geometry_types.py`` at 0b5657d47bcf0a024cc391839713922e44839ef8): positions
  ``(B, N, 3)`` world, scales ``(B, N, 3)`` linear standard deviations, rotations ``(B, N, 4)`` wxyz
  quaternions, opacities ``(B, N, 1)`` in [0, 1], sh ``(B, N, K, 3)`` SH coefficients (DC first), counts
  ``(B,)`` real lengths of zero-padded items or None. Splats are in the 3DGS / OpenCV frame (x right,
  y down, z forward), the pack's world frame, so no axis change is needed.

Older builds (0.3.64, 0.8.0) have none of them: the pack's nodes then return only their own types and path
strings (core Preview3D takes a path). Everything is detected once, when the pack is imported, and never
required. The socket type strings are read from core (``IO.X.io_type``), not written here.

The adapters take core's class as an argument (tests pass a stand-in) and read core values by field name:
a ComfyUI whose SPLAT lacks a field or changed its shape fails with an :class:`InputError` naming it.
"""

from __future__ import annotations

import inspect
import io
from pathlib import Path

import torch

from ..fourd_core.errors import InputError
from ..fourd_core.splats.gaussians import Gaussians, Gaussians4D

#: the fields of core's SPLAT, in its constructor order (geometry_types.py at 0b5657d)
SPLAT_FIELDS = ("positions", "scales", "rotations", "opacities", "sh", "counts")
#: core io types this module looks for: name in ``comfy_api.latest.IO`` -> the type string core used when read
FILE3D_IO = {"File3DAny": "FILE_3D", "File3DGLB": "FILE_3D_GLB", "File3DPLY": "FILE_3D_PLY",
             "File3DPointCloudAny": "FILE_3D_POINT_CLOUD_ANY", "File3DSplatAny": "FILE_3D_SPLAT_ANY"}


def _detect() -> dict:
    """What this ComfyUI has: ``{"file3d": cls, "splat": cls, "io": {name: type string}}`` (keys only when present)."""
    try:
        from comfy_api.latest import IO, Types
    except Exception:  # no ComfyUI, or a build without the versioned API
        return {}
    found: dict = {"io": {}}
    for name in (*FILE3D_IO, "Splat"):
        t = getattr(IO, name, None)
        if t is not None and isinstance(getattr(t, "io_type", None), str):
            found["io"][name] = t.io_type
    if getattr(Types, "File3D", None) is not None and {"File3DGLB", "File3DPointCloudAny"} <= set(found["io"]):
        found["file3d"] = Types.File3D
    if getattr(Types, "SPLAT", None) is not None and "Splat" in found["io"]:
        found["splat"] = Types.SPLAT
    return found


_CORE = _detect()


def available() -> bool:
    """True when this ComfyUI has the File3D types."""
    return "file3d" in _CORE


def splat_available() -> bool:
    """True when this ComfyUI has the SPLAT type."""
    return "splat" in _CORE


def io_type(name: str, fallback: str | None = None) -> str:
    """The socket type string of ``IO.<name>`` (e.g. ``File3DGLB``), else ``fallback``."""
    value = _CORE.get("io", {}).get(name, fallback)
    if value is None:
        raise KeyError(name)
    return value


def splat_io_type() -> str | None:
    """Core's SPLAT socket type string, or None on builds without it."""
    return _CORE["io"]["Splat"] if splat_available() else None


def splat_file_io_type() -> str:
    """The socket type of a Gaussian-splat PLY File3D: ``File3DSplatAny`` where core has it (PreviewGaussianSplat,
    SaveGaussianSplat), else ``File3DPLY``, else ``File3DAny``."""
    io_types = _CORE.get("io", {})
    return io_types.get("File3DSplatAny") or io_types.get("File3DPLY") or io_types.get("File3DAny", "FILE_3D")


def extra_outputs() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``(types, names, tooltips)`` of the typed outputs FourD Export appends (empty on old builds)."""
    if not available():
        return (), (), ()
    return ((io_type("File3DGLB"), io_type("File3DPointCloudAny")),
            ("glb", "point_cloud"),
            ("Frame-0 GLB as a File3D (core SaveGLB, Preview3D).",
             "Frame-0 PLY point cloud as a File3D (core PreviewPointCloud, SavePointCloud)."))


def splat_outputs() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``(types, names, tooltips)`` of the core SPLAT output the splat nodes append (empty on old builds)."""
    if not splat_available():
        return (), (), ()
    return ((splat_io_type(),), ("splat",),
            ("The same splats as core SPLAT (batch item = frame) for core's splat nodes (Render Splat, Splat to "
             "File3D, Merge Splat...).",))


def splat_input() -> dict:
    """``{"splat": (SPLAT, options)}`` for a node's optional inputs, empty on builds without SPLAT."""
    if not splat_available():
        return {}
    return {"splat": (splat_io_type(), {"tooltip": "Core SPLAT splats (e.g. from core File3D to Splat): batch item = "
                                         "frame, in the 3DGS / OpenCV frame."})}


def file3d(path: str | Path | None, file_format: str, file_cls=None):
    """``Types.File3D`` holding the bytes of ``path`` (None when the file was not written or core has no File3D)."""
    cls = file_cls or _CORE.get("file3d")
    if cls is None or path is None or not Path(path).is_file():
        return None
    return cls(io.BytesIO(Path(path).read_bytes()), file_format=file_format)


# ----------------------------------------------------------------------------------------------
# SPLAT <-> the pack's Gaussians4D
def _splat_class(splat_cls):
    cls = splat_cls or _CORE.get("splat")
    if cls is None:
        raise InputError("This ComfyUI has no core SPLAT type (comfy_api.latest.Types.SPLAT); update ComfyUI to use "
                         "core splat nodes, or connect the pack's FOURD_GAUSSIANS output instead.")
    params = inspect.signature(cls).parameters
    missing = [f for f in SPLAT_FIELDS if f not in params]
    if missing:
        raise InputError(f"Core SPLAT's constructor has no field {missing[0]!r} (it takes {list(params)}): this "
                         "ComfyUI changed its SPLAT type; update ComfyUI-FourD.")
    return cls


def to_core_splat(gaussians: Gaussians4D, splat_cls=None, frames: list[int] | None = None):
    """The pack's splats as core ``SPLAT``: batch item ``b`` = frame ``frames[b]`` (all frames by default;
    deformable sets at view 0), zero-padded to a common N with ``counts`` when frames differ in size.

    Values are converted to core's render-ready form: ``scales = exp(log_scales)`` (linear std),
    ``rotations = quats / |quats|`` (w, x, y, z), ``opacities = sigmoid(logit)`` ``(B, N, 1)``,
    ``sh = sh0[:, :, None, :]`` ``(B, N, 1, 3)`` (SH degree 0). float32 on the splats' device; no axis change
    (both are OpenCV / 3DGS frames).

    Args:
        gaussians: :class:`~fourd_core.splats.gaussians.Gaussians4D`.
        splat_cls: core's ``Types.SPLAT`` (default: the running ComfyUI's).
        frames: frame indices (default: every frame).
    Raises:
        InputError: no SPLAT in this ComfyUI, a SPLAT whose constructor lacks a field, a bad frame index.
    """
    cls = _splat_class(splat_cls)
    frames = list(range(gaussians.num_frames)) if frames is None else [int(t) for t in frames]
    sets = [gaussians.frame(t) for t in frames]
    counts = [len(g) for g in sets]
    n = max(counts, default=0)
    dev = sets[0].means.device if sets else torch.device("cpu")

    def stack(values, width):
        out = torch.zeros(len(sets), n, width, dtype=torch.float32, device=dev)
        for b, v in enumerate(values):
            out[b, : len(v)] = v.detach().float().reshape(len(v), width)
        return out

    quats = [g.quats / g.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12) for g in sets]
    values = dict(positions=stack([g.means for g in sets], 3),
                  scales=stack([g.log_scales.double().exp() for g in sets], 3),
                  rotations=stack(quats, 4),
                  opacities=stack([torch.sigmoid(g.logit_opacities.double()) for g in sets], 1),
                  sh=stack([g.sh0 for g in sets], 3)[:, :, None, :],
                  counts=None if len(set(counts)) <= 1 else torch.tensor(counts, dtype=torch.int64))
    return cls(**values)


def _field(splat, name: str):
    if not hasattr(splat, name):
        raise InputError(f"This core SPLAT has no field {name!r} (ComfyUI changed its SPLAT type; ComfyUI-FourD reads "
                         f"{', '.join(SPLAT_FIELDS)}): update ComfyUI-FourD.")
    return getattr(splat, name)


def _tensor(splat, name: str, tail: tuple, b: int | None = None, n: int | None = None) -> torch.Tensor:
    t = _field(splat, name)
    if not isinstance(t, torch.Tensor) or t.ndim != 2 + len(tail) or (b is not None and t.shape[0] != b) or (
            n is not None and t.shape[1] != n) or any(want is not None and got != want for got, want in
                                                      zip(t.shape[2:], tail)):
        shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        want = ["B", "N", *("K" if w is None else w for w in tail)]
        raise InputError(f"Core SPLAT field {name!r} must be a tensor {want}; got {shape} (ComfyUI changed its SPLAT "
                         "type?): update ComfyUI-FourD.")
    return t


def from_core_splat(splat, eps: float = 1e-7) -> Gaussians4D:
    """Core ``SPLAT`` -> the pack's :class:`Gaussians4D` with one per-frame set per batch item (its first
    ``counts[b]`` splats), no cameras.

    Inverse of :func:`to_core_splat`: ``log_scales = log(max(scales, 1e-30))``, ``quats = rotations``,
    ``logit_opacities = logit(clamp(opacities, eps, 1 - eps))``, ``sh0 = sh[:, :, 0, :]`` (higher SH bands
    are dropped: the pack's splats are degree 0). Computed in float64, stored float32.

    Raises:
        InputError: a missing field or a field of the wrong shape (named), counts out of range, no splats.
    """
    pos = _tensor(splat, "positions", (3,))
    b, n = pos.shape[:2]
    scales = _tensor(splat, "scales", (3,), b, n)
    rot = _tensor(splat, "rotations", (4,), b, n)
    op = _field(splat, "opacities")
    if isinstance(op, torch.Tensor) and op.ndim == 2:
        op = op[..., None]
    if not isinstance(op, torch.Tensor) or tuple(op.shape) != (b, n, 1):
        raise InputError(f"Core SPLAT field 'opacities' must be a tensor [B, N, 1] = [{b}, {n}, 1]; got "
                         f"{list(op.shape) if isinstance(op, torch.Tensor) else type(op).__name__}.")
    sh = _tensor(splat, "sh", (None, 3), b, n)
    if sh.shape[2] < 1:
        raise InputError("Core SPLAT field 'sh' has no coefficients (K = 0); it needs at least the DC term.")
    counts = _field(splat, "counts")
    if counts is None:
        lengths = [n] * b
    else:
        lengths = [int(c) for c in torch.as_tensor(counts).reshape(-1).tolist()]
        if len(lengths) != b or any(not 0 <= c <= n for c in lengths):
            raise InputError(f"Core SPLAT field 'counts' must hold {b} lengths in 0..{n}; got {lengths[:8]}.")
    if b == 0 or sum(lengths) == 0:
        raise InputError("This core SPLAT holds no splats.")
    sets = []
    for i, c in enumerate(lengths):
        f64 = {k: v[i, :c].detach().to("cpu", torch.float64) for k, v in
               (("positions", pos), ("scales", scales), ("rotations", rot), ("opacities", op))}
        sets.append(Gaussians(means=f64["positions"].float().contiguous(),
                              log_scales=f64["scales"].clamp_min(1e-30).log().float().contiguous(),
                              quats=f64["rotations"].float().contiguous(),
                              logit_opacities=torch.logit(f64["opacities"][:, 0].clamp(eps, 1 - eps)).float().contiguous(),
                              sh0=sh[i, :c, 0, :].detach().to("cpu", torch.float32).contiguous()))
    return Gaussians4D(per_frame=sets, metadata={"kind": "core_splat", "sh_bands_dropped": int(sh.shape[2]) - 1})
