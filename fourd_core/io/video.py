"""Video files through imageio (ffmpeg): H.264 MP4, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, brief
from ..util.atomic import atomic_path


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[F, H, W, 3]`` float in [0, 1] -> uint8 numpy (rounded, clipped)."""
    return (frames.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def write_video(path: str | Path, frames: torch.Tensor, fps: float = 24.0, quality: int = 8) -> Path:
    """Write ``frames`` ``[F, H, W, 3]`` (float in [0, 1]) as an H.264 MP4 (yuv420p), atomically.

    Odd sizes are padded by one edge pixel (yuv420p needs even sizes).

    Raises:
        InputError: wrong shape, NaN values or fps <= 0.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"Video frames must be [F, H, W, 3], got {tuple(frames.shape)}.")
    if not torch.isfinite(frames).all():
        raise InputError("Video frames contain NaN/inf.")
    if fps <= 0:
        raise InputError(f"fps must be > 0, got {fps}.")
    import imageio.v2 as imageio

    arr = to_uint8(frames)
    ph, pw = arr.shape[1] % 2, arr.shape[2] % 2
    if ph or pw:
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        with imageio.get_writer(str(tmp), format="FFMPEG", fps=fps, codec="libx264", quality=quality,
                                pixelformat="yuv420p", macro_block_size=1) as w:
            for frame in arr:
                w.append_data(frame)
    return Path(path)


def read_video(path: str | Path) -> torch.Tensor:
    """Read a video as ``[F, H, W, 3]`` float32 in [0, 1].

    Raises:
        InputError: missing or unreadable file.
    """
    import imageio.v2 as imageio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Video not found: {path}.")
    try:
        with imageio.get_reader(str(path), format="FFMPEG") as reader:
            frames = np.stack([f for f in reader])  # iterate: len() of an ffmpeg reader may be inf
    except Exception as exc:
        raise InputError(f"Could not read video {path} ({brief(exc)}).") from exc
    return torch.from_numpy(frames[..., :3]).float() / 255.0
