"""Point-cloud files: binary PLY through ``plyfile`` and GLB (glTF binary, a POINTS primitive with
COLOR_0, the format ComfyUI's core Preview3D node shows), written here from the glTF 2.0 specification
(two accessors; no library gives linear 16-bit COLOR_0 plus a node transform). Written atomically. open3d is optional: it only serves the optional clean-up steps
(voxel down-sampling, statistical outlier removal) of :func:`clean_points`.

Axes: PLY keeps the scene's world frame (OpenCV: x right, y down, z forward, as 3DGS / COLMAP /
nerfstudio tools expect); GLB is converted to glTF's y-up frame (x right, y up, z towards the
viewer: ``(x, y, z) -> (x, -y, -z)``, a rotation by 180 degrees about x) so the scene shows upright
in glTF viewers (glTF 2.0 specification, section 3.4 "Coordinate System and Units").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, brief
from ..util.atomic import write_bytes_atomic

#: What to do on a Debian/Ubuntu machine where ``import open3d`` fails for want of a system library.
OPEN3D_FIX = ("pip install open3d; on Debian/Ubuntu open3d also needs the system library libusb "
              "(apt-get install libusb-1.0-0)")

#: OpenCV (y down, z forward) -> glTF (y up, z backward): a 180 degree rotation about x.
OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0]).astype(np.float32)


@functools.lru_cache(maxsize=1)
def open3d_status() -> tuple[object | None, str]:
    """Try to import open3d once: ``(module or None, reason it is unavailable or "")``.

    open3d wheels link system libraries pip cannot install (``libusb-1.0.so.0`` on Debian), so a
    failed import is an expected state, never a crash: callers skip their optional step and say so.
    """
    try:
        import open3d  # noqa: PLC0415 - optional heavy dependency
    except Exception as exc:  # ImportError, OSError from a missing shared library
        return None, f"open3d is not usable here ({brief(exc)}). Fix: {OPEN3D_FIX}."
    return open3d, ""


@functools.lru_cache(maxsize=1)
def warn_if_open3d_unusable() -> bool:
    """Whether open3d is unusable here; the first call that finds it so warns (``UserWarning``) that
    voxel down-sampling / outlier removal will be skipped and names the fix (:data:`OPEN3D_FIX`).

    Cached, so the note is shown at most once per process however many scenes, frames or option
    checks ask (before, one export showed it up to three times).
    """
    o3d, why = open3d_status()
    if o3d is None:
        warnings.warn(f"Voxel down-sampling / outlier removal will be skipped: {why}", stacklevel=2)
    return o3d is None


def _as_points(points, colors) -> tuple[np.ndarray, np.ndarray]:
    p = torch.as_tensor(points).detach().float().reshape(-1, 3).cpu().numpy()
    c = torch.as_tensor(colors).detach().float().reshape(-1, 3).cpu().numpy()
    if p.shape != c.shape:
        raise InputError(f"points and colors must have the same number of entries, got {p.shape} and {c.shape}.")
    if not np.isfinite(p).all():
        raise InputError("Point cloud contains NaN/inf coordinates; filter them (e.g. with a confidence mask).")
    return p, np.clip(c, 0.0, 1.0)


def _to_uint8(c: np.ndarray) -> np.ndarray:
    return (c * 255.0 + 0.5).astype(np.uint8)


def ply_bytes(points, colors) -> bytes:
    """A binary little-endian PLY document: ``vertex`` elements with float32 ``x y z`` and uchar
    ``red green blue`` (the property names three.js' PLYLoader, Blender, MeshLab and open3d read).

    Args:
        points: ``[..., 3]`` coordinates (scene units, world frame). colors: ``[..., 3]`` float in [0, 1].
    Raises:
        InputError: mismatched sizes or NaN/inf coordinates.
    """
    import io

    from plyfile import PlyData, PlyElement

    p, c = _as_points(points, colors)
    rgb = _to_uint8(c)
    vertex = np.empty(len(p), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                     ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = p[:, 0], p[:, 1], p[:, 2]
    vertex["red"], vertex["green"], vertex["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    buf = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<",
            comments=["ComfyUI-FourD point cloud; OpenCV world axes (x right, y down, z forward)"]).write(buf)
    return buf.getvalue()


def write_ply(path: str | Path, points, colors) -> Path:
    """Write a coloured point cloud as binary PLY (see :func:`ply_bytes`), atomically."""
    return write_bytes_atomic(path, ply_bytes(points, colors))


#: the size (glTF units) a GLB's content is scaled to by its node: the 5-unit model both core Preview3D frontends
#: frame (ComfyUI frontend 1.27.10 SceneModelManager rescales to a 5-unit box; 1.58.1 does not rescale on load and
#: clips at a far plane of 1e4, its fit-to-view target is also 5)
GLB_VIEW_SIZE = 5.0
#: points farther than this many robust radii from the robust centre are left out of a GLB
GLB_OUTLIER_RADII = 8.0


@dataclasses.dataclass(frozen=True)
class GlbView:
    """How a GLB places its points: the robust centre (scene units, OpenCV world), the robust radius (98th
    percentile of the distances to it) and the node scale ``GLB_VIEW_SIZE / (2 * radius)``. One view is
    shared by every frame of a scene so the frames line up."""

    centre: tuple[float, float, float]
    radius: float
    scale: float


def glb_view(points, quantile: float = 0.98, size: float = GLB_VIEW_SIZE) -> GlbView:
    """The :class:`GlbView` of ``points`` (``[..., 3]``, scene units): per-axis median as the centre, the
    ``quantile`` of the distances to it as the radius (at least 1e-9, so one point or a flat cloud works).

    Raises:
        InputError: NaN/inf coordinates.
    """
    p = torch.as_tensor(points).detach().double().reshape(-1, 3).cpu()
    if not torch.isfinite(p).all():
        raise InputError("Point cloud contains NaN/inf coordinates; filter them (e.g. with a confidence mask).")
    if len(p) == 0:
        return GlbView((0.0, 0.0, 0.0), 1.0, size / 2.0)
    sample = p[:: max(1, len(p) // 200_000)]
    centre = sample.median(0).values
    radius = max(float(torch.quantile((sample - centre).norm(dim=-1), quantile)), 1e-9)
    return GlbView(tuple(float(x) for x in centre), radius, size / (2.0 * radius))


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1 piecewise curve, the inverse of the
    encoding three.js applies to its output)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def glb_bytes(points, colors, view: GlbView | None = None) -> bytes:
    """A GLB document (glTF 2.0 binary) with one POINTS primitive: POSITION float32 in glTF's y-up axes and
    COLOR_0 as *linear* RGBA (unsigned short, normalised).

    * Axes: points are given in the scene's OpenCV world frame and stored as ``(x, -y, -z)``
      (:data:`OPENCV_TO_GLTF`; glTF 2.0 specification section 3.4), so viewers show the scene upright.
    * Colour: glTF defines COLOR_0 as linear (specification 3.7.2.1); colours are sRGB values in [0, 1], so
      they are linearised with :func:`srgb_to_linear` and viewers that encode their output to sRGB
      (three.js, Blender) show the original colours. 16 bits keep the darks free of banding.
    * Placement: the accessor keeps scene units; the mesh's node gets a uniform ``scale`` and a
      ``translation`` that put the robust centre at the origin and the robust extent at
      :data:`GLB_VIEW_SIZE` units (:func:`glb_view`; pass one ``view`` for every frame of a scene), so
      viewers that do not rescale on load frame any scene. Points beyond :data:`GLB_OUTLIER_RADII` robust
      radii are left out. The node's ``extras`` hold ``fourd_scene_units_per_unit`` (1 / scale) to undo it.

    Raises:
        InputError: mismatched sizes or NaN/inf coordinates.
    """
    p, c = _as_points(points, colors)
    view = view or glb_view(p)
    centre = np.asarray(view.centre, dtype=np.float64)
    keep = np.linalg.norm(p.astype(np.float64) - centre, axis=1) <= GLB_OUTLIER_RADII * view.radius
    p, c = p[keep], c[keep]
    pos = np.ascontiguousarray((p @ OPENCV_TO_GLTF.T).astype("<f4"))
    rgba = np.ones((len(c), 4), dtype=np.float64)
    rgba[:, :3] = srgb_to_linear(c)
    col = np.ascontiguousarray(np.round(rgba * 65535.0).astype("<u2"))
    node = {"name": "fourd_points", "scale": [view.scale] * 3,
            "translation": [float(-view.scale * x) for x in OPENCV_TO_GLTF.astype(np.float64) @ centre],
            "extras": {"fourd_scene_units_per_unit": 1.0 / view.scale,
                       "fourd_axes": "glTF y-up = OpenCV (x, -y, -z)"}}
    doc = {"asset": {"version": "2.0", "generator": "ComfyUI-FourD"}, "scene": 0, "scenes": [{"nodes": [0]}],
           "nodes": [node]}
    binary = b""
    if len(pos):
        binary = pos.tobytes() + col.tobytes()
        doc["buffers"] = [{"byteLength": len(binary)}]
        doc["bufferViews"] = [{"buffer": 0, "byteOffset": 0, "byteLength": pos.nbytes, "target": 34962},
                              {"buffer": 0, "byteOffset": pos.nbytes, "byteLength": col.nbytes, "target": 34962}]
        doc["accessors"] = [
            {"bufferView": 0, "componentType": 5126, "count": len(pos), "type": "VEC3",
             "min": [float(v) for v in pos.min(0)], "max": [float(v) for v in pos.max(0)]},
            {"bufferView": 1, "componentType": 5123, "normalized": True, "count": len(col), "type": "VEC4"}]
        doc["meshes"] = [{"name": "fourd_points", "primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1},
                                                                  "mode": 0}]}]
        node["mesh"] = 0
    js = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    binary += b"\0" * (-len(binary) % 4)
    chunks = struct.pack("<I4s", len(js), b"JSON") + js
    if binary:
        chunks += struct.pack("<I4s", len(binary), b"BIN\0") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def write_glb(path: str | Path, points, colors, view: GlbView | None = None) -> Path:
    """Write a coloured point cloud as GLB (see :func:`glb_bytes`), atomically."""
    return write_bytes_atomic(path, glb_bytes(points, colors, view))


def needs_open3d(voxel_size: float = 0.0, outlier_neighbors: int = 0) -> bool:
    """Whether these :func:`clean_points` options use open3d."""
    return voxel_size > 0 or outlier_neighbors > 0


def clean_points(points: torch.Tensor, colors: torch.Tensor, *, confidence: torch.Tensor | None = None,
                 min_confidence: float = 0.0, voxel_size: float = 0.0, outlier_neighbors: int = 0,
                 outlier_std: float = 2.0, max_points: int | None = None, seed: int = 0):
    """Filter a point cloud for export.

    Steps, each optional: drop points with ``confidence < min_confidence``; voxel down-sampling
    (open3d, ``voxel_size`` in scene units); statistical outlier removal (open3d,
    ``outlier_neighbors`` neighbours, ``outlier_std`` standard deviations); a random subset of at
    most ``max_points`` (seeded). Non-finite points are always dropped. When open3d cannot be
    imported, its two steps are skipped with a warning that names the fix (:data:`OPEN3D_FIX`), shown
    once per process (:func:`warn_if_open3d_unusable`).

    Args:
        points: ``[..., 3]``; colors: ``[..., 3]`` in [0, 1]; confidence: ``[...]`` in [0, 1].
    Returns:
        ``(points [N, 3], colors [N, 3])`` float32 tensors.
    """
    p = points.reshape(-1, 3).float()
    c = colors.reshape(-1, 3).float()
    keep = torch.isfinite(p).all(-1)
    if confidence is not None and min_confidence > 0:
        keep &= confidence.reshape(-1) >= min_confidence
    p, c = p[keep], c[keep]
    if needs_open3d(voxel_size, outlier_neighbors) and len(p) and not warn_if_open3d_unusable():
        o3d, _ = open3d_status()
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p.double().numpy()))
        pcd.colors = o3d.utility.Vector3dVector(c.clamp(0, 1).double().numpy())
        if voxel_size > 0:
            pcd = pcd.voxel_down_sample(voxel_size)
        if outlier_neighbors > 0 and len(pcd.points) > outlier_neighbors:
            pcd, _ = pcd.remove_statistical_outlier(nb_neighbors=outlier_neighbors, std_ratio=outlier_std)
        p = torch.from_numpy(np.asarray(pcd.points)).float()
        c = torch.from_numpy(np.asarray(pcd.colors)).float()
    if max_points is not None and len(p) > max_points:
        idx = torch.randperm(len(p), generator=torch.Generator().manual_seed(seed))[:max_points].sort().values
        p, c = p[idx], c[idx]
    return p, c


#: splats fainter than this are left out of :func:`write_splat_centres_glb` (unless every splat is)
CENTRES_MIN_OPACITY = 0.05


def write_splat_centres_glb(path: str | Path, g) -> Path:
    """Write the centres of ``g`` (a :class:`fourd_core.splats.Gaussians`: ``means [N, 3]``, ``sh0``, ``colors``,
    ``opacities [N]``) in their colours (``sh0_to_rgb`` clamped to [0, 1]) as a GLB point cloud (:func:`write_glb`:
    glTF y-up, linear COLOR_0, framed at 5 units): what core Preview3D shows on every frontend. Splats below :data:`CENTRES_MIN_OPACITY` are left out unless that
    would leave none; non-finite ones always. Returns the path."""
    keep = torch.isfinite(g.means).all(-1) & torch.isfinite(g.sh0).all(-1)
    solid = keep & (g.opacities >= CENTRES_MIN_OPACITY)
    keep = solid if bool(solid.any()) else keep
    return write_glb(path, g.means[keep].detach().float().cpu(), g.colors[keep].detach().float().clamp(0, 1).cpu())
