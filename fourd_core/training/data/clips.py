"""What the readers return, and their configurations.

Two kinds of samples:

* :class:`GridClip` - a ``V x T`` grid of frames (pseudo-4D grids, multi-view video folders, grids
  written by :func:`~fourd_core.training.data.multiview.write_grid_sample`), for the ``sync`` and
  ``fused`` objectives;
* :class:`RGBXYZClip` - an RGB video and its XYZ point-map video made with the 4DNeX recipe
  (4DNeX-10M annotations, plain RGB-D video, ``scene.safetensors``), for the ``lora`` objective.

Every reader is a :class:`SampleSource`: ``len(source)``, ``source.names()`` (unique, file-system
safe) and ``source.read(i)``. ``read`` raises :class:`~fourd_core.errors.InputError` naming the
sample and the fix for anything it cannot use; it never substitutes another sample.
"""

from __future__ import annotations

import dataclasses

import torch

from ...errors import InputError

GRID = "grid"
FOURDNEX = "fourdnex"


def _check_size(height: int, width: int, what: str) -> None:
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v < 32 or v % 16:
            raise InputError(f"{what} {name} must be a multiple of 16 and >= 32 (Wan: VAE stride 8 x patch 2), got "
                             f"{v}. Pick e.g. 480x720 (4DNeX) or 96x144 (tiny preset).")


@dataclasses.dataclass
class GridDataConfig:
    """Size of the grids the grid readers produce.

    Attributes:
        views: V, rows of the grid (>= 2; the paper trains 8 x 8 grids).
        frames: T, frames per row, ``4k + 1`` (Wan's causal VAE: 49 -> 13 latent frames).
        height, width: frame size in pixels, multiples of 16 (clips are resized to cover and
            centre-cropped, :func:`~fourd_core.training.data.frames.resize_cover_crop`).
        frame_stride: take every ``frame_stride``-th frame of the source clip (1 = all).
    """

    views: int = 8
    frames: int = 49
    height: int = 480
    width: int = 720
    frame_stride: int = 1

    def validate(self) -> None:
        """Raise :class:`InputError` naming the fix for any invalid field."""
        if not isinstance(self.views, int) or self.views < 2:
            raise InputError(f"A grid needs at least 2 views, got views={self.views}.")
        if not isinstance(self.frames, int) or self.frames < 5 or (self.frames - 1) % 4:
            raise InputError(f"Grid frames must be 4k+1 and >= 5 (e.g. 9, 25, 49), got {self.frames}.")
        _check_size(self.height, self.width, "Grid")
        if not isinstance(self.frame_stride, int) or self.frame_stride < 1:
            raise InputError(f"frame_stride must be an integer >= 1, got {self.frame_stride}.")

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // 4 + 1


@dataclasses.dataclass
class FourDNeXDataConfig:
    """The 4DNeX training-data recipe (``build_wan_dataset.py`` and ``WanI2VDatasetWithResize`` of
    3DTopia/4DNeX; defaults = the released LoRA's data).

    Attributes:
        height, width: size of one modality (480 x 720), multiples of 16.
        num_frames: frames per sample, ``4k + 1`` (49: the official dataset keeps the first 13
            latent frames of its 81-frame videos, which equal an encode of the first 49 frames).
        max_frames: frames of a clip read before normalisation (official 81). The global XYZ scale
            is taken over these frames, so frames after ``num_frames`` still matter. The official
            dynamic_3 reader ignores this cap (it uses every frame in the npz); ours does the same
            for that format.
        percentile: per-frame, per-axis clipping percentile (official 2 -> the 2nd-98th range).
        unprojection: for depth formats: ``"official"`` - the 4DNeX dynamic-set unprojection,
            which uses only ``fx`` and puts the principal point at ``(W // 2, H // 2)`` (``fy``,
            ``cx``, ``cy`` are ignored); ``"full"`` - the pinhole model with ``fx, fy, cx, cy``.
            Default ``"official"`` for 4DNeX-10M, so a fine-tune sees what the released LoRA saw;
            the generic RGB-D and scene readers default to ``"full"``.
    """

    height: int = 480
    width: int = 720
    num_frames: int = 49
    max_frames: int = 81
    percentile: float = 2.0
    unprojection: str = "official"

    def validate(self) -> None:
        """Raise :class:`InputError` naming the fix for any invalid field."""
        _check_size(self.height, self.width, "4DNeX")
        if not isinstance(self.num_frames, int) or self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise InputError(f"num_frames must be 4k+1 (e.g. 13, 25, 49), got {self.num_frames}.")
        if not isinstance(self.max_frames, int) or self.max_frames < self.num_frames:
            raise InputError(f"max_frames ({self.max_frames}) must be >= num_frames ({self.num_frames}).")
        if not 0.0 <= float(self.percentile) < 50.0:
            raise InputError(f"percentile must be in [0, 50) (official 2), got {self.percentile}.")
        if self.unprojection not in ("official", "full"):
            raise InputError(f"unprojection must be 'official' (fx only, principal point W//2, H//2) or 'full', got "
                             f"{self.unprojection!r}.")

    @property
    def latent_frames(self) -> int:
        return (self.num_frames - 1) // 4 + 1


