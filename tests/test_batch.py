"""Batch mode: ``generate --images`` under ``torchrun --nproc-per-node 2`` (gloo, CPU) with the tiny
preset, and the planning rules (prompts, names, completion markers) in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

from fourd_core.distributed.batch import (DONE_MARKER, SUMMARY_FILE, BatchItem, job_fingerprint, plan_items,
                                          scene_status)
from fourd_core.errors import InputError

TINY = ["--preset", "tiny", "--frames", "5", "--steps", "2", "--height", "32", "--width", "48", "--no-geometry"]


def _images(folder: Path, names, size=(40, 60)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        arr = (np.random.default_rng(i).random((*size, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / name)
    return folder


def _run(args, tmp_path, nproc: int | None = None):
    env = {**os.environ, "FOURD_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc \
        else [sys.executable]
    return subprocess.run([*launcher, "-m", "fourd_core", "generate", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):stdout.rindex("}") + 1])


def test_torchrun_two_ranks_each_image_once_failure_reported_rerun_skips(tmp_path):
    images = _images(tmp_path / "in", ["a.png", "b.jpg", "c.webp"])
    (images / "broken.png").write_bytes(b"this is not a PNG")
    (images / "b.txt").write_text("a prompt beside the image\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"image": "a.png", "prompt": "prompt of a", "seed": 7}) + "\n")
    out = tmp_path / "out"
    args = ["--images", str(images), "--prompts", str(prompts), "--prompt", "the default prompt", "--out", str(out), *TINY]

    # 1) two ranks, 3 good images + 1 unreadable: the bad one is reported, the others finish
    r = _run(args, tmp_path, nproc=2)
    assert r.returncode != 0, "a failed image must make the run fail"
    assert "broken" in r.stderr and "Could not read" in r.stderr, r.stderr[-4000:]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["done"] == ["a", "b", "c"] and summary["skipped"] == [] and summary["ranks"] == 2
    assert [f["name"] for f in summary["failed"]] == ["broken"]
    per_rank = [set(p["done"]) for p in summary["per_rank"]]
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]  # both ranks worked, no image twice
    assert per_rank[0] | per_rank[1] == {"a", "b", "c"}
    for name, prompt, seed in (("a", "prompt of a", 7), ("b", "a prompt beside the image", 42),
                               ("c", "the default prompt", 42)):
        marker = json.loads((out / name / DONE_MARKER).read_text())
        assert marker["prompt"] == prompt and marker["seed"] == seed
        assert name in summary["per_rank"][marker["rank"]]["done"]
        for f in ("rgb.mp4", "xyz.mp4", "scene.safetensors", "images/frame_00004.png"):
            assert f in marker["files"] and (out / name / f).is_file()
        assert len(marker["files"]) == len(list(p for p in (out / name).rglob("*") if p.is_file())) - 1
    from fourd_core.scene import Scene4D

    scene = Scene4D.load(out / "a" / "scene.safetensors")
    assert scene.rgb.shape == (5, 32, 48, 3) and scene.metadata["seed"] == 7
    assert sorted(p.name for p in out.iterdir()) == sorted(["a", "b", "c", SUMMARY_FILE])  # nothing half-written

    # 2) an unfinished scene (marker lost) and a killed run's leftover are redone / removed
    (images / "broken.png").unlink()
    (out / "b" / DONE_MARKER).unlink()
    leftover = out / ".fourd-dir-999999999-killed"
    (leftover / "images").mkdir(parents=True)
    a_before = (out / "a" / "scene.safetensors").stat().st_mtime_ns
    r = _run(args, tmp_path, nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = _summary(r.stdout)
    assert summary["done"] == ["b"] and summary["skipped"] == ["a", "c"] and summary["failed"] == []
    assert not leftover.exists() and (out / "b" / DONE_MARKER).is_file()
    assert (out / "a" / "scene.safetensors").stat().st_mtime_ns == a_before

    # 3) a rerun (one process) skips everything without loading a model
    r = _run(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = _summary(r.stdout)
    assert summary["skipped"] == ["a", "b", "c"] and summary["done"] == []
    assert "loading models" not in r.stderr


def test_plan_prompt_sources_and_errors(tmp_path):
    images = _images(tmp_path / "in", ["x.png", "y.png"], size=(8, 8))
    (images / "y.txt").write_text("side prompt")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"image": "x", "prompt": "from jsonl", "seed": 3}\n\n{"image": "y.png", "prompt": "jsonl y"}\n')
    items = plan_items(images, prompts)
    assert [(i.name, i.prompt, i.seed) for i in items] == [("x", "from jsonl", 3), ("y", "jsonl y", None)]
    items = plan_items(images, None, "default")
    assert [(i.name, i.prompt) for i in items] == [("x", "default"), ("y", "side prompt")]
    with pytest.raises(InputError, match="No prompt for x.png"):
        plan_items(images)
    prompts.write_text('{"image": "z.png", "prompt": "p"}\n')
    with pytest.raises(InputError, match="not in .*z.png"):
        plan_items(images, prompts, "d")
    prompts.write_text('{"image": "x.png", "prompt": "p"}\nnot json\n')
    with pytest.raises(InputError, match="line 2"):
        plan_items(images, prompts, "d")
    _images(images, ["x.jpg"], size=(8, 8))
    with pytest.raises(InputError, match="both write x/"):
        plan_items(images, None, "d")
    with pytest.raises(InputError, match="not a folder"):
        plan_items(tmp_path / "nope", None, "d")


def test_scene_status_follows_the_marker(tmp_path):
    img = _images(tmp_path / "in", ["x.png"], size=(8, 8)) / "x.png"
    item = BatchItem("x", str(img), "p")
    fp = job_fingerprint(item, {"steps": 2})
    assert fp != job_fingerprint(BatchItem("x", str(img), "q"), {"steps": 2})
    assert fp != job_fingerprint(item, {"steps": 3})
    folder = tmp_path / "out" / "x"
    assert scene_status(folder, fp) == "new"
    folder.mkdir(parents=True)
    (folder / "rgb.mp4").write_bytes(b"v")
    assert scene_status(folder, fp) == "unfinished"
    (folder / DONE_MARKER).write_text('{"fingerprint": "' + fp + '", "files": ["rgb.mp4", "xyz.mp4"]}')
    assert scene_status(folder, fp) == "unfinished"  # a listed file is missing
    (folder / "xyz.mp4").write_bytes(b"v")
    assert scene_status(folder, fp) == "finished"
    assert scene_status(folder, job_fingerprint(item, {"steps": 9})) == "changed"
    (folder / DONE_MARKER).write_text("{truncated")
    assert scene_status(folder, fp) == "unfinished"


_NON_ZERO_RANK_BUILD = """
import sys
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

