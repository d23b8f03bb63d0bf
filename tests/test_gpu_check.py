"""The one-shot GPU check and its session script, without a GPU: ``bench/gpu_check.py --tiny`` runs the
full-size code paths at toy sizes on the CPU, and ``bench/gpu_session.sh run DIR`` runs its CPU
emulation, so both still work on the day a GPU is lent. The section runner keeps the table through a
failing section, a section that overruns the budget and an interrupt."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

from conftest import ROOT


def _load():
    if "gpu_check" in sys.modules:
        return sys.modules["gpu_check"]
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _rows(table: str) -> dict[str, str]:
    """``"section/variant" -> row`` of a printed table."""
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 7 and cells[0] != "section":
            out[f"{cells[0]}/{cells[1]}"] = line
    return out


def test_gpu_session_run_cpu_emulation(tmp_path):
    """`bash bench/gpu_session.sh run DIR` without CUDA: the import gate passes, gpu_check --tiny runs every
    section that does not need CUDA, and DIR gets the logs and the table file."""
    out = tmp_path / "gs"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_SESSION_WHEELS": str(tmp_path / "no_wheels"),
           "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "run", str(out)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "import check: python=" in (out / "import_check.log").read_text()
    assert "CPU emulation" in (out / "session.log").read_text()
    table = (out / "gpu_check_table.txt").read_text()
    assert table in (out / "gpu_check.log").read_text()  # the final table is printed, and the file is it
    rows = _rows(table)
    assert "failed" not in table and "over" not in table, table
    assert " x" in rows["sampling/4DNeX, SDPA (native)"] and "ratio <= 1.03" in rows["sampling/4DNeX, SDPA (native)"]
    assert "median of 4" in rows["sampling/stock Wan I2V, SDPA (native)"]  # two stock runs, 2 + 2 steps
    assert "needs CUDA" in rows["sampling/4DNeX, cuDNN (_native_cudnn)"]
    assert "4/6 DiT evaluations skipped" in rows["cache/first_block, skipped step"]  # all but each pass's first
    assert " x" in rows["cache/first_block, 50% of steps skipped"]
    assert any(k.startswith("VAE decode/") for k in rows)
    assert any(k.startswith("grid attn/fused/gather") for k in rows) and any(k.startswith("grid attn/fused/flex") for k in rows)
    assert "needs CUDA" in rows["check/CUDA correctness checks"]
    assert "ratio vs resident" in rows["memory/4DNeX --fp8 (resident)"]
    assert "needs CUDA" in rows["memory/4DNeX --offload group"]
    assert "RoPE tables torch.float32" in rows["setup/random 0.00B DiT + VAE"]
    assert "24 tokens" in table  # 2 latent frames x 2 x 6 (the full mode: 35100)


def test_gpu_session_run_needs_an_out_dir():
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "run"], capture_output=True, text=True)
    assert r.returncode == 2 and "$OUT/gs" in r.stderr


def test_failure_in_one_section_keeps_the_others_and_the_table(capsys, monkeypatch):
    g = _load()
    decode = next(s for s in g.SECTIONS if s.name == "VAE decode")

    def broken(ctx):
        raise RuntimeError("injected decode failure")

    monkeypatch.setattr(decode, "run", broken)
    assert g.main(["--tiny", "--steps", "2", "--steps-other", "1"]) == 1
    rows = _rows(capsys.readouterr().out)
    assert "failed: RuntimeError: injected decode failure" in rows["VAE decode/2 halves, float32"]
    # sections before and after the failing one ran
    assert " x" in rows["sampling/4DNeX, SDPA (native)"]
    assert any(k.startswith("grid attn/fused/gather") for k in rows)
    assert "ms" in rows["memory/4DNeX --fp8 (resident)"]


def test_runner_skip_rule_deadline_and_needs():
    """Fake sections: one over its estimate is skipped, one running past the budget is stopped by the
    deadline, one whose input an earlier section failed to set is not run, the rest run."""
    g = _load()
    ran = []
    report = g.Report(torch.device("cpu"), budget_s=4.0)
    ctx = g.Ctx(types.SimpleNamespace(tiny=True), None, torch.device("cpu"), report, step_s=0.1)

    def ok(c):
        ran.append("ok")
        c.report.add("fake", "ok", 0.01)

    def fails(c):
        raise ValueError("boom")

    def hangs(c):
        time.sleep(30)

    sections = [
        g.Section("fake", "first", ok, lambda c: 0.0),
        g.Section("fake", "too long", ok, lambda c: 99.0),
        g.Section("fake", "fails", fails, lambda c: 0.0),
        g.Section("fake", "needs pipe", ok, lambda c: 0.0, needs=("pipe",)),
        g.Section("fake", "gpu only", ok, lambda c: 0.0, cuda=True),
        g.Section("fake", "hangs", hangs, lambda c: 0.1),
        g.Section("fake", "after the budget", ok, lambda c: 0.2),
    ]
    t = time.perf_counter()
    assert g.run_sections(ctx, sections) == 2
    assert time.perf_counter() - t < 15  # the deadline stopped the sleeping section
    rows = _rows(report.table())
    assert ran == ["ok"]
    assert "skipped: estimate 99 s" in rows["fake/too long"]
    assert "failed: ValueError: boom" in rows["fake/fails"]
    assert "not run: an earlier section did not set pipe" in rows["fake/needs pipe"]
    assert "needs CUDA" in rows["fake/gpu only"]
    assert "still running at the end of --budget-s" in rows["fake/hangs"]
    assert "skipped: estimate 0 s > 0 s left" in rows["fake/after the budget"]


def test_runner_stops_a_section_at_its_own_deadline(monkeypatch):
    """A section still running at DEADLINE_FACTOR x its estimate + DEADLINE_MARGIN_S is stopped long before the
    budget ends, and the next section runs."""
    g = _load()
    monkeypatch.setattr(g, "DEADLINE_MARGIN_S", 0.5)
    report = g.Report(torch.device("cpu"), budget_s=60.0)
    ctx = g.Ctx(types.SimpleNamespace(tiny=True), None, torch.device("cpu"), report, step_s=0.1)
    sections = [g.Section("fake", "stuck", lambda c: time.sleep(30), lambda c: 0.1),
                g.Section("fake", "next", lambda c: c.report.add("fake", "next ran", 0.01), lambda c: 0.0)]
    t = time.perf_counter()
    assert g.run_sections(ctx, sections) == 1
    assert time.perf_counter() - t < 10
    rows = _rows(report.table())
    assert "failed: still running after 1 s (3 x estimate + 0.5 s)" in rows["fake/stuck"] and "fake/next ran" in rows


def test_sigint_mid_run_still_prints_the_table(tmp_path):
    """SIGINT (what `timeout -s INT` sends) during sampling: exit 130, the table with the rows measured so far
    and a row naming the sections not run. SIGINT starts ignored, as for a background job of a
    non-interactive shell: gpu_check installs its own handler."""
    table_file = tmp_path / "table.txt"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--table", str(table_file)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for line in p.stderr:  # rows are printed to stderr as they are measured
            if "] setup " in line:
                p.send_signal(signal.SIGINT)
                break
        stdout, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stdout
    rows = _rows(stdout)
    assert any(k.startswith("setup/") for k in rows)
    interrupted = [r for r in rows.values() if "interrupted (SIGINT)" in r]
    assert len(interrupted) == 1 and "not run:" in interrupted[0] and "4DNeX --offload group" in interrupted[0]
    assert table_file.read_text().strip() in stdout


def test_transformer_dtypes_as_from_pretrained(tmp_path):
    """gpu_check builds its random DiT with the dtypes from_pretrained(torch_dtype=bf16) gives a saved one:
    _keep_in_fp32_modules parameters and the RoPE tables in float32, the rest bf16."""
    from diffusers import WanTransformer3DModel

    g = _load()
    sizes = g.Sizes.tiny(torch.bfloat16)
    built = g.build_transformer(sizes, torch.device("cpu"))
    WanTransformer3DModel.from_config({k: v for k, v in sizes.transformer.items()}).save_pretrained(tmp_path)
    ref = WanTransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    ours = {k: t.dtype for k, t in [*built.named_parameters(), *built.named_buffers()]
            if k != "learnable_domain_embeddings"}
    theirs = {k: t.dtype for k, t in [*ref.named_parameters(), *ref.named_buffers()]}
    assert ours == theirs
    assert theirs["rope.freqs_cos"] == torch.float32 and theirs["blocks.0.ffn.net.2.weight"] == torch.bfloat16
    torch.testing.assert_close(built.rope.freqs_cos, ref.rope.freqs_cos, rtol=0, atol=0)


def test_dit_flops_against_torch_flop_counter():
    """The FLOP formula behind the printed floor and TFLOP/s equals torch's own count of the blocks (SDPA
    through its math kernel, which the counter sees as matmuls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    g = _load()
    sizes = g.Sizes.tiny()
    tr = g.build_transformer(sizes, torch.device("cpu"))
    c = tr.config
    x = torch.randn(1, c.in_channels, 2, 8, 12)
    tokens = 2 * 4 * 6
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        tr(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=torch.randn(1, 512, c.text_dim),
           encoder_hidden_states_image=torch.randn(1, 5, c.image_dim))
    blocks = sum(v for k, per_op in counter.get_flop_counts().items() if k.startswith("WanTransformer3DModel.blocks.")
                 and k.count(".") == 2 for v in per_op.values())
    assert blocks == g.dit_flops(c, tokens, 512, 5)


@pytest.mark.parametrize("check", ["flex vs gathered-keys attention, fp32", "flex vs gathered-keys attention, bf16",
                                   "compiled vs eager flex block mask", "fp8 storage vs bf16 latents"])
def test_correctness_checks_pass_on_the_cpu(check):
    """The CUDA correctness checks' code runs on the CPU too (there: eager flex, eager mask) and passes
    its tolerance, so in the GPU session only the CUDA kernels are new."""
    g = _load()
    fn = next(f for label, f, _ in g.CHECKS if label == check)
    value, tol = fn(torch.device("cpu"))
    assert value <= tol