@dataclasses.dataclass
class GridClip:
    """One ``V x T`` grid sample in pixels.

    Attributes:
        name: unique, file-system safe sample name.
        frames: ``[V, T, H, W, 3]`` float32 in [0, 1]; ``frames[v, t]`` = view ``v`` at time ``t``
            (row 0 = the fixed-view video, column 0 = the freeze-time frames, as the grid sampler).
        valid: ``[V, H, W]`` bool, the pixels of each row that come from the source (the same for
            every frame of the row); None = all valid.
        prompt: caption ("" if none).
        K, cam_to_world: optional cameras ``[V, 3, 3]`` / ``[V, 4, 4]`` (one per view) or
            ``[V, T, 3, 3]`` / ``[V, T, 4, 4]``; OpenCV axes, pixels of ``frames``.
        source: where it came from (JSON-serialisable), stored in the cache's metadata.
    """

    name: str
    frames: torch.Tensor
    valid: torch.Tensor | None = None
    prompt: str = ""
    K: torch.Tensor | None = None
    cam_to_world: torch.Tensor | None = None
    source: dict = dataclasses.field(default_factory=dict)

    @property
    def num_views(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_times(self) -> int:
        return int(self.frames.shape[1])

    def known(self) -> torch.Tensor:
        """``[V, T, H, W]`` float32 in {0, 1}: the pixels the grid sampler is given - row 0 (all
        frames) and column 0 (valid pixels), as :meth:`fourd_core.pipelines.grid_canvas.GridCanvas.start`."""
        v, t, h, w = self.frames.shape[:4]
        known = torch.zeros(v, t, h, w)
        known[0] = 1.0 if self.valid is None else self.valid[0].float()
        known[1:, 0] = 1.0 if self.valid is None else self.valid[1:].float()
        return known

    def sampler_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(fixed_view [T, H, W, 3], freeze_time [V, H, W, 3], holes [V, H, W] or None)``: the
        arguments of :func:`fourd_core.pipelines.grid.generate_grid` that reproduce this grid's
        known row and column (holes = invalid pixels, float32 1 = hole), e.g. for validation previews."""
        holes = None if self.valid is None else (~self.valid).float()
        return self.frames[0], self.frames[:, 0], holes

    def valid_pixels(self) -> torch.Tensor:
        """``[V, T, H, W]`` float32 in {0, 1}: :attr:`valid` repeated over time (all ones if None)."""
        v, t, h, w = self.frames.shape[:4]
        if self.valid is None:
            return torch.ones(v, t, h, w)
        return self.valid.float()[:, None].expand(v, t, h, w).contiguous()


@dataclasses.dataclass
class RGBXYZClip:
    """One 4DNeX training sample in pixels.

    Attributes:
        name: unique, file-system safe sample name.
        rgb: ``[F, H, W, 3]`` float32 in [0, 1] (cover-resized bilinear, centre-cropped, ping-pong
            padded to ``F = num_frames``).
        xyz: ``[F, H, W, 3]`` float32 in [-1, 1]: first-camera axes, per-frame clipped and
            bounding-box centred, one global scale; nearest-resized and cropped like ``rgb``.
        caption: the caption *without* the ``" POINTMAP_STYLE."`` suffix (see :attr:`prompt`).
        center: ``[T, 3]`` float64, the per-frame centres removed (first-camera units).
        scale: the global scale divided by (first-camera units per XYZ unit).
        source: where it came from (JSON-serialisable).
    """

    name: str
    rgb: torch.Tensor
    xyz: torch.Tensor
    caption: str = ""
    center: torch.Tensor | None = None
    scale: float = 1.0
    source: dict = dataclasses.field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The training prompt: caption + ``" POINTMAP_STYLE."`` (:data:`fourd_core.pipelines.fourdnex.PROMPT_SUFFIX`)."""
        from ...pipelines.fourdnex import PROMPT_SUFFIX

        return self.caption + PROMPT_SUFFIX


class SampleSource:
    """Base of the readers: a list of entries, each read on demand.

    Subclasses set ``kind`` (:data:`GRID` or :data:`FOURDNEX`), fill ``self._names`` (and whatever
    they need per entry) in ``__init__``, and implement :meth:`read`.
    """

    kind: str = ""

    def __init__(self):
        self._names: list[str] = []

    def __len__(self) -> int:
        return len(self._names)

    def names(self) -> list[str]:
        """The sample names, in reading order."""
        return list(self._names)

    def read(self, index: int):
        """The sample ``index`` (a :class:`GridClip` or :class:`RGBXYZClip`).

        Raises:
            InputError: the sample cannot be used (the message names it and the fix).
        """
        raise NotImplementedError

    def config_dict(self) -> dict:
        """The settings that decide the samples' content (part of the cache's identity)."""
        return {"reader": type(self).__name__}

    def _finish(self, what: str, where, layout: str) -> None:
        """Refuse an empty source and duplicate names (raised before any model loads)."""
        if not self._names:
            raise InputError(f"No {what} found in {where}. Expected: {layout}")
        seen: dict[str, int] = {}
        for i, n in enumerate(self._names):
            if n in seen:
                raise InputError(f"Two samples of {where} get the same name {n!r} (entries {seen[n]} and {i}); rename "
                                 "one of them.")
            seen[n] = i
