"""One scene over several ranks: diffusers context parallelism (Ulysses / ring) on the 4DNeX
transformer, and CFG-parallel sampling, each against the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import EXAMPLE_IMAGE, ROOT

from fourd_core.distributed.runtime import ParallelSpec, _ring_attention_backend, sequence_length
from fourd_core.errors import InputError

WORKER = ROOT / "tests" / "parallel_worker.py"
TINY = ["--preset", "tiny", "--frames", "5", "--steps", "2", "--height", "32", "--width", "48", "--no-geometry",
        "--prompt", "a street"]


def _torchrun(nproc: int, args: list[str], tmp_path, module: bool = False):
    env = {**os.environ, "FOURD_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "fourd_core", *args] if module else [str(WORKER), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _denoiser_split(parallel: str, device: str, tmp_path) -> list[dict]:
    r = _torchrun(2, [parallel, device, str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]


def test_ulysses2_denoiser_equals_single_process_cpu_gloo(tmp_path):
    """Ulysses over two gloo ranks: each rank's blocks see half of the 36 tokens, and the gathered
    output equals the unsplit forward (4DNeX domain embeddings and shared RoPE on)."""
    for rank in _denoiser_split("ulysses=2", "cpu", tmp_path):
        assert rank["tokens"] == 36 and rank["tokens_seen"] == 18
        assert rank["rel_err"] < 1e-5, rank


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (NCCL)")
@pytest.mark.parametrize("parallel", ["ulysses=2", "ring=2"])
def test_context_parallel_denoiser_equals_single_process_cuda(parallel, tmp_path):
    """On two GPUs in bf16 (ring picks the cuDNN backend, which returns the log-sum-exp it needs)."""
    for rank in _denoiser_split(parallel, "cuda", tmp_path):
        assert rank["tokens_seen"] == 18
        assert rank["rel_err"] < 3e-2, rank  # bf16 kernels on different sequence chunks


def test_cfg_parallel_sampling_equals_single_process(tmp_path):
    """cfg=2: the conditional and unconditional passes on two gloo ranks give the same scene."""
    env = {**os.environ, "FOURD_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    one = subprocess.run([sys.executable, "-m", "fourd_core", "generate", "--image", str(EXAMPLE_IMAGE), *TINY,
                          "--out", str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(2, ["generate", "--image", str(EXAMPLE_IMAGE), *TINY, "--parallel", "cfg=2",
                        "--out", str(tmp_path / "two")], tmp_path, module=True)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads(two.stdout[two.stdout.index("{"):])
    assert summary["parallel"] == "cfg=2" and summary["ranks"] == 2
    from fourd_core.scene import Scene4D

    a, b = Scene4D.load(tmp_path / "one" / "scene.safetensors"), Scene4D.load(tmp_path / "two" / "scene.safetensors")
    assert torch.allclose(a.rgb, b.rgb, atol=1e-5) and torch.allclose(a.xyz, b.xyz, atol=1e-5)


def test_parallel_spec_parsing():
    assert ParallelSpec.parse("ulysses=4, ring=2,cfg=2") == ParallelSpec(cfg=2, ring=2, ulysses=4)
    assert ParallelSpec.parse("ulysses=4,ring=2,cfg=2").size == 16
    assert ParallelSpec.parse(None).size == 1 and str(ParallelSpec.parse("")) == "none"
    for bad in ("ulysses=0", "tensor=2", "ring:2", "cfg=3"):
        with pytest.raises(InputError):
            ParallelSpec.parse(bad)


def test_cfg_parallel_needs_guidance_and_cp_needs_accelerators(tmp_path, capsys, monkeypatch):
    from fourd_core.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    base = ["generate", "--image", str(EXAMPLE_IMAGE), "--preset", "tiny", "--prompt", "p", "--out", str(tmp_path / "o")]
    assert main([*base, "--parallel", "cfg=2", "--cfg", "1"]) == 2
    assert "guidance scale > 1" in capsys.readouterr().err
    if torch.accelerator.device_count() == 0:
        assert main([*base, "--parallel", "ulysses=2"]) == 2
        assert "accelerator" in capsys.readouterr().err
    assert main([*base, "--parallel", "cfg=2"]) == 2
    assert "multiple of 2 processes" in capsys.readouterr().err  # one process cannot split
    assert main(["generate", "--images", str(tmp_path), "--image", str(EXAMPLE_IMAGE), "--prompt", "p",
                 "--out", str(tmp_path / "o")]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_patches_must_precede_parallelism_and_ring_needs_lse_backend():
    from diffusers import WanTransformer3DModel

    from fourd_core.models.patches import apply_fourdnex_patches
    from fourd_core.models.tiny_preset import TINY_TRANSFORMER

    model = WanTransformer3DModel(**TINY_TRANSFORMER)
    assert sequence_length(model, 49, 480, 720) == 13 * 30 * 90  # the 4DNeX sequence: 35,100 tokens
    model._parallel_config = object()  # as after enable_parallelism
    with pytest.raises(ValueError, match="before enable_parallelism"):
        apply_fourdnex_patches(model)
    ctx = SimpleNamespace(device=torch.device("cpu"), spec=ParallelSpec(ring=2), log=print)
    with pytest.raises(InputError, match="log-sum-exp"):
        _ring_attention_backend(model, ctx)
