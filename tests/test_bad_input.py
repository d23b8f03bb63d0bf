"""Bad input: every case gets the project's clear error (a FourDError naming the fix; exit 2 in
the CLI) before the expensive work, and leaves the output folder exactly as it was.

Each expectation is written from the case itself (what the user did wrong and what must happen),
not from the code's messages: the assertions match the key words of the fix a user needs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import EXAMPLE_IMAGE, ROOT
from fourd_core import cli
from fourd_core.errors import InputError, WeightsError
from fourd_core.scene import Scene4D


def snapshot(folder: Path) -> dict:
    """Every path below ``folder`` (hidden ones too) with its size: 'unchanged' means equal snapshots."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1) for p in sorted(folder.rglob("*"))}


def run_cli(args, capsys) -> tuple[int, str]:
    code = cli.main(args)
    err = capsys.readouterr().err
    return code, err


def tiny_args(out, *extra):
    return ["generate", "--preset", "tiny", "--image", str(EXAMPLE_IMAGE), "--prompt", "a park", "--out", str(out),
            *extra]


def _scene(F=2, H=8, W=12, xyz_scale=1.0):
    g = torch.Generator().manual_seed(0)
    return Scene4D(rgb=torch.rand(F, H, W, 3, generator=g), xyz=torch.rand(F, H, W, 3, generator=g) * xyz_scale)


# ------------------------------------------------------------------------------------------------ weights
@pytest.fixture()
def truncated_base(tiny_root, tmp_path) -> Path:
    base = tmp_path / "base"
    shutil.copytree(tiny_root / "base", base)
    f = next((base / "transformer").glob("*.safetensors"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 2 // 3])  # an interrupted download
    return base


def test_truncated_transformer_in_a_diffusers_folder(truncated_base, tiny_root, tmp_path, capsys):
    from fourd_core.models.loading import ModelSpec, load_pipeline

    with pytest.raises(WeightsError, match=r"(?s)truncated.*download it again"):
        load_pipeline(ModelSpec(base=str(truncated_base), fourdnex=str(tiny_root / "lora")))
    out = tmp_path / "out"
    code, err = run_cli(["generate", "--base", str(truncated_base), "--lora", str(tiny_root / "lora"), "--image",
                         str(EXAMPLE_IMAGE), "--prompt", "x", "--out", str(out), "--height", "96", "--width", "144",
                         "--steps", "1"], capsys)
    assert code == 2 and "truncated" in err and "Traceback" not in err
    assert not out.exists()


def _lora(tiny_release) -> dict:
    return load_file(str(tiny_release / "pytorch_lora_weights.safetensors"))


def test_lora_whose_a_and_b_ranks_disagree(tiny_release, tmp_path):
    from fourd_core.models.lora import read_fourdnex_lora

    sd = _lora(tiny_release)
    key = "transformer.blocks.0.attn1.to_q.lora_B.weight"
    sd[key] = torch.zeros(sd[key].shape[0], sd[key].shape[1] + 3)  # B [out, r+3] vs A [r, in]
    save_file(sd, str(tmp_path / "pytorch_lora_weights.safetensors"))
    with pytest.raises(WeightsError, match=r"(?s)rank.*download the release again"):
        read_fourdnex_lora(tmp_path / "pytorch_lora_weights.safetensors")


def test_lora_for_another_model_family(tmp_path):
    from fourd_core.models.lora import read_fourdnex_lora

    kohya = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 320),
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(320, 4),
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(4.0)}
    save_file(kohya, str(tmp_path / "sd_style.safetensors"))
    with pytest.raises(WeightsError, match=r"(?s)Stable Diffusion.*4DNex-Lora"):
        read_fourdnex_lora(tmp_path / "sd_style.safetensors")


def test_lora_without_domain_embeddings_is_refused(tiny_root, tiny_release, tmp_path):
    from fourd_core.models.loading import ModelSpec, load_pipeline

    lonely = tmp_path / "lora"
    lonely.mkdir()
    shutil.copy(tiny_release / "pytorch_lora_weights.safetensors", lonely)
    with pytest.raises(WeightsError, match=r"(?s)domain embeddings.*learnable_domain_embeddings"):
        load_pipeline(ModelSpec(base=str(tiny_root / "base"), fourdnex=str(lonely), dtype="float32"))


