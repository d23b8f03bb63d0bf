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
    """Every path below ``folder`` (hidden ones too) with the sha256 of its bytes (folders: None):
    'unchanged' means equal snapshots, byte for byte."""
    import hashlib

    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


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
    from fourd_core.models.loading import ModelSpec
    from fourd_core.pipelines.assemble import load_pipeline

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
    from fourd_core.models.loading import ModelSpec
    from fourd_core.pipelines.assemble import load_pipeline

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

    from fourd_core.util.atomic import writable_output_dir
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
        export_scene(_scene(), out, ExportOptions.with_formats(videos=False, cameras=False, depth=False, ply=False, glb=False))
    assert probes == [out] and (out / "scene.safetensors").is_file()


def test_export_into_unwritable_folder_is_a_clear_error(tmp_path):
    """Without a probe of its own, export_scene still refuses an unwritable folder up front."""
    from fourd_core.io.export import ExportOptions, export_scene

    out = unwritable_dir(tmp_path)
    with pytest.raises(InputError, match=r"is not writable \(.*\)\. Choose a folder you can write to"):
        export_scene(_scene(), out, ExportOptions.with_formats(videos=False, cameras=False, depth=False, ply=False, glb=False))


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


def _export_inputs(scene) -> dict:
    """FourD Export's inputs as ComfyUI passes them (by name): its widgets' defaults."""
    return dict(scene=scene, filename_prefix="fourd/scene", fps=24.0, ply=True, glb=True, min_confidence=0.0,
                voxel_size=0.0, outlier_neighbors=0, max_points=0)


def test_export_failure_leaves_the_output_dir_unchanged(nodes_pack, monkeypatch):
    pack, output = nodes_pack
    from fourd_core.api import camera_frame_fallback

    s = _scene()
    K, c2w, depth, conf = camera_frame_fallback(s.xyz - 0.5 + torch.tensor([0, 0, 2.0]))
    scene = Scene4D(rgb=s.rgb, xyz=s.xyz, K=K, cam_to_world=c2w, depth=depth, confidence=conf)
    formats_mod = sys.modules[pack.__name__ + ".fourd_core.io.formats.pointclouds"]

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(formats_mod, "write_glb", boom)
    before = snapshot(output)
    pack_errors = sys.modules[pack.__name__ + ".fourd_core.errors"]
    with pytest.raises(pack_errors.DiskFullError, match=r"(?s)No space left.*disk is full.*free some space"):
        pack.NODE_CLASS_MAPPINGS["FourDExport"]().export(**_export_inputs(scene))
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
    export_scene(_scene(), out, ExportOptions.with_formats(cameras=False, depth=False, ply=False, glb=False))
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


# ------------------------------------------------------------------------------------------------ text encodings
#: a prompt typed in a Windows editor and saved as Windows-1252 (0xe9 = e-acute, 0x93/0x94 = curly quotes)
CP1252_PROMPT = "café crème on a “table”"


def _cp1252_case(tmp_path: Path, where: str) -> list[str]:
    """CLI arguments whose one text file (``where``) is Windows-1252, not UTF-8."""
    data = CP1252_PROMPT.encode("cp1252")
    out = str(tmp_path / "out")
    if where == "--prompt-file":
        (tmp_path / "prompt.txt").write_bytes(data)
        return ["generate", "--preset", "tiny", "--image", str(EXAMPLE_IMAGE), "--prompt-file",
                str(tmp_path / "prompt.txt"), "--out", out]
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(EXAMPLE_IMAGE, images / "park.png")
    if where == "--prompts":
        (tmp_path / "prompts.jsonl").write_bytes(b'{"image": "park.png", "prompt": "' + data + b'"}\n')
        return ["generate", "--preset", "tiny", "--images", str(images), "--prompts", str(tmp_path / "prompts.jsonl"),
                "--out", out]
    (images / "park.txt").write_bytes(data)  # the sidecar beside the image
    return ["generate", "--preset", "tiny", "--images", str(images), "--out", out]


@pytest.mark.parametrize("where", ["--prompt-file", "--prompts", "sidecar"])
def test_text_files_that_are_not_utf8(tmp_path, capsys, where):
    args = _cp1252_case(tmp_path, where)
    before = snapshot(tmp_path)
    code, err = run_cli(args, capsys)
    assert code == 2 and "Traceback" not in err and "UnicodeDecodeError" not in err, err
    offset = CP1252_PROMPT.encode("cp1252").index(0xE9)  # the first byte that is not UTF-8
    assert "not UTF-8" in err and f"offset {offset}" in err and "Save it as UTF-8" in err and "--encoding" in err
    assert "loading models" not in err and snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["--prompt-file", "--prompts", "sidecar"])
