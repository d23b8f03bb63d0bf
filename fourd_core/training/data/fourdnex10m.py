"""4DNeX-10M annotations -> :class:`~fourd_core.training.data.clips.RGBXYZClip` (the data of the
released 4DNeX LoRA; readers written from 4DNeX's ``core/annotation.py`` at e2840a1 and
``build_wan_dataset.py`` at f8edd58, 3DTopia/4DNeX).

Folder layout (the official ``./data``; give its path as ``root``)::

    <root>/
      dynamic/<set>/<video>/<clip>/          MonST3R-style clip (dynamic_1, dynamic_2); <clip> ends in
                                             _<start>-<end>: inclusive frame numbers of the raw video
          pred_traj.txt                      one row per frame: t tx ty tz qw qx qy qz (camera-to-world,
                                             quaternion stored w, x, y, z)
          pred_intrinsics.txt                one row per frame: the 9 entries of K (pixels of the depth maps)
          frame_0000.npy, frame_0001.npy ... z-depth [H, W] per frame (dynamic_mask_<t>.png: not used)
      dynamic/<set>/<video>/<clip>.npz       dynamic_3-style clip: images [T, H, W, 3] (uint8 or float
                                             in [0, 1]) or [T, H, W], depths [T, H, W], intrinsic
                                             (scalar focal, [3, 3], [1, 3, 3] or [T, 3, 3]), cam_c2w [T, 4, 4]
      static/<set>/<scene>/<clip>.npz        static clip: pts3d [T, H, W, 3] world points and poses
                                             [T, 4, 4] camera-to-world, officially one pickled dict
                                             (read without running code, :mod:`.npz`); the file name is
                                             <..._start>-<..._end>
      raw/dynamic/<set>/<video>.mp4          the RGB of MonST3R clips (frames start .. end)
      raw/static/<set>/<scene>/images_4/     the RGB frames of static clips (numbered images)
      caption/<set>_with_caption_upload.csv  columns number, caption; number = int(<video>) for
                                             dynamic sets, int(<scene>) for static ones

Which folder is which format: under ``dynamic/`` every ``.npz`` is a dynamic_3 clip and every folder
without subfolders and without ``.npz`` files is a MonST3R clip; under ``static/`` every ``.npz`` is
a static clip. Official quirks kept on purpose (so a fine-tune sees what the release saw): the
dynamic unprojection uses only ``fx`` and the principal point ``(W // 2, H // 2)``
(``FourDNeXDataConfig.unprojection = "official"``); MonST3R and static clips are read up to
``max_frames`` (81) frames, dynamic_3 clips entirely (the official reader ignores the cap there).
Fixed against the official code: a missing caption, video or annotation file is an error naming
the sample (never another sample instead); the caption CSV path is relative to ``root``, not the
working directory.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError, brief
from ...util.text import read_text_file
from .clips import FOURDNEX, FourDNeXDataConfig, RGBXYZClip, SampleSource
from .frames import frame_files, natural_key, read_frames, safe_name
from .npz import load_npz_arrays
from .pointmaps import build_rgbxyz_clip, tum_to_cam_to_world, unproject


# ----------------------------------------------------------------------------------------------
# Single files
def read_caption_csv(path: str | Path) -> dict[str, str]:
    """``{number: caption}`` from a ``*_with_caption_upload.csv`` (columns ``number`` and ``caption``;
    other columns ignored). Keys are the numbers as canonical integer strings (``"0012"`` -> ``"12"``).

    Raises:
        InputError: missing file, not UTF-8, or no ``number`` / ``caption`` column.
    """
    text = read_text_file(path, "Caption CSV")
    rows = csv.DictReader(text.splitlines())
    fields = [f.strip() for f in (rows.fieldnames or [])]
    if "number" not in fields or "caption" not in fields:
        raise InputError(f"Caption CSV {path} needs the columns 'number' and 'caption' (has {fields[:8]}).")
    out: dict[str, str] = {}
    for row in rows:
        row = {(k or "").strip(): v for k, v in row.items()}
        key = number_key(row.get("number") or "")
        if key and key not in out:  # the official lookup takes the first matching row
            out[key] = (row.get("caption") or "").strip()
    return out


def number_key(value: str) -> str:
    """Canonical form of a CSV ``number`` / a folder name: an integer string when numeric."""
    v = str(value).strip()
    try:
        return str(int(float(v)))
    except ValueError:
        return v


def clip_range_from_dir(name: str) -> tuple[int, int]:
    """``(start, length)`` from a MonST3R clip folder name ending in ``_<start>-<end>`` (inclusive).

    Raises:
        InputError: no ``<start>-<end>`` at the end of the name, or ``end < start``.
    """
    m = re.search(r"(\d+)-(\d+)$", name.split(".")[0])
    if not m:
        raise InputError(f"Clip folder {name!r} does not end in _<start>-<end> (e.g. 00012_0000-0080); it names the "
                         "frames of the raw video.")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise InputError(f"Clip folder {name!r}: end frame {end} is before start frame {start}.")
    return start, end - start + 1


def clip_range_from_npz(stem: str) -> tuple[int, int]:
    """``(start, length)`` from a static clip's file name ``<..._start>-<..._end>`` (inclusive;
    ``frame_0000-frame_0080`` or ``frame_0000.png-frame_0080.png``).

    Raises:
        InputError: a name that is not ``<a>-<b>`` with a number in each part.
    """
    parts = stem.split("-")
    a = re.findall(r"\d+", parts[0]) if len(parts) == 2 else []
    b = re.findall(r"\d+", parts[1]) if len(parts) == 2 else []
    if not a or not b:
        raise InputError(f"Static clip file {stem!r}.npz is not named <..._start>-<..._end> (e.g. frame_0000-frame_0080).")
    start, end = int(a[-1]), int(b[0])
    if end < start:
        raise InputError(f"Static clip file {stem!r}: end frame {end} is before start frame {start}.")
    return start, end - start + 1


def _loadtxt(path: Path, what: str, columns: int) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{what} not found: {path}. The annotation is incomplete; download the clip again.")
    try:
        arr = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except Exception as exc:
        raise InputError(f"Could not read {what} {path} ({brief(exc)}); it must hold numbers, {columns} per row.") from exc
    if arr.shape[1] != columns:
        raise InputError(f"{what} {path} has {arr.shape[1]} numbers per row; {columns} are expected.")
    return arr


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{what} not found: {path}. The annotation is incomplete; download the clip again.")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"Could not read {what} {path} ({brief(exc)}); it must be a plain .npy array.") from exc


def read_monst3r_clip(anno_dir: str | Path, video: str | Path, *, clip_start: int, length: int,
                      config: FourDNeXDataConfig | None = None, caption: str = "", name: str | None = None,
                      source: dict | None = None) -> RGBXYZClip:
    """A MonST3R-style clip (dynamic_1, dynamic_2; layout: module docstring).

    Args:
        anno_dir: the clip folder (``pred_traj.txt``, ``pred_intrinsics.txt``, ``frame_XXXX.npy``).
        video: the raw video (or frame folder); frames ``clip_start .. clip_start + T - 1`` are used.
        clip_start, length: the clip's frame range in the raw video (``length`` is capped at
            ``config.max_frames``, as officially).
    Returns:
        :class:`RGBXYZClip` (official unprojection unless ``config.unprojection == "full"``).
    Raises:
        InputError: a missing or malformed annotation file, fewer trajectory / intrinsics rows or
            depth files than frames, a corrupt or short video, a clip too short to pad.
    """
    config = config or FourDNeXDataConfig()
    config.validate()
    anno_dir = Path(anno_dir)
    name = name or safe_name(anno_dir.name)
    t = min(int(length), config.max_frames)
    try:
        traj = _loadtxt(anno_dir / "pred_traj.txt", "Trajectory file", 8)
        intr = _loadtxt(anno_dir / "pred_intrinsics.txt", "Intrinsics file", 9)
        for arr, what in ((traj, "pred_traj.txt"), (intr, "pred_intrinsics.txt")):
            if arr.shape[0] < t:
                raise InputError(f"{what} has {arr.shape[0]} rows but the clip has {t} frames; the annotation is "
                                 "incomplete.")
        depth = []
        for i in range(t):
            d = _load_npy(anno_dir / f"frame_{i:04d}.npy", "Depth map")
            d = d[..., 0] if d.ndim == 3 and d.shape[-1] == 1 else d
            if d.ndim != 2 or (depth and d.shape != depth[0].shape):
                raise InputError(f"Depth map frame_{i:04d}.npy in {anno_dir} has shape {list(d.shape)}; every depth "
                                 f"map of a clip must be [H, W] of one size.")
            depth.append(d)
        depth = np.stack(depth)
        c2w = tum_to_cam_to_world(traj[:t])
        K = intr[:t].reshape(t, 3, 3)
        points = unproject(depth, K, c2w, config.unprojection)
        rgb = read_frames(video, clip_start, t, what="Video")
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    return build_rgbxyz_clip(name, rgb, points, c2w, config, caption,
                             source or {"format": "monst3r", "annotation": str(anno_dir), "video": str(video),
                                        "clip_start": int(clip_start), "frames": t})


def read_dynamic3_npz(path: str | Path, *, config: FourDNeXDataConfig | None = None, caption: str = "",
                      name: str | None = None, source: dict | None = None) -> RGBXYZClip:
    """A dynamic_3-style clip: one ``.npz`` with ``images``, ``depths``, ``intrinsic``, ``cam_c2w``.

    As officially, every frame of the npz is used (no ``max_frames`` cap), depths and poses are cut
    to the number of images, and a scalar ``intrinsic`` is the focal length.

    Raises:
        InputError: a missing or corrupt file, a missing key, bad shapes, images outside [0, 1].
    """
    config = config or FourDNeXDataConfig()
    config.validate()
    path = Path(path)
    name = name or safe_name(path.stem)
    try:
        arrays = load_npz_arrays(path)
        missing = [k for k in ("images", "depths", "intrinsic", "cam_c2w") if k not in arrays]
        if missing:
            raise InputError(f"{path} has no {', '.join(missing)} (keys: {sorted(arrays)[:8]}); a dynamic_3 clip needs "
                             "images, depths, intrinsic and cam_c2w.")
        images = arrays["images"]
        if images.ndim == 3:
            images = np.stack([images] * 3, axis=-1)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(f"images must be [T, H, W, 3] or [T, H, W], got {list(arrays['images'].shape)}.")
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        images = images.astype(np.float32)
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1.0 + 1e-6:
            raise InputError("images must be uint8 or float in [0, 1].")
        t = images.shape[0]
        depths, c2w = arrays["depths"][:t], arrays["cam_c2w"][:t]
        h, w = depths.shape[1:3] if depths.ndim == 3 else (0, 0)
        if depths.ndim != 3 or depths.shape[0] != t or c2w.shape != (t, 4, 4):
            raise InputError(f"need depths [T, H, W] and cam_c2w [T, 4, 4] for {t} images, got "
                             f"{list(arrays['depths'].shape)} and {list(arrays['cam_c2w'].shape)}.")
        K = _intrinsics(arrays["intrinsic"], t, h, w)
        points = unproject(depths, K, c2w, config.unprojection)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    return build_rgbxyz_clip(name, torch.from_numpy(images), points, c2w, config, caption,
                             source or {"format": "dynamic_3", "annotation": str(path), "frames": t})


def _intrinsics(intr: np.ndarray, t: int, h: int, w: int) -> np.ndarray:
    intr = np.asarray(intr, dtype=np.float64)
    if intr.ndim == 0 or intr.size == 1:
        K = np.array([[float(intr.reshape(())), 0, w // 2], [0, float(intr.reshape(())), h // 2], [0, 0, 1]])
        return np.tile(K, (t, 1, 1))
    if intr.shape == (3, 3) or intr.shape == (1, 3, 3):
        return np.tile(intr.reshape(1, 3, 3), (t, 1, 1))
    if intr.ndim == 3 and intr.shape[1:] == (3, 3) and intr.shape[0] >= t:
        return intr[:t]
    raise InputError(f"intrinsic must be a scalar focal, [3, 3], [1, 3, 3] or [T, 3, 3], got {list(intr.shape)}.")


def read_static_npz(path: str | Path, frames: str | Path, *, clip_start: int,
                    config: FourDNeXDataConfig | None = None, caption: str = "", name: str | None = None,
                    source: dict | None = None) -> RGBXYZClip:
    """A static clip: ``pts3d`` ``[T, H, W, 3]`` world points and ``poses`` ``[T, 4, 4]``
    camera-to-world in one ``.npz``, RGB from ``frames`` (the scene's ``images_4`` folder or a
    video) starting at ``clip_start``. The first ``max_frames`` point maps are used.

    Raises:
        InputError: a missing or corrupt file, a missing key, bad shapes, too few RGB frames.
    """
    config = config or FourDNeXDataConfig()
    config.validate()
    path = Path(path)
    name = name or safe_name(path.stem)
    try:
        arrays = load_npz_arrays(path)
        missing = [k for k in ("pts3d", "poses") if k not in arrays]
        if missing:
            raise InputError(f"{path} has no {', '.join(missing)} (keys: {sorted(arrays)[:8]}); a static clip needs "
                             "pts3d and poses.")
        pts, poses = arrays["pts3d"], arrays["poses"]
        if pts.ndim != 4 or pts.shape[-1] != 3 or poses.ndim != 3 or poses.shape[1:] != (4, 4) \
                or poses.shape[0] < pts.shape[0]:
            raise InputError(f"need pts3d [T, H, W, 3] and poses [T, 4, 4], got {list(pts.shape)} and "
                             f"{list(poses.shape)}.")
        t = min(pts.shape[0], config.max_frames)
        rgb = read_frames(frames, clip_start, t, what="RGB frames")
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    return build_rgbxyz_clip(name, rgb, pts[:t], poses[:t], config, caption,
                             source or {"format": "static", "annotation": str(path), "frames_dir": str(frames),
                                        "clip_start": int(clip_start), "frames": t})


# ----------------------------------------------------------------------------------------------
# The whole tree
@dataclasses.dataclass
class _Entry:
    format: str      # "monst3r" | "dynamic_3" | "static"
    anno: Path
    media: Path | None
    set: str
    number: str
    clip_start: int
    length: int | None
    label: str = ""  # the video / scene folder name as written


class FourDNeX10MSource(SampleSource):
    """Every clip of a 4DNeX-10M tree (layout: module docstring).

    Args:
        root: the dataset folder (holding ``dynamic/``, ``static/``, ``raw/``, ``caption/``).
        config: the recipe (:class:`FourDNeXDataConfig`; official defaults).
        default_caption: used when a clip has no caption row; None (default) makes that an error.
    Raises:
        InputError: a bad config, a missing root, or no clip in it (before any model loads).
    """

    kind = FOURDNEX

    def __init__(self, root: str | Path, config: FourDNeXDataConfig | None = None,
                 default_caption: str | None = None):
        super().__init__()
        self.config = config or FourDNeXDataConfig()
        self.config.validate()
        self.root = Path(root).expanduser()
        self.default_caption = default_caption
        if not self.root.is_dir():
            raise InputError(f"4DNeX-10M folder not found: {self.root}.")
        self.entries: list[_Entry] = []
        errors: list[str] = []
        dyn, sta = self.root / "dynamic", self.root / "static"
        for folder, dirs, files in _walk(dyn):
            rel = folder.relative_to(dyn).parts
            for f in sorted(files, key=natural_key):
                if f.endswith(".npz") and len(rel) >= 2:
                    self.entries.append(_Entry("dynamic_3", folder / f, None, rel[0], number_key(rel[-1]),
                                               *_range_or_zero(Path(f).stem), label=rel[-1]))
            if not dirs and not any(f.endswith(".npz") for f in files) and len(rel) >= 3:
                try:
                    start, length = clip_range_from_dir(folder.name)
                except InputError as exc:
                    errors.append(str(exc))
                    continue
                video = self.root / "raw" / "dynamic" / rel[0] / f"{rel[-2]}.mp4"
                self.entries.append(_Entry("monst3r", folder, video, rel[0], number_key(rel[-2]), start, length,
                                          label=rel[-2]))
        for folder, _dirs, files in _walk(sta):
            rel = folder.relative_to(sta).parts
            for f in sorted(files, key=natural_key):
                if f.endswith(".npz") and len(rel) >= 2:
                    try:
                        start, length = clip_range_from_npz(Path(f).stem)
                    except InputError as exc:
                        errors.append(str(exc))
                        continue
                    media = self.root / "raw" / "static" / rel[0] / rel[-1] / "images_4"
                    self.entries.append(_Entry("static", folder / f, media, rel[0], number_key(rel[-1]), start,
                                              length, label=rel[-1]))
        if errors and not self.entries:
            raise InputError(f"No usable clip in {self.root}: {errors[0]}")
        self._names = [safe_name(e.set, e.label, e.anno.stem if e.format != "monst3r" else
                                 f"{e.clip_start:04d}-{e.clip_start + e.length - 1:04d}") for e in self.entries]
        self._finish("4DNeX-10M clips", self.root, "dynamic/<set>/<video>/<clip>/pred_traj.txt ..., "
                     "dynamic/<set>/<video>/<clip>.npz, static/<set>/<scene>/<clip>.npz (see the module docstring).")
        self._captions: dict[str, dict[str, str]] = {}

    def config_dict(self) -> dict:
        return {"reader": "FourDNeX10MSource", "config": dataclasses.asdict(self.config),
                "default_caption": self.default_caption}

    def caption(self, index: int) -> str:
        """The caption of clip ``index`` (``caption/<set>_with_caption_upload.csv``).

        Raises:
            InputError: no CSV for the set or no row for the clip's number (unless ``default_caption``).
        """
        e = self.entries[index]
        if e.set not in self._captions:
            path = self.root / "caption" / f"{e.set}_with_caption_upload.csv"
            if not path.is_file():
                if self.default_caption is not None:
                    return self.default_caption
                raise InputError(f"{self._names[index]}: caption file not found: {path}. Download the captions or "
                                 "pass default_caption.")
            self._captions[e.set] = read_caption_csv(path)
        text = self._captions[e.set].get(e.number)
        if not text:
            if self.default_caption is not None:
                return self.default_caption
            raise InputError(f"{self._names[index]}: no caption for number {e.number} in caption/"
                             f"{e.set}_with_caption_upload.csv; add the row or pass default_caption.")
        return text

    def read(self, index: int) -> RGBXYZClip:
        """Clip ``index`` through :func:`read_monst3r_clip`, :func:`read_dynamic3_npz` or :func:`read_static_npz`.

        Raises:
            InputError: anything those raise, or a missing caption; the message names the clip.
        """
        e, name = self.entries[index], self._names[index]
        caption = self.caption(index)
        if e.format == "monst3r":
            if not e.media.is_file():
                raise InputError(f"{name}: video not found: {e.media} (raw/dynamic/<set>/<video>.mp4).")
            return read_monst3r_clip(e.anno, e.media, clip_start=e.clip_start, length=e.length, config=self.config,
                                     caption=caption, name=name)
        if e.format == "dynamic_3":
            return read_dynamic3_npz(e.anno, config=self.config, caption=caption, name=name)
        if not e.media.is_dir():
            raise InputError(f"{name}: RGB frames not found: {e.media} (raw/static/<set>/<scene>/images_4/).")
        frame_files(e.media)
        return read_static_npz(e.anno, e.media, clip_start=e.clip_start, config=self.config, caption=caption,
                               name=name)


def _walk(top: Path):
    if not top.is_dir():
        return
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        yield Path(folder), dirs, [f for f in files if not f.startswith(".")]


def _range_or_zero(stem: str) -> tuple[int, int | None]:
    try:
        return clip_range_from_npz(stem)
    except InputError:
        return 0, None
