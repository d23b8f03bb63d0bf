"""Input images: reading any common file and preparing it for 4DNeX.

Images inside fourd_core are float tensors in [0, 1], channels last (``[H, W, 3]``, or
``[B, H, W, 3]`` for batches: the ComfyUI IMAGE convention).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError, brief

#: Smallest accepted input side in pixels.
MIN_SIDE = 32
#: Background used when compositing transparent images (white).
ALPHA_BACKGROUND = 1.0


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file as ``[H, W, 3]`` float32 in [0, 1].

    Applies the EXIF orientation; composites RGBA / LA / palette transparency over white; expands
    grayscale; maps 16-bit and float images to [0, 1] by their own range (not by clipping).

    Raises:
        InputError: missing file, a folder, an image over PIL's decompression-bomb limit
            (``PIL.Image.MAX_IMAGE_PIXELS``), or an unreadable file (the message names the path and the fix).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the path of one image file (PNG, JPEG or WebP).")
    if not path.is_file():
        raise InputError(f"Input image not found: {path}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                im.load()
                return image_to_tensor(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{path} is too large to open safely ({brief(exc)}). Downscale it first, e.g. to at most "
                         f"4096 px on the long side; 4DNeX samples at 720x480 anyway.") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"Could not read {path} as an image ({brief(exc)}). Use a PNG, JPEG or WebP file.") from exc


def image_to_tensor(im: Image.Image) -> torch.Tensor:
    """A PIL image of any mode -> ``[H, W, 3]`` float32 in [0, 1] (see :func:`load_image`)."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.uint16).astype(np.float32) / 65535.0
    elif im.mode == "I":
        a = np.asarray(im, dtype=np.int64)
        arr = a.astype(np.float32) / (65535.0 if a.max() > 255 else 255.0)
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        arr = a if a.max() <= 1.0 else a / a.max()
    elif im.mode in ("RGB", "RGBA", "L", "LA"):
        arr = np.asarray(im, dtype=np.float32) / 255.0
    else:  # CMYK, YCbCr, HSV, 1 ...
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return to_rgb(torch.from_numpy(np.ascontiguousarray(arr)))


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """Normalise channels: ``[H, W]``, ``[H, W, 1|2|3|4]`` (or batched ``[B, H, W, C]``) -> 3 channels.

    Gray is repeated; an alpha channel is composited over white. Values are clamped to [0, 1].

    Raises:
        InputError: unsupported channel count or NaN/inf values.
    """
    x = image.float()
    if x.ndim == 2 or (x.ndim == 3 and x.shape[-1] not in (1, 2, 3, 4)):
        x = x.unsqueeze(-1)
    c = x.shape[-1]
    if c not in (1, 2, 3, 4):
        raise InputError(f"Images need 1-4 channels (gray, gray+alpha, RGB, RGBA), got {c}.")
    if not torch.isfinite(x).all():
        raise InputError("The image contains NaN or inf values.")
    if c in (2, 4):
        alpha = x[..., -1:].clamp(0, 1)
        x = x[..., :-1] * alpha + ALPHA_BACKGROUND * (1 - alpha)
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    return x.clamp(0, 1).contiguous()


def max_area_size(height: int, width: int, max_area: int = 480 * 720, mod: int = 16) -> tuple[int, int]:
    """The official 4DNeX / Wan resize rule (official 3DTopia/4DNeX @ 1101bc6: ``inference.py``): keep the aspect ratio, area
    ``max_area``, both sides floored to multiples of ``mod``.

    ``h = floor(round(sqrt(max_area * ar)) / mod) * mod``, ``w = floor(round(sqrt(max_area / ar)) / mod) * mod``
    with ``ar = height / width``. Example: 720x480 -> 480x720; 16:9 -> 432x784; 1:1 -> 576x576.
    """
    ar = height / width
    h = int(round(math.sqrt(max_area * ar))) // mod * mod
    w = int(round(math.sqrt(max_area / ar))) // mod * mod
    return h, w


def single_image(image: torch.Tensor) -> torch.Tensor:
    """The one image of ``[H, W, C]`` or ``[1, H, W, C]`` (a ComfyUI IMAGE batch of one), as ``[H, W, C]``.

    Raises:
        InputError: a batch of several images (4DNeX starts from one photo).
    """
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise InputError(f"4DNeX takes one image, got a batch of {image.shape[0]}; pick one (e.g. ImageFromBatch).")
        image = image[0]
    return image


def prepare_image(image: torch.Tensor, height: int = 480, width: int = 720, mode: str = "crop") -> torch.Tensor:
    """Resize an input image for 4DNeX sampling.

    Args:
        image: ``[H, W, C]`` (or ``[1, H, W, C]``) float in [0, 1]; C in 1..4 (see :func:`to_rgb`).
        height, width: target size of one modality (the LoRA was trained at 480x720 only).
        mode: ``"crop"`` - scale to cover ``height x width`` and centre-crop (stays in the training
            distribution; default); ``"max_area"`` - the official rule, keeping the aspect ratio with
            area ``height * width`` (:func:`max_area_size`), out of distribution for non-3:2 inputs.
    Returns:
        ``[h, w, 3]`` float32 in [0, 1] (``h, w = height, width`` in crop mode).
    Raises:
        InputError: batch of several images, too small image (< 32 px side), bad mode or size.
    """
    x = to_rgb(single_image(image))
    h0, w0 = x.shape[:2]
    if min(h0, w0) < MIN_SIDE:
        raise InputError(f"The image is {w0}x{h0} px; at least {MIN_SIDE} px per side are needed (480x720 is ideal).")
    if height % 16 or width % 16 or height < 32 or width < 32:
        raise InputError(f"Target size (width x height) must be multiples of 16 and >= 32, got {width}x{height}.")
    if mode == "max_area":
        th, tw = max_area_size(h0, w0, height * width)
        return _resize(x, th, tw)
    if mode != "crop":
        raise InputError(f"mode must be 'crop' or 'max_area', got {mode!r}.")
    scale = max(height / h0, width / w0)
    rh, rw = max(height, round(h0 * scale)), max(width, round(w0 * scale))
    x = _resize(x, rh, rw)
    top, left = (rh - height) // 2, (rw - width) // 2
    return x[top: top + height, left: left + width].contiguous()


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(x.shape[:2]) == (h, w):
        return x
    y = torch.nn.functional.interpolate(x.permute(2, 0, 1)[None], size=(h, w), mode="bicubic", antialias=True,
                                        align_corners=False)
    return y[0].permute(1, 2, 0).clamp(0, 1).contiguous()
