"""The grid's bookkeeping, shared by the diffusers grid sampler and the native grid nodes (no model
here): frame indexing of the row-major IMAGE batch, the sliding-window plan and the canvas that
windows are written into (4Real-Video Sec. 3.3), and the I2V latent masks of known pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import InputError


class WindowSpec(Protocol):
    """The window sizes :func:`plan_windows` reads (a :class:`~fourd_core.pipelines.grid.GridConfig`
    has them): views and frames per window, and the overlaps between neighbouring windows."""

    window_views: int
    window_frames: int
    overlap_views: int
    overlap_frames: int


def grid_index(view: int, time: int, num_times: int) -> int:
    """Index of frame ``I[view, time]`` in the row-major IMAGE batch: ``view * T + time``."""
    return view * num_times + time


def grid_to_batch(frames: torch.Tensor) -> torch.Tensor:
    """``[V, T, H, W, C]`` -> ``[V*T, H, W, C]`` row-major (index ``v * T + t``)."""
    if frames.ndim != 5:
        raise InputError(f"grid frames must be [V, T, H, W, C], got {list(frames.shape)}.")
    return rearrange(frames, "v t h w c -> (v t) h w c")


def batch_to_grid(batch: torch.Tensor, num_views: int, num_times: int) -> torch.Tensor:
    """Inverse of :func:`grid_to_batch`.

    Raises:
        InputError: if the batch does not hold ``num_views * num_times`` frames.
    """
    if batch.shape[0] != num_views * num_times:
        raise InputError(f"a batch of {batch.shape[0]} frames is not a {num_views} x {num_times} grid.")
    return rearrange(batch, "(v t) ... -> v t ...", v=num_views, t=num_times)


@dataclasses.dataclass
class GridResult:
    """A generated grid.

    Attributes:
        frames: ``[V, T, H, W, 3]`` float32 in [0, 1] on the CPU; ``frames[v, t] = I[v, t]``.
        windows: the windows sampled, ``(v0, v1, t0, t1)`` half-open, in order.
        mode: the grid mode used.
    """

    frames: torch.Tensor
    windows: list
    mode: str

    @property
    def num_views(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_times(self) -> int:
        return int(self.frames.shape[1])

    def batch(self) -> torch.Tensor:
        """The row-major IMAGE batch ``[V*T, H, W, 3]`` (see :func:`grid_to_batch`)."""
        return grid_to_batch(self.frames)

    def view(self, v: int) -> torch.Tensor:
        """The video of view ``v``: ``[T, H, W, 3]`` (= ``batch()[v*T:(v+1)*T]``)."""
        return self.frames[v]


# ----------------------------------------------------------------------------------------------
# Windows
def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start indices of windows of ``size`` covering ``[0, length)`` with at least ``overlap``
    shared items; the last window is shifted back to end at ``length``. ``length <= size``: [0]."""
    if length <= size:
        return [0]
    starts, s = [0], 0
    while s + size < length:
        s = min(s + size - overlap, length - size)
        starts.append(s)
    return starts


def plan_windows(num_views: int, num_times: int, config: WindowSpec) -> list[tuple[int, int, int, int]]:
    """Windows ``(v0, v1, t0, t1)`` (half-open) in sampling order: views outer, time inner.

    A grid no larger than a window is one window; a time axis shorter than ``window_frames`` must
    itself be ``4k + 1`` frames.

    Raises:
        InputError: a time axis shorter than the window that is not ``4k + 1``.
    """
    if num_times < config.window_frames and (num_times - 1) % 4:
        raise InputError(f"The fixed-view video has {num_times} frames; a grid shorter than one window "
                         f"({config.window_frames}) needs 4k+1 frames (e.g. {(num_times - 1) // 4 * 4 + 1}). "
                         "Trim the video.")
    vw, tw = min(config.window_views, num_views), min(config.window_frames, num_times)
    out = []
    for v0 in window_starts(num_views, vw, config.overlap_views):
        for t0 in window_starts(num_times, tw, config.overlap_frames):
            out.append((v0, v0 + vw, t0, t0 + tw))
    return out


