"""Pseudo-4D grids from ordinary videos (4Real-Video Sec. 3.3, training data source (1)).

"We apply a sequence of continuous 2D affine transformations to video frames to mimic camera
motion." From one clip of ``T`` frames this module makes a ``V x T`` grid::

    grid[v, t] = A_v(frame_t),    A_0 = identity,

so row 0 is the clip itself (the fixed-view video of the grid sampler) and column 0 is the clip's
first frame under the view transforms (the freeze-time video), exactly the layout the sampler fills
(:mod:`fourd_core.pipelines.grid_canvas`). Every view is a static "camera": ``A_v`` does not change
over time, so the grid is synchronised by construction.

The transforms (pixel coordinates, pixel centres at integers, ``c = ((W - 1) / 2, (H - 1) / 2)``)::

    dst = M_v (src - c) + c + t_v,     M_v = s_v R(theta_v) Sh(k_v),
    R(theta) = [[cos, -sin], [sin, cos]],  Sh(k) = [[1, tan k], [0, 1]],  t_v = (tx_v W, ty_v H)

(``y`` points down, so a positive ``theta`` turns the picture clockwise on screen). The warped view
samples the frame bilinearly at ``src = M_v^-1 (dst - c - t_v) + c``.

The sequence over views is smooth and seeded: for every parameter ``p`` in (rotation, log-scale,
tx, ty, shear) one endpoint ``e ~ U(-r, r)`` and one bend ``b ~ U(-curvature, curvature)`` are
drawn, and view ``v`` gets ``p(u) = e u (1 + b (1 - u))`` with ``u = v / (V - 1)``. For
``curvature <= 1`` the path is monotone from 0 (view 0: the identity) to ``e`` (the last view), so
``|p| <= r`` everywhere. The ranges ``r`` (:class:`PseudoGridConfig`) are this pack's choice: the
paper gives none.

Validity: a destination pixel is *valid* when its source point lies inside the frame,
``0 <= src_x <= W - 1`` and ``0 <= src_y <= H - 1`` (all four bilinear taps inside); other pixels
are filled with ``fill`` (mid-gray 0.5 = 0 in the VAE's [-1, 1], what the grid sampler puts in
unknown pixels). **How the trainer uses it:** the cache stores the validity at latent resolution
(a latent pixel is valid when its whole 8 x 8 patch is, in every pixel frame it encodes) and the
loss is *masked*: ``sum(valid * (pred - target)^2) / sum(valid)``; the invalid pixels of column 0
are also *unknown* in the I2V condition (mask 0, gray), as holes of a rendered freeze-time frame
are at sampling time. Cropping instead is not offered: a rotated view has invalid corners that no
axis-aligned crop of the common size removes without zooming.

Folder layout (:class:`PseudoGridSource`)::

    <root>/
      <name>.mp4            one ordinary video per sample (any of .mp4 .mov .mkv .webm .avi .m4v .gif)
      <name>/               ... or a folder of numbered frames (.png .jpg .webp ...)
      <name>.txt            optional caption (UTF-8); none = the empty prompt

Each clip gives one grid: its first ``frames * frame_stride`` frames (every ``frame_stride``-th),
resized to cover ``height x width`` and centre-cropped, with transforms seeded by
``seed_for(seed, name)`` (reproducible, independent of rank and order).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import InputError
from ...util.text import read_text_file
from .clips import GRID, GridClip, GridDataConfig, SampleSource
from .frames import VIDEO_EXTS, frame_files, natural_key, read_frames, resize_cover_crop, safe_name, seed_for

PARAMETERS = ("rotation_deg", "log_scale", "tx", "ty", "shear_deg")


@dataclasses.dataclass
class PseudoGridConfig:
    """Ranges of the view transforms (the largest value any view reaches; the last view draws its
    endpoint uniformly in ``[-range, range]``).

    Attributes:
        max_rotation_deg: rotation range in degrees (default 8).
        max_scale: scale range: ``s`` in ``[1 / (1 + max_scale), 1 + max_scale]`` (log-uniform
            endpoint; default 0.1).
        max_translation: translation range as a fraction of the width (x) and height (y)
            (default 0.08).
        max_shear_deg: shear angle range in degrees (default 4).
        curvature: bend of the path over views in [0, 1] (0 = parameters linear in the view index).
        fill: value of invalid pixels, in [0, 1] (0.5 = mid-gray).
        seed: base seed; each grid uses ``seed_for(seed, name)``.
    """

    max_rotation_deg: float = 8.0
    max_scale: float = 0.1
    max_translation: float = 0.08
    max_shear_deg: float = 4.0
    curvature: float = 0.5
    fill: float = 0.5
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`InputError` naming the fix for any invalid field."""
        checks = (("max_rotation_deg", 0.0, 90.0), ("max_scale", 0.0, 1.0), ("max_translation", 0.0, 0.5),
                  ("max_shear_deg", 0.0, 45.0), ("curvature", 0.0, 1.0), ("fill", 0.0, 1.0))
        for name, lo, hi in checks:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi):
                raise InputError(f"PseudoGridConfig.{name} must be in [{lo}, {hi}], got {v}.")

    def ranges(self) -> dict[str, float]:
        """The range ``r`` of each parameter of :data:`PARAMETERS`."""
        return {"rotation_deg": float(self.max_rotation_deg), "log_scale": math.log1p(self.max_scale),
                "tx": float(self.max_translation), "ty": float(self.max_translation),
                "shear_deg": float(self.max_shear_deg)}


