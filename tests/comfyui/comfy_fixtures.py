"""Fixtures for the tests against a real ComfyUI checkout (imported by the test modules; not a conftest.py,
so it never shadows ``tests/conftest.py`` in pytest's module namespace): ``COMFYUI_PATH=/path/to/ComfyUI python -m pytest -q tests/comfyui``
(with a Python that has ComfyUI's requirements and this pack's). Skipped when COMFYUI_PATH is unset.

ComfyUI is put on ``sys.path`` in CPU mode; the pack is imported as a package the way ComfyUI
imports a custom node (``spec_from_file_location`` on its ``__init__.py``).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFYUI = os.environ.get("COMFYUI_PATH")


def _use_comfyui_comfy(path: str) -> None:
    """Make ``comfy`` ComfyUI's package at ``path`` even if a module of that name is already imported.

    pytest imports the checkout's own ``__init__.py`` (the ComfyUI entry point) under the name of the
    folder that holds it, with that folder's parent on ``sys.path``: a checkout in a folder named
    ``comfy`` becomes a regular package ``comfy``, which wins over ComfyUI's ``comfy`` (a namespace
    package, no ``__init__.py``) whatever the order of ``sys.path``. ComfyUI's is then loaded from
    ``path`` explicitly (and the dropped module's file forgotten by :func:`inspect.getmodule`, which
    would otherwise fail on the new module, a namespace package without a file); a checkout under
    any other name is not affected.
    """
    own = str(Path(path) / "comfy")
    mod = sys.modules.get("comfy")
    if mod is not None and own in [str(Path(p).resolve()) for p in getattr(mod, "__path__", [])]:
        return
    for name in [n for n in sys.modules if n == "comfy" or n.startswith("comfy.")]:
        del sys.modules[name]
        inspect._filesbymodname.pop(name, None)     # inspect.getmodule's cache of the dropped module's file
    spec = importlib.machinery.PathFinder.find_spec("comfy", [path])
    if spec is None:
        raise RuntimeError(f"COMFYUI_PATH={path} has no comfy package: point it at a ComfyUI checkout.")
    mod = importlib.util.module_from_spec(spec)
    if spec.loader is None or type(spec.loader).__name__ == "NamespaceLoader":
        mod.__path__ = [own]                                  # only ComfyUI's folder, never recomputed
    sys.modules["comfy"] = mod
    if spec.loader is not None:
        spec.loader.exec_module(mod)


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's ``comfy`` package, in CPU mode."""
    if not COMFYUI:
        pytest.skip("COMFYUI_PATH is not set")
    path = str(Path(COMFYUI).expanduser().resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    _use_comfyui_comfy(path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.sd  # noqa: F401
    import comfy.samplers  # noqa: F401
    import comfy.sample  # noqa: F401

    return sys.modules["comfy"]


@pytest.fixture(scope="session")
def pack(comfy):
    name = "ComfyUI_FourD_real_comfy"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
