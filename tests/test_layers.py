"""The house rules, checked on the source (imports read with ``ast``, nothing is run):

* ``fourd_core`` never imports ComfyUI (``comfy``, ``comfy_api``, ``comfy_extras``, ``folder_paths``);
* ``nodes/`` imports ComfyUI only inside functions (the pack imports and runs without ComfyUI);
* production code never imports ``fourd_core.testing`` (test fixtures, baselines, readers of our own files);
* no module imports a higher floor of ``fourd_core`` except the few listed in :data:`ALLOWED_UP` (each with its
  reason; the README's layout section lists them too).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

COMFY = ("comfy", "comfy_api", "comfy_extras", "folder_paths")

#: floors of fourd_core, lowest first: a module may import its own floor and the ones below
FLOORS = [
    {"errors", "interrupts", "registry", "settings", "__init__"},
    {"util"},
    {"kernels"},
    {"geometry"},
    {"scene"},
    {"splats"},
    {"io"},
    {"assets"},
    {"models"},
    {"pipelines"},
    {"native"},
    {"api", "job", "example_scene"},
    {"distributed", "training"},
    {"cli", "cli_batch", "cli_novel_view", "cli_train", "__main__"},
]
#: upward imports with their one-sentence reasons
ALLOWED_UP: dict[tuple[str, str], str] = {}   # none today


def _floor(part: str) -> int:
    if not ((ROOT / "fourd_core" / part).is_dir() or (ROOT / "fourd_core" / f"{part}.py").is_file()):
        return 0                                   # a name from fourd_core/__init__.py (e.g. __version__)
    for i, names in enumerate(FLOORS):
        if part in names:
            return i
    raise AssertionError(f"fourd_core/{part} is on no floor: add it to FLOORS in tests/test_layers.py")


def _imports(path: Path):
    """(module imported, is at module level) for every import of ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = path.relative_to(ROOT).with_suffix("").parts[:-1]
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg[: len(pkg) - node.level + 1])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, id(node) in top_level
            for a in node.names:                      # "from . import x" imports module x
                if not node.module:
                    yield f"{mod}.{a.name}", id(node) in top_level


def _sources(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


def test_fourd_core_never_imports_comfyui():
    bad = [(str(p.relative_to(ROOT)), m) for p in _sources("fourd_core") for m, _ in _imports(p)
           if m.split(".")[0] in COMFY]
    assert not bad, bad


def test_nodes_import_comfyui_only_inside_functions():
    bad = [(str(p.relative_to(ROOT)), m) for p in _sources("nodes") for m, top in _imports(p)
           if top and m.split(".")[0] in COMFY]
    assert not bad, bad


def test_production_code_never_imports_the_testing_package():
    bad = [(str(p.relative_to(ROOT)), m) for folder in ("fourd_core", "nodes") for p in _sources(folder)
           if "testing" not in p.relative_to(ROOT).parts for m, _ in _imports(p)
           if m.split(".")[:2] == ["fourd_core", "testing"] or ".fourd_core.testing" in f".{m}"]
    assert not bad, bad


def test_no_upward_imports_but_the_listed_ones():
    bad = []
    for p in _sources("fourd_core"):
        parts = p.relative_to(ROOT / "fourd_core").with_suffix("").parts
        if parts[0] == "testing":
            continue
        here = parts[0]
        for m, _ in _imports(p):
            names = m.split(".")
            if names[0] != "fourd_core" or len(names) < 2 or names[1] == "testing":
                continue
            there = names[1]
            if _floor(there) > _floor(here) and (here, there) not in ALLOWED_UP:
                bad.append(f"{'/'.join(parts)} imports {m}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(set(bad)))
