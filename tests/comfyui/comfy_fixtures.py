"""Fixtures for the tests against a real ComfyUI checkout (imported by the test modules; not a conftest.py,
so it never shadows ``tests/conftest.py`` in pytest's module namespace): ``COMFYUI_PATH=/path/to/ComfyUI python -m pytest -q tests/comfyui``
(with a Python that has ComfyUI's requirements and this pack's). Skipped when COMFYUI_PATH is unset.

ComfyUI is put on ``sys.path`` in CPU mode; the pack is imported as a package the way ComfyUI
imports a custom node (``spec_from_file_location`` on its ``__init__.py``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFYUI = os.environ.get("COMFYUI_PATH")


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's ``comfy`` package, in CPU mode."""
    if not COMFYUI:
        pytest.skip("COMFYUI_PATH is not set")
    path = str(Path(COMFYUI).expanduser().resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
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
