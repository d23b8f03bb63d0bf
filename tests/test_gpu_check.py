"""bench/gpu_check.py --tiny: the one-shot GPU check runs its full-size code paths at toy sizes on
the CPU, so it still works on the day a GPU is lent."""

from __future__ import annotations

import importlib.util
import sys

from conftest import ROOT


def test_gpu_check_tiny_runs_every_section(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--tiny", "--steps", "2"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[0].strip() + "/" + line.split("|")[1].strip(): line for line in table.splitlines()
            if line.count("|") == 5 and not line.startswith("section")}
    assert "failed" not in table and "skipped" not in table, table
    assert "sampling/stock Wan I2V, SDPA (native)" in rows and "sampling/4DNeX, SDPA (native)" in rows
    assert " x" in rows["sampling/4DNeX, SDPA (native)"]  # the 4DNeX / stock ratio
    assert any(k.startswith("VAE decode/") for k in rows)
    assert any(k.startswith("grid attn/fused/gather") for k in rows)
    assert "memory/4DNeX --fp8 (resident)" in rows and "needs CUDA" in rows["memory/4DNeX --offload group"]
    assert "24 tokens" in table  # 2 latent frames x 2 x 6 (the full mode: 35100)