@dataclasses.dataclass
class ViewTransforms:
    """The ``V`` view transforms of one grid (view 0 is the identity).

    Attributes:
        rotation_deg, scale, shear_deg: ``[V]`` float64 (degrees, factor, degrees).
        tx, ty: ``[V]`` float64 translations in pixels.
        matrices: ``[V, 3, 3]`` float64 forward maps ``dst = A src`` in pixel coordinates
            (centres at integers), see the module docstring.
    """

    rotation_deg: torch.Tensor
    scale: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    shear_deg: torch.Tensor
    matrices: torch.Tensor


def view_parameters(num_views: int, config: PseudoGridConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The smooth, seeded parameter paths ``p_v = e u (1 + b (1 - u))``, ``u = v / (V - 1)``.

    Returns:
        ``{name: [V] float64}`` for :data:`PARAMETERS` (``tx``, ``ty`` as fractions of W, H;
        ``log_scale`` natural log). ``p_0 = 0`` for every parameter.
    """
    u = torch.arange(num_views, dtype=torch.float64) / max(num_views - 1, 1)
    out = {}
    for name, r in config.ranges().items():
        e = (torch.rand((), generator=generator, dtype=torch.float64) * 2 - 1) * r
        b = (torch.rand((), generator=generator, dtype=torch.float64) * 2 - 1) * config.curvature
        out[name] = e * u * (1 + b * (1 - u))
    return out


def affine_matrices(params: dict[str, torch.Tensor], height: int, width: int) -> ViewTransforms:
    """Forward pixel maps from parameters (:func:`view_parameters`), see the module docstring."""
    th = torch.deg2rad(params["rotation_deg"])
    k = torch.deg2rad(params["shear_deg"])
    s = torch.exp(params["log_scale"])
    tx, ty = params["tx"] * width, params["ty"] * height
    v = th.shape[0]
    rot = torch.stack([torch.stack([th.cos(), -th.sin()], -1), torch.stack([th.sin(), th.cos()], -1)], -2)
    shear = torch.zeros(v, 2, 2, dtype=torch.float64)
    shear[:, 0, 0] = 1
    shear[:, 1, 1] = 1
    shear[:, 0, 1] = torch.tan(k)
    m = s[:, None, None] * rot @ shear
    c = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64)
    a = torch.zeros(v, 3, 3, dtype=torch.float64)
    a[:, :2, :2] = m
    a[:, :2, 2] = c - (m @ c) + torch.stack([tx, ty], -1)
    a[:, 2, 2] = 1
    return ViewTransforms(params["rotation_deg"], s, tx, ty, params["shear_deg"], a)


def view_transforms(num_views: int, height: int, width: int, config: PseudoGridConfig | None = None,
                    seed: int = 0) -> ViewTransforms:
    """The view transforms of one grid, from ``seed`` (a CPU ``torch.Generator``).

    Raises:
        InputError: fewer than 1 view or a bad config.
    """
    config = config or PseudoGridConfig()
    config.validate()
    if num_views < 1:
        raise InputError(f"num_views must be >= 1, got {num_views}.")
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return affine_matrices(view_parameters(num_views, config, gen), height, width)


def warp_frames(frames: torch.Tensor, matrix: torch.Tensor, fill: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp frames by one forward affine map (``torch.nn.functional.affine_grid`` + ``grid_sample``).

    Args:
        frames: ``[T, H, W, C]`` float (float32 or float64).
        matrix: ``[3, 3]`` forward map ``dst = A src`` in pixel coordinates (centres at integers).
        fill: value of pixels whose source lies outside the frame.
    Returns:
        ``(warped [T, H, W, C]`` same dtype, bilinear, ``valid [H, W]`` bool: source inside
        ``[0, W-1] x [0, H-1]``).
    """
    t, h, w, c = frames.shape
    inv = torch.linalg.inv(matrix.double())[:2]                        # src = inv @ [dst, 1]
    # normalised coordinates of align_corners=False: n = D p + e, D = diag(2/W, 2/H), e = 1/size - 1
    d = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64)
    e = torch.tensor([1.0 / w - 1.0, 1.0 / h - 1.0], dtype=torch.float64)
    lin = d[:, None] * inv[:, :2] / d[None, :]                         # D L D^-1
    theta = torch.cat([lin, (d * inv[:, 2] + e - lin @ e)[:, None]], dim=1)
    grid = F.affine_grid(theta[None].to(frames.dtype if frames.dtype == torch.float64 else torch.float32),
                         [1, c, h, w], align_corners=False)
    x = frames.permute(0, 3, 1, 2)
    x = x if x.dtype == torch.float64 else x.float()
    warped = F.grid_sample(x - fill, grid.expand(t, -1, -1, -1).to(x.dtype), mode="bilinear",
                           padding_mode="zeros", align_corners=False) + fill
    # validity from the exact float64 source coordinates of every pixel centre
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    eps = 1e-9
    valid = (sx >= -eps) & (sx <= w - 1 + eps) & (sy >= -eps) & (sy <= h - 1 + eps)
    return warped.permute(0, 2, 3, 1).contiguous(), valid


