"""``Scene4D``: a generated dynamic scene (RGB video, point maps, cameras, depth) and its file.

The file is one ``.safetensors`` (no pickle) whose header metadata holds a JSON document under the
key ``"fourd"`` (format name, version, conventions, prompt, seed, models...). Tensors:

================  ===============  =========  ==========================================
name              shape            dtype      meaning
================  ===============  =========  ==========================================
``rgb``           [F, H, W, 3]     uint8      colours (0..255)
``xyz``           [F, H, W, 3]     float32    raw generated point map (4DNeX: [0, 1]; files of
                                              version 1 stored float16, still read)
``K``             [F, 3, 3]        float32    intrinsics in pixels (optional)
``cam_to_world``  [F, 4, 4]        float32    OpenCV camera-to-world (optional)
``depth``         [F, H, W]        float32    z-depth in scene units (optional)
``confidence``    [F, H, W]        float16    per-pixel confidence in [0, 1] (optional)
================  ===============  =========  ==========================================

World points are not stored: ``points = unproject(depth, K, cam_to_world)`` (see :meth:`Scene4D.points`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .errors import InputError, brief
from .util.atomic import atomic_path

FORMAT = "fourd.scene4d"
VERSION = 2
#: tensors every scene file holds
REQUIRED = ("rgb", "xyz")


@dataclasses.dataclass
class Scene4D:
    """A dynamic 4D scene. Images are channels-last float32 in [0, 1] (ComfyUI IMAGE convention).

    Attributes:
        rgb: ``[F, H, W, 3]`` float32 in [0, 1].
        xyz: ``[F, H, W, 3]`` float32, the generated point map as decoded (4DNeX: each axis in [0, 1];
            first-camera OpenCV axes, per-frame bounding-box centred, one global scale).
        K, cam_to_world, depth, confidence: geometry (None until recovered).
        metadata: JSON-serialisable dict (prompt, seed, model ids, sampling settings, versions).
    """

    rgb: torch.Tensor
    xyz: torch.Tensor
    K: torch.Tensor | None = None
    cam_to_world: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    confidence: torch.Tensor | None = None
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    @property
    def num_frames(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[2])

    @property
    def has_cameras(self) -> bool:
        return self.K is not None and self.cam_to_world is not None and self.depth is not None

    def validate(self) -> None:
        """Check shapes and finiteness. Raises :class:`InputError` naming the bad field."""
        if self.rgb.ndim != 4 or self.rgb.shape[-1] != 3:
            raise InputError(f"Scene4D.rgb must be [F, H, W, 3], got {tuple(self.rgb.shape)}.")
        f, h, w, _ = self.rgb.shape
        want = {"xyz": (f, h, w, 3), "K": (f, 3, 3), "cam_to_world": (f, 4, 4), "depth": (f, h, w), "confidence": (f, h, w)}
        for name, shape in want.items():
            t = getattr(self, name)
            if t is None:
                continue
            if tuple(t.shape) != shape:
                raise InputError(f"Scene4D.{name} must be {list(shape)} to match rgb, got {list(t.shape)}.")
            if not torch.isfinite(t.float()).all():
                raise InputError(f"Scene4D.{name} contains NaN or inf values.")

    def points(self, frame: int | None = None) -> torch.Tensor:
        """World points from depth and cameras: ``[F, H, W, 3]`` (or ``[H, W, 3]`` for one frame).

        ``X = R (d * K^-1 [u, v, 1]^T) + t`` with OpenCV pixel centres at integer ``(u, v)``.

        Raises:
            InputError: when the scene has no cameras yet.
        """
        if not self.has_cameras:
            raise InputError("This scene has no cameras/depth yet; run the geometry step (fit_cameras) first.")
        from .geometry.registration import points_from_depth

        if frame is None:
            return points_from_depth(self.depth, self.K, self.cam_to_world)
        return points_from_depth(self.depth[frame:frame + 1], self.K[frame:frame + 1], self.cam_to_world[frame:frame + 1])[0]

    def save(self, path: str | Path) -> Path:
        """Write the scene atomically to ``path`` (``.safetensors``). Returns the path."""
        from safetensors.torch import save_file

        self.validate()
        tensors = {
            "rgb": (self.rgb.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8),
            # float32: generated or user point maps can exceed float16's range (65504) or need its precision
            "xyz": self.xyz.to(torch.float32),
        }
        for name in ("K", "cam_to_world", "depth"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).float()
        if self.confidence is not None:
            tensors["confidence"] = self.confidence.to(torch.float16)
        meta = {"format": FORMAT, "version": VERSION, **self.metadata}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"fourd": json.dumps(meta)})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Scene4D":
        """Read a scene written by :meth:`save` (safetensors, no pickle).

        Raises:
            InputError: missing file, not a fourd scene, a newer format version, missing or
                malformed tensors (the message names them).
        """
        from safetensors import safe_open

        path = Path(path).expanduser()
        if not path.is_file():
            raise InputError(f"Scene file not found: {path}.")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("fourd", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise InputError(f"{path} is not a readable scene file ({brief(exc)}).") from exc
        if meta.get("format") != FORMAT:
            raise InputError(f"{path} is not a fourd Scene4D file (format {meta.get('format')!r}).")
        if int(meta.get("version", 0)) > VERSION:
            raise InputError(f"{path} has scene format version {meta['version']}; update ComfyUI-FourD to read it.")
        missing = [k for k in REQUIRED if k not in tensors]
        if missing:
            raise InputError(f"{path} is damaged: the scene file has no {' or '.join(missing)} tensor. "
                             "Re-export the scene (Save Scene / the CLI's generate).")
        meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
        conf = tensors.get("confidence")
        return cls(rgb=tensors["rgb"].float() / 255.0, xyz=tensors["xyz"].float(), K=tensors.get("K"),
                   cam_to_world=tensors.get("cam_to_world"), depth=tensors.get("depth"),
                   confidence=None if conf is None else conf.float(), metadata=meta)
