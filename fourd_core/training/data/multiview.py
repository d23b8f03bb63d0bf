"""Multi-view video folders (4Real-Video Sec. 3.3, training data source (2)) and the on-disk grid
layout this pack writes.

The grid nodes and the grid sampler return the grid as a row-major IMAGE batch (frame
``(view v, time t)`` at index ``v * T + t``, :mod:`fourd_core.pipelines.grid_canvas`); the pack had
no folder layout for it, so this module defines one (:func:`write_grid_sample`), and the same
layout is the multi-view training format. Folder layout (one folder per sample)::

    <root>/<sample>/
      view_0.mp4 | view_0/     one video (.mp4 .mov .mkv .webm .avi .m4v .gif) or frame folder per
      view_1.mp4 | view_1/     view, named view_<k> for k = 0 .. V-1 (any zero padding: view_00 ...);
      ...                      all views on one clock: frame t of every view is the same instant
      grid.json                optional: {"format": "fourd.grid", "version": 1, "views": V,
                               "frames": T, "fps": 24}
      prompt.txt               optional caption (UTF-8); none = the empty prompt
      cameras.json             optional, the pack's cameras.json (fourd_core.io.cameras): V frames
                               (one camera per view) or V * T frames (row-major, index v * T + t)

or, instead of the ``view_<k>`` entries, the whole grid as **one** row-major video or frame folder
``grid.mp4`` / ``grid/`` of ``V * T`` frames, with ``grid.json`` giving ``"views"`` (what saving the
grid sampler's IMAGE output with a video or image-sequence node produces).

Reading (:class:`MultiViewSource`) takes the first ``views`` views and the first
``(frames - 1) * frame_stride + 1`` frames of each (every ``frame_stride``-th), resized to cover
``height x width`` and centre-cropped (intrinsics adjusted); every pixel is valid. ``<root>`` may
also be a single sample folder.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from ...errors import InputError
from ...util.atomic import atomic_directory
from ...util.text import read_text_file
from .clips import GRID, GridClip, GridDataConfig, SampleSource
from .frames import VIDEO_EXTS, crop_intrinsics, find_media, natural_key, read_frames, resize_cover_crop, safe_name

GRID_FORMAT = "fourd.grid"
GRID_VERSION = 1
_VIEW = re.compile(r"^view_(\d+)$")


def view_entries(folder: Path) -> dict[int, Path]:
    """``{k: path}`` of the ``view_<k>`` videos / frame folders of a sample folder."""
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        stem = p.name if p.is_dir() else p.stem
        m = _VIEW.match(stem)
        if m and (p.is_dir() or p.suffix.lower() in VIDEO_EXTS):
            k = int(m.group(1))
            if k in out:
                raise InputError(f"{folder} has two entries for view {k} ({out[k].name}, {p.name}); keep one.")
            out[k] = p
    return out


def is_grid_folder(folder: Path) -> bool:
    """A folder in this layout (view entries or ``grid.json`` with a grid video / frame folder)."""
    if not folder.is_dir():
        return False
    try:
        return bool(view_entries(folder)) or ((folder / "grid.json").is_file() and find_media(folder, "grid") is not None)
    except InputError:
        return True  # malformed, but meant as a sample: read() says what is wrong


def _read_meta(folder: Path) -> dict:
    p = folder / "grid.json"
    if not p.is_file():
        return {}
    try:
        meta = json.loads(read_text_file(p, "grid.json"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or delete it.") from None
    if not isinstance(meta, dict):
        raise InputError(f"{p} must hold a JSON object like {{\"views\": 8}}.")
    return meta


def read_grid_folder(folder: str | Path, grid: GridDataConfig | None = None, name: str | None = None) -> GridClip:
    """Read one sample folder (layout: module docstring).

    Args:
        folder: the sample folder. grid: the size wanted (views, frames, stride, height, width).
        name: the sample name (default: the folder name, made file-system safe).
    Returns:
        :class:`GridClip` with ``frames [V, T, H, W, 3]`` float32 in [0, 1], ``valid`` None (all
        pixels valid), the prompt, and cameras if ``cameras.json`` exists (``K`` adjusted to the
        resize and crop).
    Raises:
        InputError: missing views (gaps, fewer than ``views``), clips shorter than the grid, views of
            different sizes, a corrupt video, a malformed ``grid.json`` / ``cameras.json``.
    """
    folder = Path(folder)
    grid = grid or GridDataConfig()
    grid.validate()
    name = name or safe_name(folder.name)
    meta = _read_meta(folder)
    need = (grid.frames - 1) * grid.frame_stride + 1
    views = view_entries(folder)
    rows = []
    if views:
        missing = [k for k in range(max(views) + 1) if k not in views]
        if missing:
            raise InputError(f"{name}: views {missing[:5]} are missing in {folder}; views must be numbered view_0 .. "
                             f"view_{max(views)} without gaps.")
        if len(views) < grid.views:
            raise InputError(f"{name}: {folder} has {len(views)} views but the grid needs {grid.views}. Use fewer "
                             "views or add views.")
        for k in range(grid.views):
            try:
                rows.append(read_frames(views[k], 0, need, what=f"View {k}"))
            except InputError as exc:
                raise InputError(f"{name}: {exc}") from exc
        total_t = None
    else:
        media = find_media(folder, "grid")
        if media is None:
            raise InputError(f"{name}: {folder} has no view_<k> videos or frame folders and no grid video; see the "
                             "multi-view layout (view_0.mp4, view_1.mp4, ... or grid.mp4 + grid.json).")
        v_all = meta.get("views")
        if not isinstance(v_all, int) or v_all < 1:
            raise InputError(f"{name}: {media.name} is a row-major grid, so {folder / 'grid.json'} must give its "
                             "number of views, e.g. {\"views\": 8}.")
        try:
            batch = read_frames(media, what="Grid video")
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from exc
        if batch.shape[0] % v_all:
            raise InputError(f"{name}: {media.name} has {batch.shape[0]} frames, not a multiple of its {v_all} views.")
        total_t = batch.shape[0] // v_all
        if v_all < grid.views:
            raise InputError(f"{name}: the grid has {v_all} views but {grid.views} are needed. Use fewer views.")
        if total_t < need:
            raise InputError(f"{name}: the grid has {total_t} frames per view but a grid of {grid.frames} frames "
                             f"(stride {grid.frame_stride}) needs {need}. Use fewer grid frames.")
        rows = [batch[k * total_t:k * total_t + need] for k in range(grid.views)]
    sizes = {tuple(r.shape[1:3]) for r in rows}
    if len(sizes) > 1:
        raise InputError(f"{name}: the views have different frame sizes {sorted(sizes)}; render every view at one size.")
    size = rows[0].shape[1:3]
    frames = torch.stack([resize_cover_crop(r[::grid.frame_stride], grid.height, grid.width) for r in rows])
    prompt = ""
    if (folder / "prompt.txt").is_file():
        prompt = read_text_file(folder / "prompt.txt", "Caption file").strip()
    K = c2w = None
    if (folder / "cameras.json").is_file():
        K, c2w = _read_cameras(folder / "cameras.json", name, len(views) if views else int(meta["views"]),
                               grid, total_t)
        K = crop_intrinsics(K, tuple(size), grid.height, grid.width)
    return GridClip(name=name, frames=frames, valid=None, prompt=prompt, K=K, cam_to_world=c2w,
                    source={"path": str(folder)})


def _read_cameras(path: Path, name: str, num_views: int, grid: GridDataConfig, total_t: int | None):
    from ...io.cameras import read_cameras_json

    try:
        K, c2w = read_cameras_json(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{name}: {path} is not a cameras.json of this pack (frames with K and cam_to_world): "
                         f"{type(exc).__name__}: {exc}.") from None
    n = K.shape[0]
    if n == num_views:
        return K[:grid.views], c2w[:grid.views]
    if n % num_views == 0 and (total_t is None or n // num_views == total_t):
        t_all = n // num_views
        need = (grid.frames - 1) * grid.frame_stride + 1
        if t_all >= need:
            K = K.view(num_views, t_all, 3, 3)[:grid.views, :need:grid.frame_stride]
            c2w = c2w.view(num_views, t_all, 4, 4)[:grid.views, :need:grid.frame_stride]
            return K, c2w
    raise InputError(f"{name}: {path} has {n} cameras; expected one per view ({num_views}) or one per view and frame "
                     f"({num_views} x frames, row-major).")


class MultiViewSource(SampleSource):
    """Multi-view video samples: every sample folder under ``root`` (layout: module docstring).

    Raises:
        InputError: a bad config, a missing folder, or no sample folder (before any model loads).
    """

    kind = GRID

    def __init__(self, root: str | Path, grid: GridDataConfig | None = None):
        super().__init__()
        self.grid = grid or GridDataConfig()
        self.grid.validate()
        root = Path(root).expanduser()
        if not root.is_dir():
            raise InputError(f"Multi-view folder not found: {root}.")
        if is_grid_folder(root):
            self.folders = [root]
        else:
            self.folders = [p for p in sorted(root.iterdir(), key=lambda p: natural_key(p.name))
                            if not p.name.startswith(".") and is_grid_folder(p)]
        self._names = [safe_name(p.name) for p in self.folders]
        self._finish("multi-view sample folders", root, "<root>/<sample>/view_0.mp4, view_1.mp4, ... (or frame "
                     "folders view_0/, view_1/ ...), optional prompt.txt and cameras.json.")

    def config_dict(self) -> dict:
        return {"reader": "MultiViewSource", "grid": dataclasses.asdict(self.grid)}

    def read(self, index: int) -> GridClip:
        """The sample ``index`` (:func:`read_grid_folder`)."""
        return read_grid_folder(self.folders[index], self.grid, self._names[index])


def write_grid_sample(folder: str | Path, frames: torch.Tensor, *, views: int | None = None, prompt: str | None = None,
                      K: torch.Tensor | None = None, cam_to_world: torch.Tensor | None = None,
                      image_format: str = "png", fps: float = 24.0) -> Path:
    """Write a grid as a multi-view sample folder (layout: module docstring), atomically.

    Args:
        folder: the sample folder to create (an existing one is replaced as a whole).
        frames: ``[V, T, H, W, 3]`` float in [0, 1] (e.g. ``GridResult.frames``), or the row-major
            IMAGE batch ``[V*T, H, W, 3]`` of the grid nodes together with ``views``.
        prompt: optional caption (``prompt.txt``).
        K, cam_to_world: optional cameras, ``[V, 3, 3]``/``[V, 4, 4]`` or ``[V, T, ...]``
            (OpenCV, pixels of ``frames``), written as ``cameras.json``.
        image_format: ``"png"`` (lossless frame folders ``view_<k>/<t>.png``, 8-bit) or ``"mp4"``
            (H.264 ``view_<k>.mp4``, lossy, far smaller).
        fps: frame rate stored in ``grid.json`` (and the MP4s).
    Returns:
        the folder.
    Raises:
        InputError: wrong shapes, NaN, a batch that is not ``views`` x T, an unknown format.
    """
    import imageio.v2 as imageio

    from ...io.cameras import cameras_dict
    from ...io.video import to_uint8, write_video
    from ...pipelines.grid_canvas import batch_to_grid

    if frames.ndim == 4:
        if not views:
            raise InputError("A row-major IMAGE batch [V*T, H, W, 3] needs views= (the number of rows).")
        frames = batch_to_grid(frames, views, frames.shape[0] // views)
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise InputError(f"Grid frames must be [V, T, H, W, 3], got {list(frames.shape)}.")
    if not torch.isfinite(frames).all():
        raise InputError("The grid frames contain NaN or inf.")
    if image_format not in ("png", "mp4"):
        raise InputError(f"image_format must be 'png' or 'mp4', got {image_format!r}.")
    v, t, h, w, _ = frames.shape
    digits = max(2, len(str(v - 1)))
    meta = {"format": GRID_FORMAT, "version": GRID_VERSION, "views": v, "frames": t, "fps": float(fps),
            "height": h, "width": w, "order": "view_<k> = row k; frame t of every view is the same instant"}
    if (K is None) != (cam_to_world is None):
        raise InputError("Give both K and cam_to_world, or neither.")
    with atomic_directory(folder) as tmp:
        for k in range(v):
            stem = f"view_{k:0{digits}d}"
            if image_format == "mp4":
                write_video(tmp / f"{stem}.mp4", frames[k], fps=fps)
            else:
                (tmp / stem).mkdir()
                for i, im in enumerate(to_uint8(frames[k])):
                    imageio.imwrite(tmp / stem / f"{i:05d}.png", im)
        if prompt:
            (tmp / "prompt.txt").write_text(prompt.strip() + "\n", encoding="utf-8")
        if K is not None:
            K = torch.as_tensor(K).reshape(-1, 3, 3)
            c2w = torch.as_tensor(cam_to_world).reshape(-1, 4, 4)
            if K.shape[0] not in (v, v * t) or c2w.shape[0] != K.shape[0]:
                raise InputError(f"Cameras must be one per view ({v}) or per view and frame ({v * t}); got "
                                 f"{K.shape[0]} K and {c2w.shape[0]} cam_to_world.")
            doc = cameras_dict(K, c2w, h, w, extra={"grid": "row-major (v * T + t)" if K.shape[0] == v * t else
                                                    "one camera per view"})
            (tmp / "cameras.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
        (tmp / "grid.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return Path(folder)

