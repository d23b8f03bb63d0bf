"""Reading the 4DNeX-10M ``.npz`` files without running pickled code.

The static annotations store one Python ``dict`` of arrays as a 0-d object array (the official
reader calls ``np.load(allow_pickle=True)`` and ``.item()``), which plain ``np.load`` cannot read
without unpickling. :func:`load_npz_arrays` reads plain arrays with ``allow_pickle=False`` and
object members through a **restricted unpickler** that only rebuilds numpy arrays, numpy dtypes and
plain containers (dict, list, tuple, str, numbers): any other global (a function, a class of some
library) is refused, so a malicious file cannot run code. This is the same safeguard as
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from ...errors import InputError, brief

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"),
    ("_codecs", "encode"),  # how pickle protocol 2 stores bytes
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _object_member(data: bytes):
    f = io.BytesIO(data)
    major, _minor = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    _shape, _fortran, dtype = read_header(f)
    if not dtype.hasobject:
        raise ValueError("not an object array")
    return _ArrayUnpickler(f).load()


def load_npz_arrays(path: str | Path, what: str = "Annotation") -> dict[str, np.ndarray]:
    """All arrays of an ``.npz``; a member holding one dict (a 0-d object array) is flattened into
    its entries, as the official reader does.

    Returns:
        ``{name: np.ndarray}`` (dict entries that are not arrays are converted with ``np.asarray``).
    Raises:
        InputError: a missing or corrupt file, or an object member that needs code to unpickle.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}.")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{what} file {path} is not an .npz (zip) archive: it is corrupt or truncated. Download it "
                         "again.")
    out: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            for key in names:
                try:
                    out[key] = npz[key]
                except ValueError:  # an object array: read it below without arbitrary code
                    out[key] = None
        pending = [k for k, v in out.items() if v is None]
        if pending:
            with zipfile.ZipFile(path) as zf:
                for key in pending:
                    obj = _object_member(zf.read(f"{key}.npy"))
                    obj = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
                    if isinstance(obj, dict):
                        del out[key]
                        for k, v in obj.items():
                            out[str(k)] = np.asarray(v)
                    else:
                        out[key] = np.asarray(obj)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{what} file {path} holds Python objects that need code to unpickle ({exc}); FourD only "
                         "reads arrays. Re-save it with plain arrays (np.savez(path, pts3d=..., poses=...)).") from exc
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"Could not read {what.lower()} file {path} ({brief(exc)}): it is corrupt or not an .npz. "
                         "Download it again.") from exc
    return out
