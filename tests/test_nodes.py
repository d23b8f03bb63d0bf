"""The ComfyUI pack: imported the way ComfyUI imports it (spec_from_file_location on __init__.py),
with ComfyUI absent or faked (fake ``folder_paths`` / ``comfy`` modules live in this file only);
node definitions, the example workflows checked against them, and the API-format tiny demo
executed through the node classes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from conftest import EXAMPLE_IMAGE, ROOT

WORKFLOWS = ROOT / "workflows"
TEMPLATES = ROOT / "example_workflows"     # what ComfyUI lists as the pack's templates (UI format)
CORE_NODES = {  # name -> (inputs {name: (type, widget options)}, outputs [types]) for the core nodes used
    "LoadImage": ({"image": ("COMBO", None), "upload": ("IMAGEUPLOAD", None)}, ["IMAGE", "MASK"]),
    "PreviewImage": ({"images": ("IMAGE", None)}, []),
    "CreateVideo": ({"images": ("IMAGE", None), "fps": ("FLOAT", {"min": 1.0, "max": 120.0})}, ["VIDEO"]),
    "SaveVideo": ({"video": ("VIDEO", None), "filename_prefix": ("STRING", {}), "format": ("COMBO", None),
                   "codec": ("COMBO", None)}, []),
    "Preview3D": ({"model_file": ("STRING", {})}, []),
    # native path
    "UNETLoader": ({"unet_name": ("COMBO", None), "weight_dtype": ("COMBO", None)}, ["MODEL"]),
    "CLIPLoader": ({"clip_name": ("COMBO", None), "type": ("COMBO", None), "device": ("COMBO", None)}, ["CLIP"]),
    "CLIPVisionLoader": ({"clip_name": ("COMBO", None)}, ["CLIP_VISION"]),
    "CLIPVisionEncode": ({"clip_vision": ("CLIP_VISION", None), "image": ("IMAGE", None), "crop": ("COMBO", None)},
                         ["CLIP_VISION_OUTPUT"]),
    "VAELoader": ({"vae_name": ("COMBO", None)}, ["VAE"]),
    "ModelSamplingSD3": ({"model": ("MODEL", None), "shift": ("FLOAT", {"min": 0.0, "max": 100.0})}, ["MODEL"]),
    "VAEDecode": ({"samples": ("LATENT", None), "vae": ("VAE", None)}, ["IMAGE"]),
    "CLIPTextEncode": ({"text": ("STRING", {}), "clip": ("CLIP", None)}, ["CONDITIONING"]),
    "KSampler": ({"model": ("MODEL", None), "seed": ("INT", {"min": 0, "max": 2**64 - 1}), "steps": ("INT", {"min": 1}),
                  "cfg": ("FLOAT", {"min": 0.0, "max": 100.0}), "sampler_name": ("COMBO", None), "scheduler": ("COMBO", None),
                  "positive": ("CONDITIONING", None), "negative": ("CONDITIONING", None), "latent_image": ("LATENT", None),
                  "denoise": ("FLOAT", {"min": 0.0, "max": 1.0})}, ["LATENT"]),
    # novel view (comfy_extras/nodes_wan.py)
    "WanVaceToVideo": ({"positive": ("CONDITIONING", None), "negative": ("CONDITIONING", None), "vae": ("VAE", None),
                        "width": ("INT", {"min": 16, "max": 16384}), "height": ("INT", {"min": 16, "max": 16384}),
                        "length": ("INT", {"min": 1, "max": 16384}), "batch_size": ("INT", {"min": 1, "max": 4096}),
                        "strength": ("FLOAT", {"min": 0.0, "max": 1000.0}), "control_video": ("IMAGE", None),
                        "control_masks": ("MASK", None), "reference_image": ("IMAGE", None)},
                       ["CONDITIONING", "CONDITIONING", "LATENT", "INT"]),
    "TrimVideoLatent": ({"samples": ("LATENT", None), "trim_amount": ("INT", {"min": 0, "max": 99999})}, ["LATENT"]),
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
MODEL_FILES = {"diffusion_models": ["wan2.1_i2v_480p_14B_fp16.safetensors"], "text_encoders": ["umt5_xxl_fp16.safetensors"],
               "clip_vision": ["clip_vision_h.safetensors"], "vae": ["wan_2.1_vae.safetensors"],
               "loras": ["pytorch_lora_weights.safetensors", "learnable_domain_embeddings.pt"]}


def import_pack(name: str):
    """Import the pack as ComfyUI does, afresh: submodules cached under ``name`` by an earlier import
    (another test module's fake ComfyUI) are dropped, so import-time registration runs again."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class FakeComfy:
    """Minimal stand-ins for folder_paths, comfy.utils.ProgressBar and comfy.model_management."""

    def __init__(self, root: Path):
        self.root = root
        self.progress = []
        self.unloads = 0
        self.interrupt_at = None
        self.current_step = 0
        for kind, files in MODEL_FILES.items():
            (root / "models" / kind).mkdir(parents=True, exist_ok=True)
            for f in files:
                (root / "models" / kind / f).write_bytes(b"")
        (root / "models" / "diffusers").mkdir(parents=True, exist_ok=True)
        for d in ("output", "temp", "input"):
            (root / d).mkdir(exist_ok=True)
        shutil.copy(EXAMPLE_IMAGE, root / "input" / "amusement_park.png")

        fp = types.ModuleType("folder_paths")
        extra: dict[str, list[Path]] = {}

        def folders(kind):
            return [root / "models" / kind] + extra.get(kind, [])

        def full_path(kind, name):
            return next((str(f / name) for f in folders(kind) if (f / name).exists()), None)

        fp.get_filename_list = lambda kind: sorted(p.relative_to(f).as_posix() for f in folders(kind) if f.is_dir()
                                                   for p in f.rglob("*") if p.is_file())
        fp.get_folder_paths = lambda kind: [str(f) for f in folders(kind)]
        fp.get_full_path = full_path
        def add_folder(kind, path, is_default=False):
            if Path(path) not in folders(kind):
                extra.setdefault(kind, []).append(Path(path))

        fp.add_model_folder_path = add_folder
        fp.models_dir = str(root / "models")
        fp.get_output_directory = lambda: str(root / "output")
        fp.get_temp_directory = lambda: str(root / "temp")
        fp.get_input_directory = lambda: str(root / "input")
        comfy = types.ModuleType("comfy")
        utils = types.ModuleType("comfy.utils")
        mm = types.ModuleType("comfy.model_management")
        outer = self

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total = total

            def update_absolute(self, value, total=None, preview=None):
                outer.progress.append((value, total, preview))

        class InterruptProcessingException(Exception):
            pass

        def throw():
            outer.current_step += 1
            if outer.interrupt_at is not None and outer.current_step > outer.interrupt_at:
                raise InterruptProcessingException()

        def unload():
            outer.unloads += 1

        utils.ProgressBar = ProgressBar
        mm.InterruptProcessingException = InterruptProcessingException
        mm.throw_exception_if_processing_interrupted = throw
        mm.unload_all_models = unload
        mm.soft_empty_cache = lambda *a, **k: None
        comfy.utils, comfy.model_management = utils, mm
        self.modules = {"folder_paths": fp, "comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    import os

    f = FakeComfy(tmp_path_factory.mktemp("comfyui"))
    saved = {k: sys.modules.get(k) for k in f.modules}
    sys.modules.update(f.modules)
    saved_cache = os.environ.get("FOURD_CACHE")
    os.environ["FOURD_CACHE"] = str(f.root / "fourd_cache")   # the pack writes its tiny native weights here
    yield f
    if saved_cache is None:
        os.environ.pop("FOURD_CACHE", None)
    else:
        os.environ["FOURD_CACHE"] = saved_cache
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


@pytest.fixture(scope="module")
def pack(fake):
    return import_pack("ComfyUI_FourD_test")


def test_pack_imports_without_comfyui():
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k in ("folder_paths",) or k.startswith("comfy")}
    try:
        mod = import_pack("ComfyUI_FourD_nocomfy")
        assert "FourDSampler" in mod.NODE_CLASS_MAPPINGS and mod.WEB_DIRECTORY == "./web"
        for cls in mod.NODE_CLASS_MAPPINGS.values():
            cls.INPUT_TYPES()  # must not need ComfyUI
        assert not any(k == "folder_paths" or k.startswith("comfy") for k in sys.modules)
    finally:
        sys.modules.update(saved)


def test_fourd_core_never_imports_comfy():
    for p in (ROOT / "fourd_core").rglob("*.py"):
        text = p.read_text()
        assert "import comfy" not in text and "folder_paths" not in text, p


def test_node_manners(pack):
    m, names = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    assert set(m) == set(names)
    for key, cls in m.items():
        assert cls.CATEGORY.startswith("FourD"), key
        assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 30, key
        assert callable(getattr(cls, cls.FUNCTION)), key
        for section in cls.INPUT_TYPES().values():
            for name, spec in section.items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{key}.{name} has no tooltip"
        if cls.RETURN_TYPES:
            assert len(getattr(cls, "OUTPUT_TOOLTIPS", ())) == len(cls.RETURN_TYPES), key


def _node_spec(pack, class_type):
    """(inputs {name: (type, options or list for combos)}, outputs [types], widget names in order)."""
    if class_type in CORE_NODES:
        inputs, outputs = CORE_NODES[class_type]
        widgets = [n for n, (t, _) in inputs.items() if t in WIDGET_TYPES or t in ("COMBO", "IMAGEUPLOAD")]
        return inputs, outputs, widgets, set(inputs)
    cls = pack.NODE_CLASS_MAPPINGS[class_type]
    it = cls.INPUT_TYPES()
    inputs, widgets = {}, []
    for section in ("required", "optional"):
        for n, spec in it.get(section, {}).items():
            t = spec[0]
            if isinstance(t, (list, tuple)):
                inputs[n] = ("COMBO", list(t))
                widgets.append(n)
            else:
                inputs[n] = (t, spec[1] if len(spec) > 1 else {})
                if t in WIDGET_TYPES:
                    widgets.append(n)
    return inputs, list(cls.RETURN_TYPES), widgets, set(it.get("required", {}))


def _check_value(where, typ, opts, value):
    if typ == "COMBO":
        if isinstance(opts, list):
            assert value in opts, f"{where}: {value!r} is not one of the options"
    elif typ == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert opts.get("min", -2**63) <= value <= opts.get("max", 2**63), f"{where}: {value} out of range"
    elif typ == "FLOAT":
        assert isinstance(value, (int, float)), where
        assert opts.get("min", -1e30) <= value <= opts.get("max", 1e30), f"{where}: {value} out of range"
    elif typ == "BOOLEAN":
        assert isinstance(value, bool), where
    elif typ == "STRING":
        assert isinstance(value, str), where


def _ui_workflows():
    return sorted(TEMPLATES.glob("*.json"))


def _builder():
    spec = importlib.util.spec_from_file_location("fourd_build_workflows", WORKFLOWS / "build_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_templates_have_a_title_a_description_an_api_copy_and_a_thumbnail():
    """ComfyUI lists <pack>/example_workflows/*.json; frontends 1.27.10 and 1.58.1 show the file name as the title
    and, with - and _ read as spaces, as the description, and <name>.jpg beside it as the thumbnail."""
    from PIL import Image

    names = {p.stem for p in _ui_workflows()}
    assert "FourD example scene, no weights (CPU, a minute)" in names and len(names) >= 12
    assert not list(WORKFLOWS.glob("*.json")), "UI workflows belong in example_workflows/ (else listed twice)"
    for p in _ui_workflows():
        wf = json.loads(p.read_text())
        meta = wf["extra"]["fourd"]
        assert meta["title"] == p.stem and (ROOT / meta["api"]).is_file(), p.name
        assert "-" not in p.stem and "_" not in p.stem and ":" not in p.stem and p.stem.isascii(), p.stem
        assert len(p.stem) <= 64 and p.stem.startswith("FourD "), p.stem
        assert len(wf["extra"]["info"]) > 40, f"{p.name}: no description in extra.info"
        thumb = p.with_suffix(".jpg")
        assert thumb.is_file(), f"no thumbnail {thumb.name}"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and min(im.size) >= 256, (thumb.name, im.format, im.size)
    # every demo (tiny, example) uses the native path; the diffusers graphs say so in their title
    for p in _ui_workflows():
        types = {n["type"] for n in json.loads(p.read_text())["nodes"]}
        diffusers = types & {"FourDLoadWan", "FourDSampler", "FourDGridSampler"}
        if "tiny" in p.stem or "example" in p.stem:
            assert not diffusers, p.stem
        assert bool(diffusers) == ("diffusers" in p.stem), p.stem


@pytest.mark.parametrize("path", _ui_workflows(), ids=lambda p: p.name)
def test_no_node_overlaps_another(path):
    """Node rectangles (title bar above ``pos`` included) of the UI workflow do not overlap, with every size at
    least what the frontends compute for the node (the builder's table, measured in 1.58.1 and 1.27.10)."""
    b = _builder()
    wf = json.loads(path.read_text())
    for n in wf["nodes"]:
        least = b.MIN_SIZES.get(n["type"])
        assert least and n["size"][0] >= least[0] and n["size"][1] >= least[1], (n["type"], n["size"], least)
    boxes = {n["id"]: (n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in wf["nodes"]}
    ids = sorted(boxes)
    hits = [(a, b_) for i, a in enumerate(ids) for b_ in ids[i + 1:]
            if boxes[a][0] < boxes[b_][2] and boxes[b_][0] < boxes[a][2] and boxes[a][1] < boxes[b_][3]
            and boxes[b_][1] < boxes[a][3]]
    types = {n["id"]: n["type"] for n in wf["nodes"]}
    assert not hits, [(types[a], types[b_]) for a, b_ in hits]


@pytest.mark.parametrize("path", _ui_workflows(), ids=lambda p: p.name)
def test_ui_workflow_matches_node_definitions(pack, path):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        assert n["type"] in pack.NODE_CLASS_MAPPINGS or n["type"] in CORE_NODES, n["type"]
        inputs, outputs, widgets, _ = _node_spec(pack, n["type"])
        vals = list(n.get("widgets_values", []))
        expected = []
        for w in widgets:
            expected.append(w)
            if w == "seed":
                expected.append("control_after_generate")
        assert len(vals) == len(expected), f"{n['type']}: {len(vals)} widget values for {expected}"
        for w, v in zip(expected, vals):
            if w == "control_after_generate":
                assert v in ("fixed", "randomize", "increment", "decrement")
                continue
            typ, opts = inputs[w]
            linked = any(i["name"] == w and i.get("link") for i in n.get("inputs", []))
            if not linked:
                _check_value(f"{path.name}:{n['type']}.{w}", typ, opts, v)
        for i, out in enumerate(n.get("outputs", [])):
            assert out["type"] == outputs[i], (n["type"], out)
        if n["type"] in ("FourDLoadWan", "FourDLoad4DNeX") and "tiny" not in path.name:
            models = n["properties"].get("models", [])
            assert models and all({"name", "url", "directory"} <= set(m) for m in models), n["type"]
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == typ
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        dst_in = nodes[dst]["inputs"][dst_slot]
        assert dst_in["link"] == link_id
        want = _node_spec(pack, nodes[dst]["type"])[0][dst_in["name"]][0]
        assert want == typ or (want == "STRING" and typ == "STRING"), (nodes[dst]["type"], dst_in["name"], typ)


@pytest.mark.parametrize("path", sorted((WORKFLOWS / "api").glob("*.json")), ids=lambda p: p.name)
def test_api_workflow_matches_node_definitions(pack, path):
    prompt = json.loads(path.read_text())
    for nid, node in prompt.items():
        inputs, _, widgets, required = _node_spec(pack, node["class_type"])
        for name in required:
            if name == "upload":
                continue
            assert name in node["inputs"], f"{node['class_type']} is missing required input {name}"
        for name, value in node["inputs"].items():
            typ, opts = inputs[name]
            if isinstance(value, list):
                src = prompt[value[0]]
                src_out = _node_spec(pack, src["class_type"])[1][value[1]]
                assert src_out == typ, f"{node['class_type']}.{name}: {src_out} -> {typ}"
            else:
                _check_value(f"{path.name}:{node['class_type']}.{name}", typ, opts, value)


def node_id(prompt: dict, class_type: str) -> str:
    """Id of the (first) node of ``class_type`` in an API-format prompt."""
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def run_api_prompt(pack, prompt, fake):
    """A tiny executor: runs nodes in dependency order through their classes; core nodes stubbed."""
    from PIL import Image
    import numpy as np

    results, ui = {}, {}

    def core(class_type, inputs):
        if class_type == "LoadImage":
            arr = np.asarray(Image.open(fake.root / "input" / inputs["image"]).convert("RGB"), dtype=np.float32) / 255
            img = torch.from_numpy(arr)[None]
            return img, torch.zeros(img.shape[:3])
        if class_type == "CreateVideo":
            assert inputs["images"].ndim == 4 and inputs["images"].shape[-1] == 3
            return ({"frames": inputs["images"], "fps": inputs["fps"]},)
        if class_type == "Preview3D":
            assert (fake.root / "output" / inputs["model_file"]).is_file()
            return ()
        return ()

    def evaluate(nid):
        if nid in results:
            return results[nid]
        node = prompt[nid]
        kwargs = {k: (evaluate(v[0])[v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
        ct = node["class_type"]
        if ct in CORE_NODES:
            out = core(ct, kwargs)
        else:
            cls = pack.NODE_CLASS_MAPPINGS[ct]
            with torch.inference_mode():  # as ComfyUI's executor runs every node
                out = getattr(cls(), cls.FUNCTION)(**kwargs)
            if isinstance(out, dict):
                ui[nid] = out.get("ui")
                out = out.get("result", ())
        results[nid] = out
        return out

    for nid in prompt:
        evaluate(nid)
    return results, ui


def test_tiny_demo_api_workflow_runs_through_the_nodes(pack, fake, monkeypatch, tmp_path):
    monkeypatch.setenv("FOURD_CACHE", str(tmp_path / "cache"))
    prompt = json.loads((WORKFLOWS / "api" / "fourd_tiny_demo_cpu.json").read_text())
    fake.progress.clear()
    results, ui = run_api_prompt(pack, prompt, fake)
    export_id = node_id(prompt, "FourDExport")
    folder = fake.root / "output" / results[export_id][1]
    for name in ("rgb.mp4", "xyz.mp4", "scene.safetensors", "cameras.json", "transforms.json", "depth.npy",
                 "pointclouds/frame_00000.glb", "pointclouds/frame_00048.ply"):
        assert (folder / name).is_file(), name
    prev_id = node_id(prompt, "FourDPreview4D")
    entry = ui[prev_id]["fourd_scene"][0]
    asset = fake.root / "temp" / entry["subfolder"] / entry["filename"]
    from importlib import import_module

    header, pos, col = import_module(pack.__name__ + ".fourd_core.testing.readers").read_viewer_asset(asset.read_bytes())
    assert header["frames"] == 49 and header["space"] == "world" and len(pos[0]) > 0
    steps = [v for v, t, p in fake.progress if p is not None]
    assert steps and all(p[0] == "JPEG" for v, t, p in fake.progress if p is not None)
    assert fake.unloads >= 1  # ComfyUI's models were unloaded before the big load

    # cached between runs: same inputs -> no reload
    cache = import_module(pack.__name__ + ".fourd_core.pipelines.cache").PIPELINES
    loads = cache.loads
    samp_id = node_id(prompt, "FourDSampler")
    model = results[node_id(prompt, "FourDLoad4DNeX")][0]
    image = results[node_id(prompt, "FourDPrepareImage")][0]
    cls = pack.NODE_CLASS_MAPPINGS["FourDSampler"]
    kw = {k: v for k, v in prompt[samp_id]["inputs"].items() if not isinstance(v, list)}
    kw.update(steps=2, frames=5, prompt=results[node_id(prompt, "FourDExampleImage")][1])
    cls().sample(model=model, image=image, **kw)
    assert cache.loads == loads

    # /interrupt honoured between steps
    fake.current_step, fake.interrupt_at = 0, 3
    exc = sys.modules["comfy.model_management"].InterruptProcessingException
    with pytest.raises(exc):
        cls().sample(model=model, image=image, **{**kw, "steps": 6})
    fake.interrupt_at = None


def test_output_paths_never_leave_the_output_folder(pack, fake):
    from importlib import import_module

    cb = import_module(pack.__name__ + ".nodes.comfy_bridge")
    errors = import_module(pack.__name__ + ".fourd_core.errors")
    for bad in ("../escape", "/etc/x", "a/../../b", "C:/x", "..", "fourd/.."):
        with pytest.raises(errors.InputError):
            cb.safe_output_folder(bad)
    folder, rel = cb.safe_output_folder("fourd/ok")
    assert rel.startswith("fourd/ok_") and str(folder).startswith(str(fake.root / "output"))


def test_missing_model_file_names_the_folder(pack, fake):
    from importlib import import_module

    errors = import_module(pack.__name__ + ".fourd_core.errors")
    loader = pack.NODE_CLASS_MAPPINGS["FourDLoadWan"]()
    with pytest.raises(errors.WeightsError, match="diffusion_models"):
        loader.load(base="(none: single files only)", transformer="missing.safetensors", text_encoder="(from base model)",
                    clip_vision="(from base model)", vae="(from base model)", dtype="bfloat16")


def test_sampler_without_release_is_a_clear_error(pack, fake):
    from importlib import import_module

    errors = import_module(pack.__name__ + ".fourd_core.errors")
    model = pack.NODE_CLASS_MAPPINGS["FourDLoadWan"]().load(
        base="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (download)", transformer="(from base model)",
        text_encoder="(from base model)", clip_vision="(from base model)", vae="(from base model)", dtype="bfloat16")[0]
    with pytest.raises(errors.InputError, match="4DNeX"):
        pack.NODE_CLASS_MAPPINGS["FourDSampler"]().sample(model=model, image=torch.rand(1, 96, 144, 3), prompt="x", seed=1,
                                                          steps=1, cfg=5.0, shift=3.0, scheduler="unipc", frames=5)


def test_prepare_image_node_with_depth(pack):
    node = pack.NODE_CLASS_MAPPINGS["FourDPrepareImage"]()
    image = torch.rand(1, 120, 200, 3)
    depth = torch.linspace(0.2, 1.0, 120).view(1, 120, 1, 1).expand(1, 120, 200, 3).contiguous()  # disparity
    img, xyz, vis = node.prepare(image, 144, 96, "crop", "from depth", depth=depth)
    assert img.shape == (1, 96, 144, 3) and xyz.shape == (96, 144, 3) and vis.shape == (1, 96, 144, 3)
    assert xyz[-1, 70, 2] < xyz[0, 70, 2]  # bright (near) bottom rows get the smaller z
    _, plane, _ = node.prepare(image, 144, 96, "crop", "sloped plane")
    assert plane[0, 0].tolist() == pytest.approx([-1.0, -1.0, 1.0])
    with pytest.raises(Exception, match="depth"):
        node.prepare(image, 144, 96, "crop", "from depth")


def test_tiny_grid_api_workflow_runs_through_the_nodes(pack, fake, monkeypatch, tmp_path):
    """image -> 4DNeX scene -> orbit render -> 4D grid, through the node classes (tiny preset)."""
    from importlib import import_module

    monkeypatch.setenv("FOURD_CACHE", str(tmp_path / "cache"))
    prompt = json.loads((WORKFLOWS / "api" / "fourd_tiny_grid_cpu.json").read_text())
    fake.progress.clear()
    results, _ = run_api_prompt(pack, prompt, fake)
    gid = node_id(prompt, "FourDGridSampler")
    rid = node_id(prompt, "FourDRenderViews")
    grid, video, views, frames = results[gid]
    renders, holes = results[rid]
    assert (views, frames) == (3, 9) and renders.shape == (3, 64, 96, 3) and holes.shape == (3, 64, 96)
    assert grid.shape == (views * frames, 64, 96, 3) and float(grid.min()) >= 0 and float(grid.max()) <= 1
    torch.testing.assert_close(video, grid[(views - 1) * frames:])   # view -1, row-major batch
    assert any(p is not None for _, _, p in fake.progress)

    # a fused 4DNeX LoRA cannot be switched off: clear error naming the fix
    errors = import_module(pack.__name__ + ".fourd_core.errors")
    lid = node_id(prompt, "FourDLoad4DNeX")
    fused = results[lid][0].replace(fuse_lora=True)
    kw = {k: v for k, v in prompt[gid]["inputs"].items() if not isinstance(v, list)}
    with pytest.raises(errors.InputError, match="fuse"):
        pack.NODE_CLASS_MAPPINGS["FourDGridSampler"]().sample(model=fused, fixed_view=grid[:5], freeze_time=renders,
                                                              **{**kw, "steps": 1, "prompt": "a scene"})


def test_numbered_outputs_never_overwrite_earlier_ones(pack, fake):
    """Save Scene and 4D Preview write files named <prefix>_NNNNN.*: each run must get a new number."""
    from test_io import _scene

    save = pack.NODE_CLASS_MAPPINGS["FourDSaveScene"]()
    first = save.save(_scene(), "fourd/numbered")["result"][0]
    second = save.save(_scene(), "fourd/numbered")["result"][0]
    assert first != second and (fake.root / "output" / first).is_file() and (fake.root / "output" / second).is_file()
    prev = pack.NODE_CLASS_MAPPINGS["FourDPreview4D"]()
    a = prev.preview(_scene(), 1000, 0.0)["ui"]["fourd_scene"][0]
    b = prev.preview(_scene(), 1000, 0.0)["ui"]["fourd_scene"][0]
    assert a["filename"] != b["filename"] and a["subfolder"] == b["subfolder"] == "fourd_preview"
    for e in (a, b):
        assert (fake.root / "temp" / e["subfolder"] / e["filename"]).is_file()


def test_lora_lists_offer_only_loras(pack, fake):
    """models/loras/ holds the 4DNeX release: its domain embeddings (.pt or .safetensors) are not a LoRA."""
    rel = fake.root / "models" / "loras" / "fourd_release_test"
    rel.mkdir(exist_ok=True)
    for name in ("pytorch_lora_weights.safetensors", "learnable_domain_embeddings.safetensors"):
        (rel / name).write_bytes(b"")
    try:
        for node in ("FourDLoad4DNeX", "FourDApply4DNeXNative"):
            req = pack.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"]
            releases, embs = req["release"][0], req["domain_embeddings"][0]
            assert "pytorch_lora_weights.safetensors" in releases and "fourd_release_test" in releases, node
            assert not [r for r in releases if "domain_embeddings" in r], (node, releases)
            assert {"learnable_domain_embeddings.pt", "fourd_release_test/learnable_domain_embeddings.safetensors"} <= set(embs)
            assert not [e for e in embs if "lora_weights" in e], (node, embs)
    finally:
        shutil.rmtree(rel)


def test_diffusers_nodes_say_they_load_their_own_wan(pack):
    """The diffusers-based nodes live in FourD/diffusers and say they empty ComfyUI's memory manager."""
    diffusers = {"FourDLoadWan", "FourDLoad4DNeX", "FourDMemorySettings", "FourDSampler", "FourDDecode", "FourDGridSampler"}
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        if key in diffusers:
            assert cls.CATEGORY == "FourD/diffusers", key
            assert "own copy of Wan" in cls.DESCRIPTION and "unload_all_models" in cls.DESCRIPTION, key
            assert pack.NODE_DISPLAY_NAME_MAPPINGS[key].endswith("(diffusers)"), key
        else:
            assert "diffusers" not in cls.CATEGORY, key