def test_encoding_option_reads_each_text_file(tmp_path, where):
    """``--encoding cp1252`` decodes the same three files to the typed text (checked through the readers
    the command uses, without running the models)."""
    from fourd_core.distributed.batch import plan_items

    args = cli.build_parser().parse_args(_cp1252_case(tmp_path, where) + ["--encoding", "cp1252"])
    if where == "--prompt-file":
        assert cli._read_prompt(args) == CP1252_PROMPT
    else:
        items = plan_items(args.images, args.prompts, None, args.encoding)
        assert [i.prompt for i in items] == [CP1252_PROMPT]


def test_unknown_encoding_name(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a park")
    code, err = run_cli(["generate", "--preset", "tiny", "--image", str(EXAMPLE_IMAGE), "--prompt-file",
                         str(tmp_path / "p.txt"), "--encoding", "klingon", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "Unknown text encoding" in err and "cp1252" in err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ full disk
def _camera_scene(F=9, H=48, W=64, seed=0) -> Scene4D:
    """A scene with cameras (camera-frame fallback of a random map) and random colours."""
    from fourd_core.api import camera_frame_fallback

    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(F, H, W, 3, generator=g)
    K, c2w, depth, conf = camera_frame_fallback(xyz - 0.5 + torch.tensor([0, 0, 2.0]))
    return Scene4D(rgb=torch.rand(F, H, W, 3, generator=g), xyz=xyz, K=K, cam_to_world=c2w, depth=depth,
                   confidence=conf + 0.5)


def _pages(folder: Path) -> int:
    """Bytes ``folder``'s files take on a tmpfs (whole 4 KiB pages)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


_IN_NAMESPACE = r"""
import contextlib, io, json, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from test_bad_input import snapshot
from fourd_core import cli
out = {out!r}
results = []
for argv in {runs!r}:
    before = snapshot(__import__("pathlib").Path(out).parent)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    results.append({{"code": code, "err": err.getvalue(), "before": before,
                     "after": snapshot(__import__("pathlib").Path(out).parent)}})
print(json.dumps(results))
"""


def _run_on_small_disk(tmp_path: Path, size_bytes: int, runs: list[list[str]]) -> list[dict]:
    """Run CLI commands with ``--out`` on a tmpfs of ``size_bytes``, mounted in a private mount namespace
    (so nothing outside this test sees it); skips where the machine allows no such mount."""
    import json

    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a private mount namespace")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "in_namespace.py"
    script.write_text(_IN_NAMESPACE.format(root=str(ROOT), tests=str(ROOT / "tests"), out=str(disk / "out"), runs=runs))
    cmd = f"mount -t tmpfs -o size={size_bytes} fourd-test {disk} && exec {sys.executable} {script}"
    r = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode != 0 and ("mount" in r.stderr or "unshare" in r.stderr) and not r.stdout.strip():
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_disk_too_small_for_the_export_is_refused_before_writing(tmp_path):
    scene = _camera_scene(F=9, H=96, W=128)
    scene.save(tmp_path / "scene.safetensors")
    # the scene file alone is 9 * 96 * 128 * 21 bytes = 2.3 MB, on a 1 MB disk
    (res,) = _run_on_small_disk(tmp_path, 1 << 20, [["geometry", "--scene", str(tmp_path / "scene.safetensors"),
                                                     "--out", str(tmp_path / "disk" / "out")]])
    assert res["code"] == 2 and "Traceback" not in res["err"], res["err"]
    assert "disk is full" in res["err"] and "needs at least" in res["err"] and "free" in res["err"]
    assert res["after"] == res["before"]


def test_disk_filling_up_during_the_export_keeps_the_earlier_export(tmp_path):
    """The free-space check passes (the uncompressed files fit), the compressed ones do not: ENOSPC in the
    middle of writing. The earlier complete export in the same folder stays byte for byte."""
    from fourd_core.io.export import export_size_lower_bound

    small, big = _camera_scene(F=2, H=32, W=48, seed=1), _camera_scene(F=9, H=96, W=128, seed=2)
    small.save(tmp_path / "small.safetensors")
    big.save(tmp_path / "big.safetensors")
    ref = tmp_path / "ref"
    for name in ("small", "big"):  # sizes of both exports on a normal disk
        assert cli.main(["geometry", "--scene", str(tmp_path / f"{name}.safetensors"), "--out", str(ref / name),
                         ]) == 0
    options = cli._export_options(cli.build_parser().parse_args(["geometry", "--scene", "x", "--out", "y"]), True)
    lower = export_size_lower_bound(Scene4D.load(ref / "big" / "scene.safetensors"), options, list(range(9)))
    total = _pages(ref / "big")
    assert total > lower * 1.1, "the test needs compressed files that the lower bound leaves out"
    size = _pages(ref / "small") + (lower + total) // 2 + 64 * 4096
    out = str(tmp_path / "disk" / "out")
    first, second = _run_on_small_disk(tmp_path, size, [
        ["geometry", "--scene", str(tmp_path / "small.safetensors"), "--out", out],
        ["geometry", "--scene", str(tmp_path / "big.safetensors"), "--out", out]])
    assert first["code"] == 0, first["err"]
    assert second["code"] == 2 and "Traceback" not in second["err"], second["err"]
    assert "disk is full while writing" in second["err"] and "free some space" in second["err"]
    assert second["after"] == second["before"]  # the first export, untouched; no staging left


# ------------------------------------------------------------------------------------------------ checks before long work
def test_gaussians_fit_with_an_unwritable_out_fails_before_fitting(tmp_path, capsys):
    _camera_scene().save(tmp_path / "scene.safetensors")
    out = unwritable_dir(tmp_path) / "out"
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    code, err = run_cli(["gaussians", "--scene", str(tmp_path / "scene.safetensors"), "--out", str(out), "--fit",
                         "--iterations", "100000"], capsys)
    assert code == 2 and "--out" in err and "Choose a folder" in err and "Traceback" not in err, err
    assert "fitting" not in err and time.perf_counter() - t0 < 30  # refused before the (hours-long) fit
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("value", ["2", "50", "-0.1", "nan"])
def test_min_confidence_has_one_rule_in_every_command(tmp_path, capsys, value):
    """A confidence threshold is a fraction in [0, 1] in generate, geometry and gaussians alike (50 meant as
    a percentage used to write PLY files with zero splats)."""
    _camera_scene().save(tmp_path / "scene.safetensors")
    scene = str(tmp_path / "scene.safetensors")
    before = snapshot(tmp_path)
    for args in (tiny_args(tmp_path / "out", "--min-confidence", value),
                 ["geometry", "--scene", scene, "--out", str(tmp_path / "out"), "--min-confidence", value],
                 ["gaussians", "--scene", scene, "--out", str(tmp_path / "out"), "--min-confidence", value],
                 ["gaussians", "--scene", scene, "--out", str(tmp_path / "out"), "--fit", "--min-confidence", value]):
        code, err = run_cli(args, capsys)
        assert code == 2 and "min" in err and "confidence must be" in err and "[0, 1]" in err and "50 %" in err, (args, err)
        assert "loading models" not in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------ two writers
def test_two_exports_into_one_folder_never_interleave(tmp_path, monkeypatch):
    """Writer A is paused in the middle of its commit (after its first file moved into place); writer B
    exports another scene into the same folder meanwhile. Afterwards every file is from one run."""
    import threading

    from fourd_core.io.export import ExportOptions, export_scene
    from fourd_core.util import atomic

    out = tmp_path / "out"
    out.mkdir()
    scenes = {}
    for name, seed in (("A", 10), ("B", 11)):
        s = _camera_scene(F=2, seed=seed)
        s.metadata["seed"] = seed
        scenes[name] = s
    paused, resume, b_done = threading.Event(), threading.Event(), threading.Event()
    original = atomic.replace_path

    def replace(src, target):
        original(src, target)
        if threading.current_thread().name == "A" and not paused.is_set():
            paused.set()              # A has committed one entry: hold it here
            assert resume.wait(60)

    monkeypatch.setattr(atomic, "replace_path", replace)
    opts = ExportOptions.with_formats(videos=False, images=False, glb=False, gaussians=False)
    errors = []

    def run(name):
        try:
            export_scene(scenes[name], out, opts)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            if name == "B":
                b_done.set()

    a = threading.Thread(target=run, args=("A",), name="A")
    a.start()
    assert paused.wait(60)
    b = threading.Thread(target=run, args=("B",), name="B")
    b.start()
    b_done.wait(3)                   # B has staged everything and waits for A's commit (or, unlocked, interleaves)
    resume.set()
    a.join(60)
    b.join(60)
    assert not errors, errors
    depth = torch.from_numpy(__import__("numpy").load(out / "depth.npy"))
    run_of = {name: torch.equal(depth, s.depth.float()) for name, s in scenes.items()}
    assert sum(run_of.values()) == 1
    winner = scenes[max(run_of, key=run_of.get)]
    back = Scene4D.load(out / "scene.safetensors")
    assert torch.equal(back.depth, winner.depth.float()) and torch.equal(back.xyz, winner.xyz)
    import json

    from fourd_core.testing.readers import read_ply

    assert json.loads((out / "cameras.json").read_text())["seed"] == winner.metadata["seed"]
    for i in range(2):
        points, _ = read_ply(out / "pointclouds" / f"frame_{i:05d}.ply")
        assert torch.allclose(points, winner.points(i).reshape(-1, 3).float())
    assert not [p for p in out.iterdir() if p.name.startswith(".fourd-")]


# ------------------------------------------------------------------------------------------------ shared caches
_CACHE_WORKER = r"""
import json, os, sys
sys.path.insert(0, {root!r})
from pathlib import Path
import fourd_core.{module} as m
built = []
original = m.{save}
def counting(folder, seed=0):
    built.append(str(folder))
    return original(folder, seed)
m.{save} = counting
path = m.{ensure}(Path(sys.argv[1]))
from safetensors.torch import load_file
tensors = sum(len(load_file(str(f))) for f in sorted(path.rglob("*.safetensors")))
print(json.dumps({{"built": len(built), "inode": os.stat(path).st_ino, "path": str(path), "tensors": tensors}}))
"""


@pytest.mark.parametrize("module,save,ensure", [("models.tiny_preset", "save_tiny_preset", "ensure_tiny_preset"),
                                               ("native.tiny_wan", "save_native_tiny", "ensure_native_tiny"),
                                               ("models.vace", "save_tiny_vace", "ensure_tiny_vace"),
                                               ("native.tiny_vace", "save_native_tiny_vace", "ensure_native_tiny_vace")])
def test_processes_on_an_empty_cache_build_it_once(tmp_path, module, save, ensure):
    import json

    cache = tmp_path / "cache"
    script = tmp_path / "worker.py"
    script.write_text(_CACHE_WORKER.format(root=str(ROOT), module=module, save=save, ensure=ensure))
    procs = [subprocess.Popen([sys.executable, str(script), str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(3)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sum(r["built"] for r in results) == 1              # one process built it, the others waited
    assert len({r["inode"] for r in results}) == 1             # and all read that same folder, never replaced
    assert len({r["tensors"] for r in results}) == 1 and results[0]["tensors"] > 0
    leftovers = [p.name for p in cache.iterdir() if p.name.startswith(".fourd-")]
    assert leftovers == []


# ------------------------------------------------------------------------------------------------ tensor dtypes
def test_integer_tensor_in_a_transformer_file(single_files, tmp_path, capsys):
    from fourd_core.models.loading import load_transformer_file  # noqa: F401 - the loader the CLI would reach

    sd = load_file(str(single_files["transformer_fp16"]))
    name = "model.diffusion_model.blocks.0.ffn.0.weight"
    sd[name] = sd[name].to(torch.int8)
    bad = tmp_path / "wan_int8.safetensors"
    save_file(sd, str(bad))
    out = tmp_path / "out"
    code, err = run_cli(tiny_args(out, "--transformer-file", str(bad)), capsys)
    assert code == 2 and "Traceback" not in err and "load_state_dict" not in err, err
    assert name in err and "I8" in err and "floating-point" in err and "fp16, bf16 or fp8" in err
    assert "loading transformer" not in err and not out.exists()  # refused before the model is built


# ------------------------------------------------------------------------------------------------ messages
class _Payload:
    """Unpickling this runs ``open(marker, "w")``: it must never happen."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_weights_file_gives_one_line_and_never_runs(tmp_release_with_pickle, capsys):
    release, marker, out = tmp_release_with_pickle
    code, err = run_cli(tiny_args(out, "--lora", str(release / "pytorch_lora_weights.safetensors"),
                                  "--domain-embeddings", str(release / "learnable_domain_embeddings.pt")), capsys)
    assert code == 2 and not marker.exists()
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "never runs" in errors[0] and ".safetensors" in errors[0]
    assert "weights_only=False" not in err and "Traceback" not in err and "(1)" not in err  # torch's own advice


@pytest.fixture()
def tmp_release_with_pickle(tiny_release, tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(tiny_release / "pytorch_lora_weights.safetensors", release)
    marker = tmp_path / "payload_ran"
    torch.save({"embeddings": _Payload(str(marker))}, release / "learnable_domain_embeddings.pt")
    return release, marker, tmp_path / "out"


@pytest.mark.parametrize("digits", [60, 5000])
def test_an_absurd_integer_is_not_echoed_in_full(tmp_path, digits):
    r = subprocess.run([sys.executable, "-m", "fourd_core", *tiny_args(tmp_path / "out", "--frames", "9" * digits)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    error = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert r.returncode == 2 and "9" * 25 not in r.stderr and len(error) == 1 and len(error[0]) < 200, r.stderr[-2000:]
    assert "--frames" in error[0] and "Traceback" not in r.stderr


def test_a_warning_prints_once_without_its_source_line(tmp_path):
    """Camera recovery falls back on a map no camera explains: the CLI says so on one line, once."""
    scene = _camera_scene(F=3, H=24, W=32, seed=3)
    Scene4D(rgb=scene.rgb, xyz=torch.rand(3, 24, 32, 3)).save(tmp_path / "s.safetensors")
    r = subprocess.run([sys.executable, "-m", "fourd_core", "geometry", "--scene", str(tmp_path / "s.safetensors"),
                        "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if "fallback" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: Camera recovery failed"), r.stderr
    assert "warnings.warn" not in r.stderr and "UserWarning" not in r.stderr


# ------------------------------------------------------------------------------------------------ long-running server
def test_export_node_honours_stop_between_files(nodes_pack, monkeypatch):
    """ComfyUI's Stop reaches the export between files; nothing partial is left in the output folder."""
    pack, output = nodes_pack
    bridge = sys.modules[pack.__name__ + ".nodes.comfy_bridge"]
    calls = []

    class Stopped(Exception):
        pass

    def check_interrupt():
        calls.append(1)
        if len(calls) == 6:   # somewhere among the frame images
            raise Stopped()

    monkeypatch.setattr(bridge, "check_interrupt", check_interrupt)
    before = snapshot(output)
    with pytest.raises(Stopped):
        pack.NODE_CLASS_MAPPINGS["FourDExport"]().export(**_export_inputs(_camera_scene(F=9)))
    assert snapshot(output) == before and len(calls) == 6


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="RSS is read from /proc (Linux)")
def test_gaussians_fit_node_five_times_in_one_process(nodes_pack):
    """A server running the tiny Gaussians demo again and again: on a scene whose camera recovery fell back
    (random point maps, as the tiny model makes), each fit takes about as long as the others and the
    process keeps no memory from one run to the next."""
    from fourd_core.api import recover_geometry

    pack, _ = nodes_pack
    g = torch.Generator().manual_seed(42)
    with pytest.warns(UserWarning, match="fallback"):
        scene = recover_geometry(Scene4D(rgb=torch.rand(3, 32, 48, 3, generator=g), xyz=torch.rand(3, 32, 48, 3, generator=g)))
    assert scene.metadata["geometry"]["fallback"]
    node = pack.NODE_CLASS_MAPPINGS["FourDFit4DGaussians"]()
    rss, seconds = [_rss_bytes()], []
    for seed in range(5):
        t0 = time.perf_counter()
        with pytest.warns(UserWarning, match="low-confidence fallback"):
            splats, orbit = node.fit(scene, 15, 0, False, seed)
        seconds.append(time.perf_counter() - t0)
        rss.append(_rss_bytes())
        assert orbit.shape[0] == 8 and splats.num_frames == 3
    grown = [(r - rss[1]) / 2**20 for r in rss[2:]]
    assert max(grown) < 200, f"RSS after runs 2..5 minus after run 1, MB: {grown}"
    assert (rss[1] - rss[0]) / 2**20 < 1000, f"the first fit kept {(rss[1] - rss[0]) / 2**20:.0f} MB"
    assert max(seconds) < 3 * min(seconds), seconds