@dataclasses.dataclass
class PseudoGrid:
    """A pseudo-4D grid.

    Attributes:
        frames: ``[V, T, H, W, C]`` float32 (``frames[0]`` is the clip itself, bit-exact).
        valid: ``[V, H, W]`` bool (view 0 all True).
        transforms: the :class:`ViewTransforms` used.
    """

    frames: torch.Tensor
    valid: torch.Tensor
    transforms: ViewTransforms


def make_pseudo_grid(clip: torch.Tensor, num_views: int, config: PseudoGridConfig | None = None,
                     seed: int = 0) -> PseudoGrid:
    """``grid[v, t] = A_v(clip[t])`` (4Real-Video Sec. 3.3 (1)); ``A_0`` is the identity.

    Args:
        clip: ``[T, H, W, C]`` float in [0, 1].
        num_views: V >= 1. config: the transform ranges. seed: seeds :func:`view_transforms`.
    Returns:
        :class:`PseudoGrid` (row 0 = ``clip``, column 0 = the first frame under every transform).
    Raises:
        InputError: a clip that is not ``[T, H, W, C]``, non-finite values, or a bad config.
    """
    config = config or PseudoGridConfig()
    if clip.ndim != 4:
        raise InputError(f"A clip must be [T, H, W, C], got {list(clip.shape)}.")
    if not torch.isfinite(clip).all():
        raise InputError("The clip contains NaN or inf values.")
    t, h, w, c = clip.shape
    tf = view_transforms(num_views, h, w, config, seed)
    frames = torch.empty(num_views, t, h, w, c, dtype=torch.float32)
    valid = torch.ones(num_views, h, w, dtype=torch.bool)
    frames[0] = clip.float()
    for v in range(1, num_views):
        frames[v], valid[v] = warp_frames(clip.float(), tf.matrices[v], config.fill)
    return PseudoGrid(frames, valid, tf)


