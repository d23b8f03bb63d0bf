"""Plain RGB-D video and this pack's ``scene.safetensors`` files as 4DNeX training samples
(:class:`~fourd_core.training.data.clips.RGBXYZClip`, XYZ by the 4DNeX recipe of :mod:`.pointmaps`).

Generic RGB-D layout (:class:`RGBDSource`; one folder per sample)::

    <root>/<sample>/
      rgb.mp4 | rgb/             the RGB video (any video type) or a folder of numbered frames
      depth.npy                  [T, H, W] z-depth (float, any unit; any resolution: K is in its pixels)
      depth/                     ... or one [H, W] .npy per frame (numbered: frame_0000.npy ...)
      points.npy                 ... or [T, H, W, 3] world points instead of depth (then K is not needed)
      K.npy                      [3, 3] or [T, 3, 3] intrinsics, pixels of the depth maps
      cam_to_world.npy           [T, 4, 4] OpenCV camera-to-world (x right, y down, z forward)
      cameras.json               ... or instead of K.npy + cam_to_world.npy: the pack's cameras.json
                                 (fourd_core.io.cameras; K rescaled when its width/height differ from
                                 the depth maps')
      caption.txt | prompt.txt   the caption (UTF-8, without " POINTMAP_STYLE.")

Every array is read with ``np.load(allow_pickle=False)``. The first ``max_frames`` frames are used.
Unprojection is the full pinhole model here (``unprojection="full"``, ``X = d (u - cx) / fx``,
``Y = d (v - cy) / fy``, pixel centres at integers); pass ``"official"`` for the 4DNeX dynamic-set
rule (``fx`` only, principal point ``(W // 2, H // 2)``).

Scene files (:class:`SceneSource`): ``scene.safetensors`` written by the pack
(:class:`fourd_core.scene.Scene4D`; e.g. a generation to fine-tune on). With cameras and depth the
world points are unprojected from them (full pinhole); without, the generated point map itself is
used as points in first-camera axes (``2 xyz - 1``, identity cameras). Either way it then goes
through the same recipe, so its statistics match the other data. The caption is the scene's
``prompt`` metadata or a ``<file>.txt`` / ``caption.txt`` beside it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ...errors import InputError, brief
from ...util.text import read_text_file
from .clips import FOURDNEX, FourDNeXDataConfig, RGBXYZClip, SampleSource
from .frames import find_media, natural_key, read_frames, safe_name
from .pointmaps import build_rgbxyz_clip, unproject


def _npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"Could not read {what} {path} ({brief(exc)}); it must be a plain .npy array.") from exc


def _depth(folder: Path, t: int) -> np.ndarray | None:
    if (folder / "depth.npy").is_file():
        d = _npy(folder / "depth.npy", "depth")
        if d.ndim == 4 and d.shape[-1] == 1:
            d = d[..., 0]
        if d.ndim != 3:
            raise InputError(f"depth.npy must be [T, H, W], got {list(d.shape)}.")
        return d[:t]
    if (folder / "depth").is_dir():
        files = sorted((p for p in (folder / "depth").iterdir() if p.suffix == ".npy"), key=lambda p: natural_key(p.name))
        if not files:
            raise InputError(f"{folder / 'depth'} holds no .npy depth maps.")
        maps = [_npy(p, "depth map") for p in files[:t]]
        if any(m.shape != maps[0].shape or m.ndim != 2 for m in maps):
            raise InputError(f"The depth maps in {folder / 'depth'} must all be [H, W] of one size.")
        return np.stack(maps)
    return None


def _cameras(folder: Path, t: int, h: int, w: int, need_K: bool) -> tuple[np.ndarray | None, np.ndarray]:
    if (folder / "cameras.json").is_file():
        try:
            doc = json.loads(read_text_file(folder / "cameras.json", "cameras.json"))
            K = np.array([f["K"] for f in doc["frames"]], dtype=np.float64)
            c2w = np.array([f["cam_to_world"] for f in doc["frames"]], dtype=np.float64)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{folder / 'cameras.json'} is not a cameras.json of this pack (frames with K and "
                             f"cam_to_world): {type(exc).__name__}: {exc}.") from None
        cw, ch = doc.get("width", w), doc.get("height", h)
        if (cw, ch) != (w, h):  # K for another resolution: pixel centres u' = (u + 0.5) w / cw - 0.5
            sx, sy = w / cw, h / ch
            A = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
            K = A @ K
    else:
        if not (folder / "cam_to_world.npy").is_file():
            raise InputError(f"No cameras in {folder}: add cam_to_world.npy [T, 4, 4]" +
                             (" and K.npy" if need_K else "") + " or a cameras.json.")
        c2w = _npy(folder / "cam_to_world.npy", "cam_to_world")
        K = None
        if need_K:
            if not (folder / "K.npy").is_file():
                raise InputError(f"No intrinsics in {folder}: add K.npy ([3, 3] or [T, 3, 3], pixels of the depth "
                                 "maps) or a cameras.json.")
            K = _npy(folder / "K.npy", "K")
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or c2w.shape[0] < t:
        raise InputError(f"cam_to_world must be [T, 4, 4] with T >= {t}, got {list(c2w.shape)}.")
    if K is not None:
        K = np.asarray(K, dtype=np.float64)
        if K.shape == (3, 3):
            K = np.tile(K, (t, 1, 1))
        if K.ndim != 3 or K.shape[1:] != (3, 3) or K.shape[0] < t:
            raise InputError(f"K must be [3, 3] or [T, 3, 3] with T >= {t}, got {list(K.shape)}.")
        K = K[:t]
    return K, c2w[:t]


def read_rgbd_folder(folder: str | Path, config: FourDNeXDataConfig | None = None, *, unprojection: str = "full",
                     name: str | None = None) -> RGBXYZClip:
    """One generic RGB-D sample folder (layout: module docstring).

    Args:
        folder: the sample folder. config: the recipe (``config.unprojection`` is not used here).
        unprojection: ``"full"`` (default) or ``"official"``.
    Returns:
        :class:`RGBXYZClip`.
    Raises:
        InputError: a missing RGB video, depth / points or cameras, malformed arrays, a corrupt or
            short video, a clip too short to pad; the message names the sample.
    """
    config = config or FourDNeXDataConfig()
    config.validate()
    folder = Path(folder)
    name = name or safe_name(folder.name)
    try:
        media = find_media(folder, "rgb")
        if media is None:
            raise InputError(f"No RGB video in {folder}: add rgb.mp4 (or rgb/ with numbered frames).")
        if (folder / "points.npy").is_file():
            pts = _npy(folder / "points.npy", "points")
            if pts.ndim != 4 or pts.shape[-1] != 3:
                raise InputError(f"points.npy must be [T, H, W, 3], got {list(pts.shape)}.")
            pts = pts[:config.max_frames]
            _, c2w = _cameras(folder, pts.shape[0], pts.shape[1], pts.shape[2], need_K=False)
        else:
            depth = _depth(folder, config.max_frames)
            if depth is None:
                raise InputError(f"No depth in {folder}: add depth.npy [T, H, W] (or depth/ with one .npy per frame, "
                                 "or points.npy [T, H, W, 3]).")
            K, c2w = _cameras(folder, depth.shape[0], depth.shape[1], depth.shape[2], need_K=True)
            pts = unproject(depth, K, c2w, unprojection)
        rgb = read_frames(media, 0, pts.shape[0], what="RGB video")
        caption = ""
        for fn in ("caption.txt", "prompt.txt"):
            if (folder / fn).is_file():
                caption = read_text_file(folder / fn, "Caption file").strip()
                break
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    return build_rgbxyz_clip(name, rgb, pts, c2w, config, caption,
                             {"format": "rgbd", "folder": str(folder), "frames": int(pts.shape[0])})


class RGBDSource(SampleSource):
    """Generic RGB-D samples: every sample folder under ``root`` holding ``rgb.*`` / ``rgb/``.

    Raises:
        InputError: a bad config, a missing root, or no sample folder (before any model loads).
    """

    kind = FOURDNEX

    def __init__(self, root: str | Path, config: FourDNeXDataConfig | None = None, unprojection: str = "full"):
        super().__init__()
        self.config = config or FourDNeXDataConfig()
        self.config.validate()
        if unprojection not in ("official", "full"):
            raise InputError(f"unprojection must be 'official' or 'full', got {unprojection!r}.")
        self.unprojection = unprojection
        root = Path(root).expanduser()
        if not root.is_dir():
            raise InputError(f"RGB-D folder not found: {root}.")
        cands = [root] if find_media(root, "rgb") else sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name))
        self.folders = [p for p in cands if find_media(p, "rgb") is not None or (p / "depth.npy").is_file()]
        self._names = [safe_name(p.name) for p in self.folders]
        self._finish("RGB-D sample folders", root, "<root>/<sample>/rgb.mp4 + depth.npy + K.npy + cam_to_world.npy "
                     "(or cameras.json), optional caption.txt.")

    def config_dict(self) -> dict:
        return {"reader": "RGBDSource", "config": dataclasses.asdict(self.config), "unprojection": self.unprojection}

    def read(self, index: int) -> RGBXYZClip:
        """Sample ``index`` (:func:`read_rgbd_folder`)."""
        return read_rgbd_folder(self.folders[index], self.config, unprojection=self.unprojection,
                                name=self._names[index])


def read_scene_file(path: str | Path, config: FourDNeXDataConfig | None = None, *, name: str | None = None,
                    caption: str | None = None) -> RGBXYZClip:
    """A ``scene.safetensors`` of this pack as a training sample (module docstring).

    Raises:
        InputError: not a readable scene file (:meth:`fourd_core.scene.Scene4D.load`), too few
            frames, or the recipe's errors; the message names the sample.
    """
    from ...scene import Scene4D

    config = config or FourDNeXDataConfig()
    config.validate()
    path = Path(path)
    name = name or safe_name(path.parent.name if path.stem == "scene" else path.stem)
    try:
        scene = Scene4D.load(path)
        t = min(scene.num_frames, config.max_frames)
        if scene.has_cameras:
            c2w = scene.cam_to_world[:t].double().numpy()
            pts = unproject(scene.depth[:t].double().numpy(), scene.K[:t].double().numpy(), c2w, "full")
            kind = "cameras"
        else:
            pts = scene.xyz[:t].double().numpy() * 2 - 1
            c2w = np.tile(np.eye(4), (t, 1, 1))
            kind = "xyz"
        if caption is None:
            caption = str(scene.metadata.get("prompt") or "")
            for side in (path.with_suffix(".txt"), path.parent / "caption.txt"):
                if not caption and side.is_file():
                    caption = read_text_file(side, "Caption file").strip()
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    return build_rgbxyz_clip(name, scene.rgb, pts, c2w, config, caption.strip(),
                             {"format": "scene", "path": str(path), "points_from": kind, "frames": t})


class SceneSource(SampleSource):
    """``scene.safetensors`` files: a folder (searched recursively for ``*.safetensors``) or a list.

    Raises:
        InputError: a bad config, a missing folder, or no scene file (before any model loads).
    """

    kind = FOURDNEX

    def __init__(self, root: str | Path | list, config: FourDNeXDataConfig | None = None):
        super().__init__()
        self.config = config or FourDNeXDataConfig()
        self.config.validate()
        if isinstance(root, (list, tuple)):
            self.paths = [Path(p) for p in root]
            where = f"the {len(self.paths)} paths given"
        else:
            root = Path(root).expanduser()
            if not root.is_dir():
                raise InputError(f"Scene folder not found: {root}.")
            self.paths = sorted((p for p in root.rglob("*.safetensors") if not p.name.startswith(".")),
                                key=lambda p: natural_key(str(p.relative_to(root))))
            where = str(root)
        self._names = [safe_name(p.parent.name if p.stem == "scene" else p.stem) for p in self.paths]
        self._finish("scene files", where, "scene.safetensors files written by the pack (Save Scene, the CLI).")

    def config_dict(self) -> dict:
        return {"reader": "SceneSource", "config": dataclasses.asdict(self.config)}

    def read(self, index: int) -> RGBXYZClip:
        """Scene ``index`` (:func:`read_scene_file`)."""
        return read_scene_file(self.paths[index], self.config, name=self._names[index])
