"""What ``train`` writes loads in the diffusers paths as it is and changes their output: the sync layers in the
grid sampler, the fused LoRA in the fused grid mode, the 4DNeX release (LoRA + domain embeddings) through
``load_pipeline`` exactly; and bad input stops the CLI with exit 2 before any model loads. (The native
ComfyUI nodes: tests/comfyui/test_native_trained_outputs.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fourd_core import cli
from fourd_core.models.loading import ModelSpec
from fourd_core.models.memory import MemoryConfig
from fourd_core.training import runner

from conftest import write_clips


@pytest.fixture
def trained(make_cfg, capture_build):
    """``trained(objective, **changes)``: train briefly; ``(cfg, trained objective, final folder)``."""
    def run(objective, **changes):
        cfg = make_cfg(objective, steps=6, lr=2e-2, **changes)
        runner.train(cfg, log=lambda m: None)
        return cfg, capture_build["obj"], Path(cfg.out) / "final"

    return run


@pytest.fixture(scope="module")
def base_pipe(tiny_base):
    from fourd_core.pipelines.assemble import load_pipeline

    return load_pipeline(ModelSpec(base=str(tiny_base), fourdnex=None, dtype="float32"), MemoryConfig(device="cpu"))[0]


def _grid_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, 32, 48, 3, generator=g), torch.rand(3, 32, 48, 3, generator=g)


def _grid(pipe, mode, **kw):
    from fourd_core.pipelines.grid import GridConfig, generate_grid

    fixed, freeze = _grid_inputs()
    cfg = GridConfig(mode=mode, window_views=3, window_frames=5, overlap_views=1, overlap_frames=1, steps=2,
                     guidance_scale=1.0, seed=3)
    return generate_grid(pipe, fixed, freeze, "a prompt", cfg, **kw).frames


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_trained_sync_layers_load_in_the_grid_sampler_and_change_its_grid(trained, base_pipe, mode):
    from fourd_core.models.sync import load_sync_weights, read_sync_weights

    cfg, obj, final = trained("sync", sync_mode=mode)
    sync = load_sync_weights(final / "sync_weights.safetensors", base_pipe.transformer, mode=mode)
    for k, v in sync.state_dict().items():           # exactly the trained tensors
        assert torch.equal(v, obj.sync.state_dict()[k].float()), k
    with pytest.raises(Exception, match="mode"):
        read_sync_weights(final / "sync_weights.safetensors", len(base_pipe.transformer.blocks), 64,
                          mode="soft" if mode == "hard" else "hard")
    neutral, trained = _grid(base_pipe, mode), _grid(base_pipe, mode, sync=sync)
    assert (neutral - trained).abs().max() > 1e-3


def test_trained_fused_lora_loads_in_the_fused_grid_mode_and_changes_its_grid(trained, base_pipe):
    from fourd_core.models.fused_lora import read_fused_lora

    cfg, obj, final = trained("fused")
    lora = read_fused_lora(final / "fused_lora.safetensors", base_pipe.transformer)
    plain = _grid(base_pipe, "fused")
    with_lora = _grid(base_pipe, "fused", fused_lora=lora)
    assert (with_lora - plain).abs().max() > 1e-3
    torch.testing.assert_close(_grid(base_pipe, "fused", fused_lora=lora, fused_lora_strength=0.0), plain,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(_grid(base_pipe, "fused"), plain, rtol=0, atol=0)     # the model is restored
    # the file's effective update equals the trained one: B A x (alpha / r)
    scale = cfg.lora_alpha / cfg.lora_rank
    named = dict(obj.transformer.named_parameters())
    key = "blocks.0.attn1.to_q"
    a = named[f"{key}.lora_A.fourd_train.weight"]
    b = named[f"{key}.lora_B.fourd_train.weight"]
    torch.testing.assert_close(lora[f"transformer.{key}.lora_B.weight"] @ lora[f"transformer.{key}.lora_A.weight"],
                               scale * b.detach() @ a.detach(), rtol=1e-5, atol=1e-7)


def test_a_trained_4dnex_release_round_trips_through_load_pipeline(trained, tiny_base):
    from fourd_core.pipelines.assemble import load_pipeline

    cfg, obj, final = trained("lora")
    assert sorted(p.name for p in final.iterdir()) == ["learnable_domain_embeddings.safetensors",
                                                       "pytorch_lora_weights.safetensors"]
    g = torch.Generator().manual_seed(1)
    inp = torch.randn(1, 36, 2, 4, 12, generator=g)
    text, clip = torch.randn(1, 512, 32, generator=g), torch.randn(1, 257, 32, generator=g)

    def predict(transformer):
        with torch.no_grad():
            return transformer(hidden_states=inp, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                               encoder_hidden_states_image=clip, return_dict=False)[0]

    text = torch.randn(1, 512, obj.transformer.config.text_dim, generator=g)
    clip = torch.randn(1, 257, obj.transformer.config.image_dim, generator=g)
    expected = predict(obj.transformer)
    for fuse in (False, True):
        pipe, info = load_pipeline(ModelSpec(base=str(tiny_base), fourdnex=str(final), fuse_lora=fuse,
                                             dtype="float32"), MemoryConfig(device="cpu"))
        assert torch.equal(pipe.transformer.learnable_domain_embeddings.float(),
                           obj.transformer.learnable_domain_embeddings.detach())
        torch.testing.assert_close(predict(pipe.transformer), expected, rtol=1e-5, atol=1e-5)
    plain = load_pipeline(ModelSpec(base=str(tiny_base), fourdnex=None, dtype="float32"), MemoryConfig(device="cpu"))[0]
    assert (predict(plain.transformer) - expected).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# bad input: exit 2, one line naming the fix, before any model loads
@pytest.fixture
def no_models(monkeypatch):
    from fourd_core.training.data import CacheEncoders

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runner, "build", refuse)
    monkeypatch.setattr(CacheEncoders, "from_spec", classmethod(refuse))


def _run(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def _prepare(data, cache, *extra):
    return ["train", "prepare", "--layout", "videos", "--data", str(data), "--cache", str(cache), "--views", "3",
            "--frames", "5", "--height", "32", "--width", "48", *extra]


def test_prepare_bad_input_exits_2_before_loading_models(tmp_path, capsys, no_models):
    import imageio.v2 as imageio

    (tmp_path / "empty").mkdir()
    code, err = _run(capsys, *_prepare(tmp_path / "empty", tmp_path / "c0"))
    assert code == 2 and "error:" in err and err.count("\n") == 1, err
    code, err = _run(capsys, *_prepare(tmp_path / "missing", tmp_path / "c0"))
    assert code == 2 and "missing" in err
    write_clips(tmp_path / "ok", 1)
    for flags, words in ((("--height", "30"), "16"), (("--frames", "6"), "4k+1"), (("--views", "1"), "2 views")):
        argv = _prepare(tmp_path / "ok", tmp_path / "c1")
        argv[argv.index(flags[0]) + 1] = flags[1]
        code, err = _run(capsys, *argv)
        assert code == 2 and words in err, (flags, err)
    # every sample bad: a clip shorter than the grid and a corrupt video -> named, and an error
    bad = tmp_path / "bad"
    (bad / "short").mkdir(parents=True)
    for t in range(3):
        imageio.imwrite(bad / "short" / f"{t:03d}.png", np.zeros((32, 48, 3), np.uint8))
    (bad / "broken.mp4").write_bytes(b"not a video at all" * 20)
    code, err = _run(capsys, *_prepare(bad, tmp_path / "c2"))
    assert code == 2 and "short" in err and "broken" in err, err
    assert not (tmp_path / "c2").exists() or not any((tmp_path / "c2").rglob("*.safetensors"))
    assert not any(tmp_path.rglob("*.partial*"))


def test_train_bad_input_exits_2_before_loading_models(make_cfg, capsys, no_models, tmp_path, grid_cache, xyz_cache):
    def train_argv(objective, cache, out, *extra):
        return ["train", objective, "--cache", str(cache), "--out", str(out), *extra]

    cases = [
        (train_argv("sync", tmp_path / "nothing", tmp_path / "o1"), "cache"),
        (train_argv("sync", xyz_cache, tmp_path / "o2"), "'fourdnex' samples"),
        (train_argv("lora", grid_cache, tmp_path / "o3"), "'grid' samples"),
        (train_argv("fused", grid_cache, tmp_path / "o4", "--lr", "-1"), "lr"),
        (train_argv("sync", grid_cache, tmp_path / "o5", "--validation-fraction", "0.9"), "validation"),
        (["train", "sync", "--out", str(tmp_path / "o6")], "--cache"),
        (train_argv("sync", grid_cache, tmp_path / "o7", "--tracker", "tensorboard"), None),
    ]
    try:
        import tensorboard  # noqa: F401

        cases.pop()
    except ImportError:
        cases[-1] = (cases[-1][0], "tensorboard")
    for argv, words in cases:
        code, err = _run(capsys, *argv)
        assert code == 2 and words in err and err.startswith("error:"), (argv, err)
    assert not any((tmp_path / n).exists() and any((tmp_path / n).rglob("step_*")) for n in ("o1", "o2", "o3", "o4"))


def test_a_checkpoint_of_another_mode_or_model_exits_2(make_cfg, capsys, monkeypatch, tmp_path, grid_cache):
    cfg = make_cfg("sync", steps=4, sync_mode="soft")
    runner.train(cfg, stop_after=2, log=lambda m: None)
    monkeypatch.setattr(runner, "build", lambda *a: (_ for _ in ()).throw(AssertionError("a model was loaded")))
    base = ["train", "sync", "--cache", cfg.cache, "--out", cfg.out, "--steps", "4", "--warmup", "1", "--lr",
            "0.001", "--validation-fraction", "0", "--validate-every", "0", "--preview-steps", "0",
            "--checkpoint-every", "100", "--log-every", "1"]
    for extra, words in ((["--base", cfg.base, "--sync-mode", "hard"], "sync_mode: 'soft' there, 'hard' now"),
                         (["--base", "tiny"], "base: ")):
        code, err = _run(capsys, *base, *extra)
        assert code == 2 and words in err and "another --out" in err, err


def test_a_cache_of_another_model_is_refused_once_the_model_loads(grid_cache):
    from types import SimpleNamespace

    from fourd_core.errors import InputError
    from fourd_core.training.data import open_latent_dataset

    ds = open_latent_dataset(grid_cache)
    tiny = ds.info["encoders"]
    runner.check_cache_fits(ds, SimpleNamespace(config=SimpleNamespace(text_dim=tiny["text_dim"],
                                                                       image_dim=tiny["image_dim"], get=dict().get)))
    wan14b = SimpleNamespace(text_dim=4096, image_dim=1280, get=lambda k, d=None: "Wan2.1-I2V-14B")
    with pytest.raises(InputError, match="width 32.*reads 4096.*train prepare"):
        runner.check_cache_fits(ds, SimpleNamespace(config=wan14b))


def test_prepare_cli_names_bad_samples_and_caches_the_rest(tmp_path, capsys, tiny_base):
    import json

    import imageio.v2 as imageio

    from fourd_core.training.data import open_latent_dataset

    data = write_clips(tmp_path / "mixed", 2)
    (data / "short").mkdir()
    for t in range(3):
        imageio.imwrite(data / "short" / f"{t:03d}.png", np.zeros((32, 48, 3), np.uint8))
    (data / "broken.mp4").write_bytes(b"not a video at all" * 20)
    code = cli.main(_prepare(data, tmp_path / "cache", "--base", str(tiny_base), "--latent", "mode"))
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    assert report["written"] == 2 and sorted(b["name"] for b in report["bad"]) == ["broken", "short"]
    assert open_latent_dataset(tmp_path / "cache").names == ["clip0", "clip1"]
    assert cli.main(_prepare(data, tmp_path / "cache", "--base", str(tiny_base), "--latent", "mode")) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2          # a rerun continues
