"""Frames for training data: reading videos and frame folders, the official 4DNeX resize / crop /
padding rules, and sample names.

Images are channels-last float32 in [0, 1] (``[N, H, W, 3]``), as everywhere in the pack. The resize
rules are those of 4DNeX's ``build_wan_dataset.py`` (3DTopia/4DNeX at f8edd58), reproduced exactly
because the released LoRA was trained on them:

* **cover size**: if ``H / W < th / tw`` then ``new_h = th, new_w = int(W * th / H)``, else
  ``new_w = tw, new_h = int(H * tw / W)`` (``int`` truncates);
* **resize**: ``torch.nn.functional.interpolate`` bilinear with ``antialias=True``,
  ``align_corners=False`` for RGB; ``mode="nearest"`` for point maps;
* **centre crop**: torchvision's ``center_crop`` offsets ``top = int(round((new_h - th) / 2))``
  (Python's round half to even), likewise ``left``;
* **ping-pong padding**: a clip shorter than the frames needed is continued by the reversed clip
  (last frame repeated once), *once*: ``[f_0 .. f_{T-1}, f_{T-1} .. f_0]``.

These differ slightly from :func:`fourd_core.io.images.prepare_image` (bicubic, floor offsets),
which prepares sampling inputs.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError, brief

#: file suffixes read as videos (through imageio's ffmpeg plugin)
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")
#: file suffixes read as frames of a frame folder (through :func:`fourd_core.io.images.load_image`)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: frames resized per call (bounds the memory of a full-HD clip)
RESIZE_CHUNK = 8


def natural_key(name: str):
    """Sort key that orders embedded numbers numerically (``frame_2`` before ``frame_10``)."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def frame_files(folder: str | Path) -> list[Path]:
    """The image files of a frame folder in natural order (hidden files skipped).

    Raises:
        InputError: the folder does not exist or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Frame folder not found: {folder}.")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise InputError(f"Frame folder {folder} holds no images ({', '.join(IMAGE_EXTS)}); put the frames there "
                         "as numbered image files.")
    return files


def find_media(folder: Path, stem: str) -> Path | None:
    """``folder/stem<video ext>`` or the frame folder ``folder/stem/``, whichever exists (video first)."""
    for ext in VIDEO_EXTS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    p = folder / stem
    return p if p.is_dir() else None


def is_media(path: Path) -> bool:
    """A video file or a folder (taken as a frame folder)."""
    return path.is_dir() or path.suffix.lower() in VIDEO_EXTS


def read_frames(path: str | Path, start: int = 0, count: int | None = None, what: str = "Video") -> torch.Tensor:
    """Frames ``start .. start + count - 1`` of a video file or a frame folder.

    Args:
        path: a video (:data:`VIDEO_EXTS`) or a folder of numbered images (:data:`IMAGE_EXTS`).
        start: first frame (0-based). count: frames wanted; None = all from ``start``.
        what: how error messages name the file.
    Returns:
        ``[N, H, W, 3]`` float32 in [0, 1] (N = ``count`` when given).
    Raises:
        InputError: missing or undecodable file (a corrupt video), fewer frames than requested, or
            frames of different sizes in a frame folder; the message names the file and the fix.
    """
    path = Path(path)
    if start < 0 or (count is not None and count < 1):
        raise InputError(f"{what} {path}: frame range start={start}, count={count} is empty.")
    if path.is_dir():
        files = frame_files(path)
        stop = len(files) if count is None else start + count
        if stop > len(files) or start >= len(files):
            raise InputError(f"{what} {path} has {len(files)} frames; frames {start}..{stop - 1} are needed. Use a "
                             "longer clip or fewer frames.")
        from ...io.images import load_image

        frames = [load_image(f) for f in files[start:stop]]
        shapes = {tuple(f.shape) for f in frames}
        if len(shapes) > 1:
            raise InputError(f"{what} {path}: the frames have different sizes ({sorted(shapes)[:3]}); every frame of "
                             "a clip must have the same size.")
        return torch.stack(frames)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}.")
    if path.suffix.lower() not in VIDEO_EXTS:
        raise InputError(f"{what} {path} is not a video ({', '.join(VIDEO_EXTS)}) or a frame folder.")
    import imageio.v2 as imageio

    frames, n = [], 0
    stop = None if count is None else start + count
    try:
        with imageio.get_reader(str(path), format="FFMPEG") as reader:
            for frame in reader:  # iterate: len() of an ffmpeg reader may be inf
                if n >= start:
                    frames.append(np.asarray(frame)[..., :3])
                n += 1
                if stop is not None and n >= stop:
                    break
    except Exception as exc:
        raise InputError(f"Could not read {what.lower()} {path} ({brief(exc)}): the file is corrupt or not a video. "
                         "Re-download it or re-encode it (e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4).") from exc
    if stop is not None and n < stop or not frames:
        raise InputError(f"{what} {path} has {n} frames; frames {start}..{(stop or n + 1) - 1} are needed. Use a "
                         "longer clip or fewer frames.")
    arr = np.stack(frames)
    if arr.ndim == 3:  # gray video
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return torch.from_numpy(arr).float() / 255.0


def cover_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Size that covers ``target_h x target_w`` keeping the aspect ratio, as ``build_wan_dataset.py``
    computes it (``int`` truncation; see the module docstring). Returns ``(new_h, new_w)``."""
    if height / width < target_h / target_w:
        return target_h, int(width * (target_h / height))
    return int(height * (target_w / width)), target_w