dist.init_process_group("fake", rank=1, world_size=2, store=FakeStore())   # rank 1 of 2, no peer needed
from fourd_core.models.tiny_preset import ensure_tiny_preset
from fourd_core.models.vace import ensure_tiny_vace
from fourd_core.models.loading import ModelSpec
from fourd_core.pipelines.assemble import load_pipeline

ensure_tiny_vace(sys.argv[1])
ensure_tiny_preset(sys.argv[1])
load_pipeline(ModelSpec(base="tiny", fourdnex=None, cache_dir=sys.argv[1], local_files_only=True))
print("loaded")
"""


def test_tiny_models_built_by_a_non_zero_rank_are_complete(tmp_path):
    """Under torchrun whichever rank wins the build lock writes the tiny models; transformers 5 writes a model
    only on rank 0 once torch.distributed is up, which left a rank-1 build's text and image encoders empty
    (a flaky torchrun batch). Built on rank 1 of 2 here, every component has its weights and the preset loads."""
    r = subprocess.run([sys.executable, "-c", _NON_ZERO_RANK_BUILD, str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and "loaded" in r.stdout, r.stderr[-3000:]
    for folder, parts in ((tmp_path / "tiny-v1" / "base", ("transformer", "vae", "text_encoder", "image_encoder")),
                          (next(p for p in tmp_path.glob("tiny-vace*") if p.is_dir()), ("transformer", "vae", "text_encoder"))):
        for part in parts:
            assert list((folder / part).glob("*.safetensors")), f"{folder.name}/{part} has no weights"
