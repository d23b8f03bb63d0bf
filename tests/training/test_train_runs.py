"""Training runs end to end on the tiny preset: the loss goes down, an interrupted run resumes to the same
weights as an uninterrupted one, two gloo processes make the update of one process with the doubled batch,
and the files written load in the diffusers paths (grid sampler, 4DNeX pipeline) and change their output."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fourd_core.errors import InputError
from fourd_core.training import runner
from fourd_core.training.data import collate_latent_samples, open_latent_dataset
from fourd_core.training.objectives import SyncObjective

ROOT = Path(__file__).resolve().parents[2]


def _fixed_loss(obj, cache, draws=4) -> float:
    ds = open_latent_dataset(cache)
    with torch.no_grad():
        return sum(float(obj(collate_latent_samples([ds[i]]), step=-1 - k))
                   for i in range(len(ds)) for k in range(draws)) / (len(ds) * draws)


@pytest.mark.parametrize("objective", ["sync", "lora"])
def test_a_short_run_lowers_the_loss_and_its_files_carry_the_training(make_cfg, objective):
    from fourd_core.models.sync import load_sync_weights

    cfg = make_cfg(objective, steps=40, lr=3e-3 if objective == "sync" else 1e-2, warmup=2, sync_mode="soft")
    pipe, fresh = runner.build(cfg, "cpu")
    before = _fixed_loss(fresh, cfg.cache)
    summary = runner.train(cfg, log=lambda m: None)
    assert summary["steps"] == 40 and not summary["stopped"]
    final = Path(cfg.out) / "final"
    if objective == "sync":
        # the written file, loaded by the sampler's loader into a new objective, has learnt
        sync = load_sync_weights(final / "sync_weights.safetensors", pipe.transformer, mode="soft")
        trained = SyncObjective(pipe.transformer, cfg, sync=sync)
    else:   # the release folder, read back as the start of a new run
        trained = runner.build(dataclasses.replace(cfg, init_release=str(final)), "cpu")[1]
    after = _fixed_loss(trained, cfg.cache)
    print(f"{objective}: fixed-noise training loss {before:.4f} -> {after:.4f} ({after / before:.3f})")
    assert after < 0.9 * before
    metrics = [json.loads(line) for line in (Path(cfg.out) / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 41))


@pytest.mark.parametrize("objective", ["sync", "lora"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(make_cfg, objective, tmp_path):
    common = dict(steps=6, warmup=2, lr=5e-3, grad_accum=2, batch_size=1, checkpoint_every=2, schedule="cosine",
                  validation_fraction=0.34, validate_every=3)
    whole = runner.train(make_cfg(objective, out=str(tmp_path / "whole"), **common), log=lambda m: None)
    cfg = make_cfg(objective, out=str(tmp_path / "split"), **common)
    first = runner.train(cfg, stop_after=3, log=lambda m: None)
    assert first["stopped"] and first["steps"] == 3
    assert (tmp_path / "split" / "checkpoints" / "step_000003" / "trainer_state.json").is_file()
    assert not (tmp_path / "split" / "final").exists()
    rest = runner.train(cfg, log=lambda m: None)
    assert rest["steps"] == 6
    torch.testing.assert_close(torch.tensor(first["losses"] + rest["losses"]), torch.tensor(whole["losses"]),
                               rtol=1e-6, atol=1e-7)
    assert rest["validation_loss"] == pytest.approx(whole["validation_loss"], rel=1e-6)
    for f in whole["files"]:
        a, b = load_file(f), load_file(f.replace("whole", "split"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    # checkpoints are safetensors + JSON only, and the newest two are kept
    kept = sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert kept == ["step_000004", "step_000006"]
    assert {p.name for p in (tmp_path / "split" / "checkpoints" / "step_000006").iterdir()} == {
        "trainable.safetensors", "optimizer.safetensors", "trainer_state.json"}


def test_a_resume_with_other_settings_is_refused_with_the_differing_keys(make_cfg, monkeypatch):
    cfg = make_cfg("sync", steps=4, sync_mode="hard")
    runner.train(cfg, stop_after=2, log=lambda m: None)
    monkeypatch.setattr(runner, "build", lambda *a: (_ for _ in ()).throw(AssertionError("a model was loaded")))
    with pytest.raises(InputError, match="sync_mode: 'hard' there, 'soft' now"):
        runner.train(make_cfg("sync", steps=4, sync_mode="soft"), log=lambda m: None)
    with pytest.raises(InputError, match="lr: 0.001 there, 0.01 now"):
        runner.train(make_cfg("sync", steps=4, sync_mode="hard", lr=1e-2), log=lambda m: None)
    with pytest.raises(InputError, match="base: "):
        runner.train(make_cfg("sync", steps=4, sync_mode="hard", base="tiny"), log=lambda m: None)


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "fourd_core", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, **kw)


def _train_args(cfg) -> list[str]:
    return ["train", cfg.objective, "--cache", cfg.cache, "--out", cfg.out, "--base", cfg.base, "--steps",
            str(cfg.steps), "--warmup", "1", "--lr", "0.01", "--validation-fraction", "0", "--validate-every", "0",
            "--preview-steps", "0", "--checkpoint-every", str(cfg.checkpoint_every), "--log-every", "1"]


def test_ctrl_c_writes_a_last_checkpoint_and_the_same_command_resumes(make_cfg):
    cfg = make_cfg("sync", steps=3000, checkpoint_every=5000)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "fourd_core", *_train_args(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = Path(cfg.out) / "logs" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.is_file() or log.read_text().count('"loss"') < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint was written" in err
    ckpts = sorted((Path(cfg.out) / "checkpoints").glob("step_*"))
    assert len(ckpts) == 1 and 3 <= int(ckpts[0].name[5:]) < 3000
    state = json.loads((ckpts[0] / "trainer_state.json").read_text())
    assert state["step"] == int(ckpts[0].name[5:])
    # the same command (fewer steps asked: a resumable change) resumes from there
    args = _train_args(cfg)
    args[args.index("--steps") + 1] = str(state["step"] + 2)
    done = _cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {ckpts[0].name}" in done.stderr
    assert json.loads(done.stdout)["steps"] == state["step"] + 2


def test_two_gloo_processes_make_the_update_of_one_process_with_the_doubled_batch(make_cfg, tmp_path):
    one = make_cfg("sync", out=str(tmp_path / "one"), steps=4, checkpoint_every=100)
    two = make_cfg("sync", out=str(tmp_path / "two"), steps=4, checkpoint_every=100)
    r1 = _cli(*_train_args(one), "--batch-size", "2")
    assert r1.returncode == 0, r1.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "fourd_core",
                         *_train_args(two)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads(r2.stdout)["processes"] == 2 and json.loads(r1.stdout)["processes"] == 1
    a = load_file(tmp_path / "one" / "final" / "sync_weights.safetensors")
    b = load_file(tmp_path / "two" / "final" / "sync_weights.safetensors")
    assert max(float(v.abs().max()) for v in a.values()) > 1e-3            # the layers did train
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