def center_crop_offsets(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """``(top, left)`` of torchvision's ``center_crop``: ``int(round((size - crop) / 2.0))``."""
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))


def resize_cover_crop(frames: torch.Tensor, target_h: int, target_w: int, mode: str = "bilinear",
                      size_from: tuple[int, int] | None = None) -> torch.Tensor:
    """Resize to cover ``target_h x target_w`` and centre-crop, the official 4DNeX way.

    Args:
        frames: ``[N, H, W, C]`` float (any C).
        mode: ``"bilinear"`` (antialiased; RGB) or ``"nearest"`` (point maps: no mixing of points).
        size_from: ``(H, W)`` whose aspect decides the resize size; default the frames' own. The
            official code sizes a depth-resolution point map from the *RGB* video's size.
    Returns:
        ``[N, target_h, target_w, C]`` float32 (float64 input stays float64).
    Raises:
        InputError: an unknown mode, or a crop larger than the resized frames (a ``size_from``
            with another aspect than the target).
    """
    if mode not in ("bilinear", "nearest"):
        raise InputError(f"resize mode must be 'bilinear' or 'nearest', got {mode!r}.")
    h, w = size_from or frames.shape[1:3]
    new_h, new_w = cover_size(h, w, target_h, target_w)
    top, left = center_crop_offsets(new_h, new_w, target_h, target_w)
    if top < 0 or left < 0:
        raise InputError(f"Cannot crop {target_w}x{target_h} from {new_w}x{new_h}.")
    x = frames if frames.dtype == torch.float64 else frames.float()
    out = []
    for i in range(0, x.shape[0], RESIZE_CHUNK):
        chunk = x[i:i + RESIZE_CHUNK].permute(0, 3, 1, 2)
        if tuple(chunk.shape[2:]) != (new_h, new_w):
            if mode == "bilinear":
                chunk = F.interpolate(chunk, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
            else:
                chunk = F.interpolate(chunk, size=(new_h, new_w), mode="nearest")
        out.append(chunk[:, :, top:top + target_h, left:left + target_w].permute(0, 2, 3, 1))
    return torch.cat(out).contiguous()


def crop_intrinsics(K: torch.Tensor, size: tuple[int, int], target_h: int, target_w: int) -> torch.Tensor:
    """Intrinsics ``[..., 3, 3]`` (pixels, centres at integers) after :func:`resize_cover_crop` from
    ``size = (H, W)``: ``u' = (u + 0.5) new_w / W - 0.5 - left`` (align_corners=False), same for v."""
    h, w = size
    new_h, new_w = cover_size(h, w, target_h, target_w)
    top, left = center_crop_offsets(new_h, new_w, target_h, target_w)
    sx, sy = new_w / w, new_h / h
    A = torch.tensor([[sx, 0, 0.5 * sx - 0.5 - left], [0, sy, 0.5 * sy - 0.5 - top], [0, 0, 1]], dtype=torch.float64)
    return (A @ K.double()).to(K.dtype)


def ping_pong(frames, num_frames: int, what: str = "The clip"):
    """The first ``num_frames`` of ``[clip, reversed clip]`` (4DNeX ``build_wan_dataset.py``; the
    last frame appears twice at the turn). Works on tensors and numpy arrays (axis 0 = time).

    Raises:
        InputError: fewer than ``ceil(num_frames / 2)`` frames, where one reversal cannot reach
            ``num_frames`` (the official code would silently make a shorter sample).
    """
    t = frames.shape[0]
    if t >= num_frames:
        return frames[:num_frames]
    if 2 * t < num_frames:
        raise InputError(f"{what} has {t} frames; ping-pong padding reaches at most {2 * t}, but {num_frames} are "
                         f"needed. Use clips of at least {(num_frames + 1) // 2} frames or train with fewer frames.")
    rev = frames.flip(0) if isinstance(frames, torch.Tensor) else frames[::-1]
    cat = torch.cat if isinstance(frames, torch.Tensor) else np.concatenate
    return cat([frames, rev[:num_frames - t]])


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(*parts: str, limit: int = 120) -> str:
    """A file-system-safe sample name from ``parts`` joined by ``-`` (other characters become ``_``;
    a name longer than ``limit`` keeps its head and gets an 8-hex hash of the full name)."""
    raw = "-".join(str(p) for p in parts if str(p) != "")
    name = _SAFE.sub("_", raw).strip("._") or "sample"
    if len(name) > limit:
        name = name[:limit - 9] + "-" + hashlib.sha256(raw.encode()).hexdigest()[:8]
    return name


def seed_for(seed: int, name: str) -> int:
    """A 63-bit seed from a base ``seed`` and a sample ``name`` (stable across runs, ranks, machines)."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()[:8], "little") >> 1