@dataclasses.dataclass
class GridCanvas:
    """The grid while it is generated window by window (Sec. 3.3): what is known and what is written.

    Attributes:
        pixels: ``[V, T, H, W, 3]`` float32 in [0, 1]: the inputs, then every generated frame.
        known: ``[V, T, H, W]`` float32 in {0, 1}: 1 = a known pixel (the input row and column
            minus holes, and every written frame).
        written: ``[V, T]`` bool: frames some window has generated.
        out: ``[V, T, H, W, 3]``: the generated frames (0 where none is written yet).
    """

    pixels: torch.Tensor
    known: torch.Tensor
    written: torch.Tensor
    out: torch.Tensor

    @classmethod
    def start(cls, fixed_view: torch.Tensor, freeze_time: torch.Tensor, holes: torch.Tensor | None = None) -> "GridCanvas":
        """Row 0 = ``fixed_view`` ``[T, H, W, 3]`` (all known), column 0 = ``freeze_time[1:]``
        ``[V, H, W, 3]`` (known where ``holes`` ``[V, H, W]`` <= 0.5; ``freeze_time[0]`` is ignored)."""
        num_t, num_v = fixed_view.shape[0], freeze_time.shape[0]
        h, w = fixed_view.shape[1:3]
        pixels = torch.zeros(num_v, num_t, h, w, 3)
        known = torch.zeros(num_v, num_t, h, w)
        pixels[0] = fixed_view.float().cpu().clamp(0, 1)
        known[0] = 1.0
        pixels[1:, 0] = freeze_time[1:].float().cpu().clamp(0, 1)
        known[1:, 0] = 1.0 if holes is None else (holes[1:].float().cpu() <= 0.5).float()
        return cls(pixels, known, torch.zeros(num_v, num_t, dtype=torch.bool), torch.zeros(num_v, num_t, h, w, 3))

    def window(self, window: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixels [V_w, T_w, H, W, 3], known [V_w, T_w, H, W])`` of window ``(v0, v1, t0, t1)``."""
        v0, v1, t0, t1 = window
        return self.pixels[v0:v1, t0:t1], self.known[v0:v1, t0:t1]

    def write(self, window: tuple[int, int, int, int], frames: torch.Tensor) -> None:
        """Write a sampled window's decoded frames ``[V_w, T_w, H, W, 3]`` in place: frames not yet
        written become generated and known (frames an earlier window wrote are kept)."""
        v0, v1, t0, t1 = window
        if tuple(frames.shape[:2]) != (v1 - v0, t1 - t0) or frames.shape[2:] != self.pixels.shape[2:]:
            raise InputError(f"window {window} needs frames [{v1 - v0}, {t1 - t0}, {self.pixels.shape[2]}, "
                             f"{self.pixels.shape[3]}, 3], got {list(frames.shape)}.")
        frames = frames.float().cpu()
        new = ~self.written[v0:v1, t0:t1]
        self.out[v0:v1, t0:t1][new] = frames[new]
        self.pixels[v0:v1, t0:t1][new] = frames[new]
        self.known[v0:v1, t0:t1][new] = 1.0
        self.written[v0:v1, t0:t1] = True

    def copy(self) -> "GridCanvas":
        """A deep copy (node outputs are cached by ComfyUI and must never change)."""
        return GridCanvas(*(t.clone() for t in (self.pixels, self.known, self.written, self.out)))


# ----------------------------------------------------------------------------------------------
# Latent masks of known pixels
def latent_mask(known: torch.Tensor, temporal_stride: int = 4, spatial: int = 8) -> torch.Tensor:
    """Wan I2V mask channels from per-pixel knowledge.

    Args:
        known: ``[V, F, H, W]`` in {0, 1} (1 = known pixel), ``F = 4k + 1`` pixel frames.
    Returns:
        ``[V, 4, T_lat, H/8, W/8]``: a latent pixel is known iff its whole ``8 x 8`` patch is;
        channel ``c`` of latent frame ``tau >= 1`` is pixel frame ``4 (tau - 1) + 1 + c``; latent
        frame 0 repeats pixel frame 0 four times (Wan I2V layout).
    """
    v, f, h, w = known.shape
    m = 1.0 - F.max_pool2d(1.0 - known.float().reshape(v * f, 1, h, w), spatial)
    m = m.reshape(v, f, h // spatial, w // spatial)
    m = torch.cat([m[:, :1].repeat(1, temporal_stride, 1, 1), m[:, 1:]], dim=1)
    m = m.reshape(v, -1, temporal_stride, h // spatial, w // spatial)
    return m.transpose(1, 2).contiguous()


def fully_known_latents(known: torch.Tensor, temporal_stride: int = 4) -> torch.Tensor:
    """``[V, T_lat]`` bool: latent frame ``tau`` of row ``v`` is determined by known pixels, i.e.
    pixel frames ``0 .. 4 tau`` of that row are completely known (causal VAE).

    Args:
        known: ``[V, F, H, W]`` in {0, 1}.
    """
    full = known.flatten(2).min(dim=-1).values >= 1.0  # [V, F]
    prefix = torch.cumprod(full.to(torch.int64), dim=1).bool()
    t_lat = (known.shape[1] - 1) // temporal_stride + 1
    idx = torch.arange(t_lat) * temporal_stride
    return prefix[:, idx]