def test_domain_embeddings_without_the_lora_are_refused(tiny_release, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(tiny_args(out, "--lora", "none", "--domain-embeddings",
                                  str(tiny_release / "learnable_domain_embeddings.pt")), capsys)
    assert code == 2 and "--domain-embeddings" in err and "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ images
def test_image_over_the_decompression_bomb_limit(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from fourd_core.io.images import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the example photo is far above this
    with pytest.raises(InputError, match=r"(?s)too large.*Downscale"):
        load_image(EXAMPLE_IMAGE)
    code, err = run_cli(tiny_args(tmp_path / "out"), capsys)
    assert code == 2 and "too large" in err and not (tmp_path / "out").exists()


def test_a_folder_given_as_the_image(tmp_path, capsys):
    code, err = run_cli(["generate", "--preset", "tiny", "--image", str(tmp_path), "--prompt", "x", "--out",
                         str(tmp_path / "out")], capsys)
    assert code == 2 and "is a folder" in err and "not found" not in err


def test_size_errors_read_width_x_height():
    from fourd_core.io.images import prepare_image

    with pytest.raises(InputError, match=r"got 100x50"):  # width 100, height 50, as the node's inputs read
        prepare_image(torch.rand(64, 64, 3), height=50, width=100)


# ------------------------------------------------------------------------------------------------ scenes
def test_scene_file_without_xyz(tmp_path):
    s = _scene()
    s.save(tmp_path / "s.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if k != "xyz"}
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=meta)
    with pytest.raises(InputError, match=r"(?s)no xyz.*Re-export"):
        Scene4D.load(tmp_path / "broken.safetensors")


def test_scene_keeps_point_maps_beyond_float16_range(tmp_path):
    s = _scene(xyz_scale=1e6)  # up to 1e6 > 65504, the largest float16
    s.save(tmp_path / "big.safetensors")
    back = Scene4D.load(tmp_path / "big.safetensors")
    assert torch.isfinite(back.xyz).all()
    assert torch.allclose(back.xyz, s.xyz, rtol=1e-7)


# ------------------------------------------------------------------------------------------------ --out

def unwritable_dir(tmp_path) -> Path:
    """A folder this process cannot write into: a 0500 folder, or /sys for root (root ignores
    permission bits; sysfs refuses even root); skips the test when there is none."""
    if os.geteuid() == 0:
        if not Path("/sys").is_dir():
            pytest.skip("no unwritable location for root here")
        return Path("/sys")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return ro


@pytest.mark.parametrize("case", ["a file", "under a file", "not writable"])
def test_unusable_out_fails_before_any_model_loads(tmp_path, capsys, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    if case == "a file":
        out = blocker
    elif case == "under a file":
        out = blocker / "sub"
    else:
        out = unwritable_dir(tmp_path) / "out"
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    code, err = run_cli(tiny_args(out), capsys)
    assert code == 2 and "--out" in err and ("Choose" in err) and "Traceback" not in err
    assert "loading models" not in err  # refused before the expensive work
    assert time.perf_counter() - t0 < 30
    assert snapshot(tmp_path) == before and blocker.read_text() == "keep me"


def test_generate_out_is_probed_once(tmp_path, monkeypatch):
    """generate probes --out before the models load (writable_output_dir) and then exports into it
    (export_scene): the export's staging folder is its own check, so one probe file in all."""
    import tempfile

    from fourd_core.io.atomic import writable_output_dir
    from fourd_core.io.export import ExportOptions, export_scene

    probes = []
    mkstemp = tempfile.mkstemp

    def spy(*args, **kwargs):
        if "probe" in str(kwargs.get("prefix", "")):
            probes.append(Path(kwargs["dir"]))
        return mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    out = tmp_path / "new" / "out"
    with writable_output_dir(out, "--out"):
        export_scene(_scene(), out, ExportOptions(videos=False, cameras=False, depth=False, ply=False, glb=False))
    assert probes == [out] and (out / "scene.safetensors").is_file()


def test_export_into_unwritable_folder_is_a_clear_error(tmp_path):
    """Without a probe of its own, export_scene still refuses an unwritable folder up front."""
    from fourd_core.io.export import ExportOptions, export_scene

    out = unwritable_dir(tmp_path)
    with pytest.raises(InputError, match=r"is not writable \(.*\)\. Choose a folder you can write to"):
        export_scene(_scene(), out, ExportOptions(videos=False, cameras=False, depth=False, ply=False, glb=False))


# ------------------------------------------------------------------------------------------------ ComfyUI nodes
@pytest.fixture()
def nodes_pack(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("FOURD_OUTPUT_DIR", str(tmp_path / "output"))
    for k in ("folder_paths",):
        monkeypatch.delitem(sys.modules, k, raising=False)
    name = "ComfyUI_FourD_bad_input"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    (tmp_path / "output").mkdir()
    return mod, tmp_path / "output"


def test_overlong_filename_prefix_is_rejected_at_queue_time(nodes_pack):
    pack, output = nodes_pack
    prefix = "fourd/" + "x" * 300
    before = snapshot(output)
    for name in ("FourDExport", "FourDSaveScene"):
        cls = pack.NODE_CLASS_MAPPINGS[name]
        msg = cls.VALIDATE_INPUTS(filename_prefix=prefix)
        assert isinstance(msg, str) and "characters" in msg
        assert cls.VALIDATE_INPUTS(filename_prefix=None) is True  # linked input: checked at run time
    pack_errors = sys.modules[pack.__name__ + ".fourd_core.errors"]  # the pack's own copy of the classes
    with pytest.raises(pack_errors.InputError, match="characters"):
        pack.NODE_CLASS_MAPPINGS["FourDSaveScene"]().save(_scene(), prefix)
    assert snapshot(output) == before


def test_save_scene_with_a_dot_in_the_prefix(nodes_pack):
    pack, output = nodes_pack
    node = pack.NODE_CLASS_MAPPINGS["FourDSaveScene"]()
    first = node.save(_scene(), "runs/run.v2")["result"][0]
    second = node.save(_scene(), "runs/run.v2")["result"][0]
    assert first == "runs/run.v2_00001.safetensors" and second == "runs/run.v2_00002.safetensors"
    for rel in (first, second):
        assert Scene4D.load(output / rel).num_frames == 2
    assert sorted(p.name for p in (output / "runs").iterdir()) == ["run.v2_00001.safetensors", "run.v2_00002.safetensors"]


def test_frame_counts_that_are_not_4k_plus_1_fail_validation(nodes_pack):
    pack, _ = nodes_pack
    sampler = pack.NODE_CLASS_MAPPINGS["FourDSampler"]
    assert "4k+1" in sampler.VALIDATE_INPUTS(frames=48)
    assert sampler.VALIDATE_INPUTS(frames=49) is True and sampler.VALIDATE_INPUTS(frames=None) is True
    assert "4k+1" in sampler.VALIDATE_INPUTS(frames=85)  # above the widget's max 81
    grid = pack.NODE_CLASS_MAPPINGS["FourDGridSampler"]
    assert "4k+1" in grid.VALIDATE_INPUTS(window_frames=10, overlap_frames=5)
    prep = pack.NODE_CLASS_MAPPINGS["FourDPrepareImage"]
    assert "multiple of 16" in prep.VALIDATE_INPUTS(width=730, height=480)
    assert prep.VALIDATE_INPUTS(width=720, height=480) is True


def test_export_failure_leaves_the_output_dir_unchanged(nodes_pack, monkeypatch):
    pack, output = nodes_pack
    from fourd_core.api import camera_frame_fallback

    s = _scene()
    K, c2w, depth, conf = camera_frame_fallback(s.xyz - 0.5 + torch.tensor([0, 0, 2.0]))
    scene = Scene4D(rgb=s.rgb, xyz=s.xyz, K=K, cam_to_world=c2w, depth=depth, confidence=conf)
    export_mod = sys.modules[pack.__name__ + ".fourd_core.io.export"]

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_mod, "write_glb", boom)
    before = snapshot(output)
    with pytest.raises(OSError):
        pack.NODE_CLASS_MAPPINGS["FourDExport"]().export(scene, "fourd/scene", 24.0, True, True, 0.0, 0.0, 0, 0)
    assert snapshot(output) == before


# ------------------------------------------------------------------------------------------------ signals, debris
def _big_scene_file(path: Path) -> Path:
    """A scene whose export takes long enough (49 frames) to be interrupted in the middle."""
    from fourd_core.api import camera_frame_fallback

    g = torch.Generator().manual_seed(1)
    F, H, W = 49, 96, 144
    xyz = torch.rand(F, H, W, 3, generator=g)
    K, c2w, depth, conf = camera_frame_fallback(xyz - 0.5 + torch.tensor([0, 0, 2.0]))
    Scene4D(rgb=torch.rand(F, H, W, 3, generator=g), xyz=xyz, K=K, cam_to_world=c2w, depth=depth,
            confidence=conf).save(path)
    return path


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_export_leaves_nothing_behind(tmp_path, sig, code):
    scene = _big_scene_file(tmp_path / "scene.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("an earlier result")
    before = snapshot(out)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fourd_core", "geometry", "--scene", str(scene), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.startswith(".fourd-export-") for p in out.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the export finished before it could be interrupted"
    time.sleep(0.3)  # well inside the export (videos, images, depth, 49 point clouds)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and "TypeError" not in err, err[-3000:]
    assert snapshot(out) == before  # no staging folder, no partial files, the earlier file kept


def test_stale_staging_of_a_killed_run_is_removed_by_the_next(tmp_path):
    from fourd_core.io.export import ExportOptions, export_scene

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = out / f".fourd-export-{dead_pid}-abc123"
    (stale / "pointclouds").mkdir(parents=True)
    (stale / "pointclouds" / "frame_00000.ply").write_bytes(b"x" * 20000)
    stale_tmp = out / f".fourd-tmp-{dead_pid}-rgb.x1.tmp.mp4"
    stale_tmp.write_bytes(b"partial")
    live = out / f".fourd-export-{os.getpid()}-inuse"  # another export of a live process: kept
    live.mkdir()
    unrelated = out / ".my-notes"
    unrelated.write_text("not ours")
    export_scene(_scene(), out, ExportOptions(cameras=False, depth=False, ply=False, glb=False))
    assert not stale.exists() and not stale_tmp.exists()
    assert live.is_dir() and unrelated.read_text() == "not ours"
    assert (out / "rgb.mp4").is_file()


def test_output_files_honour_the_umask(tmp_path):
    from fourd_core.io.export import export_scene

    from test_io import _scene as camera_scene

    old = os.umask(0o022)
    try:
        export_scene(camera_scene(), tmp_path / "out")
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in (tmp_path / "out").rglob("*")}
    assert modes and all(m == (0o755 if (tmp_path / p).is_dir() else 0o644) for p, m in modes.items()), modes


def test_stop_exceptions_python_could_not_raise_print_no_traceback():
    """A signal landing in a ``__del__`` / fork hook: the stop is remembered (raised at the next safe
    point), so the CLI's unraisable hook drops its "Exception ignored" traceback; other unraisable
    errors, and stop exceptions without a remembered request, still reach the previous hook."""
    import gc

    from fourd_core import interrupts

    seen = []

    class Raises:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    old = sys.unraisablehook
    sys.unraisablehook = interrupts.make_unraisable_hook(lambda u: seen.append(type(u.exc_value)))
    try:
        Raises(KeyboardInterrupt())
        gc.collect()
        interrupts.request_stop(KeyboardInterrupt)
        Raises(KeyboardInterrupt())
        Raises(interrupts.Terminated())
        Raises(ValueError("a real bug"))
        gc.collect()
    finally:
        interrupts.clear_stop_request()
        sys.unraisablehook = old
    assert seen == [KeyboardInterrupt, ValueError]