class PseudoGridSource(SampleSource):
    """Pseudo-4D grid samples from a folder of ordinary videos (layout: module docstring).

    Args:
        root: the folder (or a list of video files / frame folders).
        grid: the grid size. transforms: the transform ranges and seed.
    Raises:
        InputError: a bad config, a missing folder, no videos in it (all before any model loads).
    """

    kind = GRID

    def __init__(self, root: str | Path | list, grid: GridDataConfig | None = None,
                 transforms: PseudoGridConfig | None = None):
        super().__init__()
        self.grid = grid or GridDataConfig()
        self.grid.validate()
        self.transforms = transforms or PseudoGridConfig()
        self.transforms.validate()
        if isinstance(root, (list, tuple)):
            self.paths = [Path(p) for p in root]
            where = f"the {len(self.paths)} paths given"
        else:
            root = Path(root).expanduser()
            if not root.is_dir():
                raise InputError(f"Video folder not found: {root}.")
            entries = sorted(root.iterdir(), key=lambda p: natural_key(p.name))
            self.paths = [p for p in entries if not p.name.startswith(".") and
                          (p.suffix.lower() in VIDEO_EXTS or (p.is_dir() and _has_frames(p)))]
            where = str(root)
        self._names = [safe_name(p.stem if p.is_file() else p.name) for p in self.paths]
        self._finish("videos", where, "<root>/<name>.mp4 (or another video type, or <name>/ with numbered frames), "
                     "optional <name>.txt captions.")

    def config_dict(self) -> dict:
        return {"reader": "PseudoGridSource", "grid": dataclasses.asdict(self.grid),
                "transforms": dataclasses.asdict(self.transforms)}

    def read(self, index: int) -> GridClip:
        """The grid of clip ``index`` (:class:`GridClip`; ``valid`` = the transforms' validity).

        Raises:
            InputError: a corrupt or unreadable video, or a clip shorter than the grid.
        """
        path, name, g = self.paths[index], self._names[index], self.grid
        need = (g.frames - 1) * g.frame_stride + 1
        n = _frame_count(path)
        if n is not None and n < need:
            raise InputError(f"{name}: the clip has {n} frames but a grid of {g.frames} frames (stride "
                             f"{g.frame_stride}) needs {need}. Use longer clips or fewer grid frames.")
        try:
            clip = read_frames(path, 0, need, what="Video")
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from exc
        clip = resize_cover_crop(clip[::g.frame_stride], g.height, g.width)
        seed = seed_for(self.transforms.seed, name)
        grid = make_pseudo_grid(clip, g.views, self.transforms, seed)
        caption = path.with_suffix(".txt") if path.is_file() else path.parent / f"{path.name}.txt"
        prompt = read_text_file(caption, "Caption file").strip() if caption.is_file() else ""
        tf = grid.transforms
        return GridClip(name=name, frames=grid.frames, valid=grid.valid, prompt=prompt,
                        source={"path": str(path), "seed": seed,
                                "transforms": {k: getattr(tf, k).tolist() for k in
                                               ("rotation_deg", "scale", "tx", "ty", "shear_deg")}})


def _has_frames(folder: Path) -> bool:
    try:
        frame_files(folder)
        return True
    except InputError:
        return False


def _frame_count(path: Path) -> int | None:
    """Frames of a frame folder (a video's count is only known after decoding: None)."""
    if path.is_dir():
        return len(frame_files(path))
    return None

