"""Reading weight files safely: safetensors (incl. fp8 and ComfyUI "scaled fp8") and ``.pt`` files
through ``torch.load(weights_only=True)``. Never unpickles arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import WeightsError, brief

FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def _check_exists(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"{what} not found: {path}. Check the path (or download the file there).")
    return path


def check_safetensors_complete(path: str | Path) -> None:
    """Check a ``.safetensors`` file's structure from its header alone, without reading tensors.

    The format (safetensors specification, huggingface/safetensors ``README.md``): an 8-byte
    little-endian header length N, N bytes of JSON ``{name: {dtype, shape, data_offsets: [b, e]}}``,
    then the data; every ``e`` must lie within the file. A truncated download fails here in
    microseconds instead of minutes into loading (or with a raw traceback). The header is read by
    hand only to word these size errors (the safetensors library's errors carry no sizes); the
    library itself (:func:`safetensors_keys`) then validates the rest: dtypes, shapes, contiguous
    offsets, no trailing bytes.

    Raises:
        WeightsError: missing, truncated or malformed file (the message says to download it again).
    """
    import json
    import struct

    path = _check_exists(Path(path), "Weights file")
    fix = "The file is truncated or corrupt (an interrupted download?): download it again."
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise WeightsError(f"{path} is {size} bytes, too short for a .safetensors file. {fix}")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 * 2**20):
                raise WeightsError(f"{path} has a header of {n} bytes but only {size} bytes in all. {fix}")
            header = json.loads(f.read(n))
    except WeightsError:
        raise
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable .safetensors file ({brief(exc)}). {fix}") from exc
    if not isinstance(header, dict):
        raise WeightsError(f"{path} has a malformed header. {fix}")
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        raise WeightsError(f"{path} is {size:,} bytes but its header describes {8 + n + end:,} bytes. {fix}")
    safetensors_keys(path)  # everything else the library would refuse at load time, refused now


#: safetensors dtypes model weights may have (floating point, fp8 included)
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"})
#: tensors that are integer index buffers, not weights (e.g. CLIP's ``embeddings.position_ids``)
INDEX_BUFFER_SUFFIXES = ("position_ids",)


def check_weight_dtypes(path: str | Path, what: str = "weights file") -> None:
    """Refuse a ``.safetensors`` weights file holding a tensor that is not floating point (integer or
    bool weights: another quantisation format, or a corrupt file), from its header alone, before any
    model is built. Integer index buffers (:data:`INDEX_BUFFER_SUFFIXES`) are allowed.

    Raises:
        WeightsError: names the first offending tensor, its dtype and the fix.
    """
    from safetensors import safe_open

    path = _check_exists(Path(path), "Weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype not in FLOAT_DTYPES and not name.endswith(INDEX_BUFFER_SUFFIXES) and name != "scaled_fp8":
                    raise WeightsError(
                        f"{path}: tensor {name} is stored as {dtype}, but a {what} holds floating-point weights "
                        "(float32/16, bfloat16 or fp8). The file is quantised in a format FourD does not read, or "
                        "corrupt: use the fp16, bf16 or fp8 release of the model.")
    except WeightsError:
        raise
    except Exception as exc:  # safetensors raises several error types for corrupt headers
        raise WeightsError(f"{path} is not a readable .safetensors file ({brief(exc)}). It may be truncated or "
                           "corrupt: download it again.") from exc


def safetensors_keys(path: str | Path) -> list[str]:
    """Tensor names in a ``.safetensors`` file, read from its header only.

    Raises:
        WeightsError: missing or unreadable/corrupt file.
    """
    from safetensors import safe_open

    path = _check_exists(Path(path), "Weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises several error types for corrupt headers
        raise WeightsError(f"{path} is not a readable .safetensors file ({brief(exc)}). It may be truncated or corrupt: "
                           "download it again.") from exc


def load_safetensors(path: str | Path, *, dtype: torch.dtype | None = None, keep_fp8: bool = False,
                     keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Load tensors from a ``.safetensors`` file one at a time (peak memory ~ the result).

    ComfyUI "scaled fp8" checkpoints (a ``scaled_fp8`` marker and ``<layer>.scale_weight`` tensors)
    are de-quantised: ``W = W_fp8 * scale_weight``; ``.scale_input`` tensors are dropped.

    Args:
        dtype: cast floating tensors to this dtype (None: keep). fp8 tensors are cast too unless
            ``keep_fp8`` (then they stay fp8 for fp8 weight storage).
        keys: optional subset of names to load.
    Returns:
        ``{name: tensor}`` on CPU.
    Raises:
        WeightsError: missing, corrupt or truncated file.
    """
    from safetensors import safe_open

    path = _check_exists(Path(path), "Weights file")
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys()) if keys is None else keys
            scaled = "scaled_fp8" in names or any(n.endswith(".scale_weight") for n in names)
            for name in names:
                if name == "scaled_fp8" or name.endswith(".scale_input") or name.endswith(".scale_weight"):
                    continue
                t = f.get_tensor(name)
                if scaled and t.dtype in FP8_DTYPES:
                    sname = name[: -len(".weight")] + ".scale_weight" if name.endswith(".weight") else None
                    if sname is not None and sname in names:
                        s = f.get_tensor(sname).float()
                        t = t.float() * (s if s.ndim == 0 else s.view(-1, *([1] * (t.ndim - 1))))
                if dtype is not None and t.is_floating_point() and not (keep_fp8 and t.dtype in FP8_DTYPES):
                    t = t.to(dtype)
                out[name] = t
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"Could not read {path} ({brief(exc)}). The file may be truncated or corrupt: download it again.") from exc
    return out


def load_tensor_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a weights file of any supported format into ``{name: tensor}``.

    ``.safetensors`` files are read with safetensors; ``.pt``/``.pth``/``.bin`` with
    ``torch.load(weights_only=True)`` (plain tensors or dicts of tensors only; anything that needs
    unpickling code is refused). A bare tensor is returned as ``{"": tensor}``.

    Raises:
        WeightsError: missing/corrupt file, or a pickle that is not plain tensors.
    """
    path = _check_exists(Path(path), "Weights file")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        import pickle

        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch's own text is several lines and suggests loading with weights_only=False: never do that
            raise WeightsError(f"{path} is not a plain tensor file: it holds Python objects that need code to unpickle, "
                               "which FourD never runs (torch.load(weights_only=True) refused it). Use the release's "
                               "file, or convert the tensors to .safetensors.") from exc
        except Exception as exc:
            raise WeightsError(f"Could not load {path} with torch.load(weights_only=True) ({brief(exc)}). Only plain "
                               "tensors are accepted; convert the file to .safetensors.") from exc
        if isinstance(obj, torch.Tensor):
            if not obj.is_floating_point():
                raise WeightsError(f"{path} holds a {obj.dtype} tensor, but weights are floating point. The file is "
                                   "not a weights file of this model, or corrupt.")
            return {"": obj}
        if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            bad = next((k for k, v in obj.items() if not v.is_floating_point()), None)
            if bad is not None:
                raise WeightsError(f"{path}: tensor {bad} is {obj[bad].dtype}, but weights are floating point. The "
                                   "file is not a weights file of this model, or corrupt.")
            return dict(obj)
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a tensor or a dict of tensors.")
    raise WeightsError(f"Unsupported weights file type {path.suffix!r} ({path}); use .safetensors or .pt.")
