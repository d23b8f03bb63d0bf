"""The novel-view graph on a real ComfyUI: FourD Render Trajectory's outputs against core
``WanVaceToVideo``'s code (comfy_extras/nodes_wan.py), the tiny VACE weights against core's detection,
and the tiny native novel-view workflow run end to end by ComfyUI's own executor (validation,
caching, core KSampler, TrimVideoLatent, VAE Decode, SaveVideo).

``COMFYUI_PATH=/path/to/ComfyUI python -m pytest -q tests/comfyui/test_native_novel_view.py``
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_fixtures import ROOT, comfy, pack  # noqa: F401  (fixtures)

sys.path.insert(0, str(ROOT / "tests" / "geometry"))
from trajectory_truth import F, make_scene  # noqa: E402

W, H = 48, 32


@pytest.fixture(scope="module")
def tiny_vace(tmp_path_factory):
    from fourd_core.native.tiny_vace import TINY_VACE_MODEL_NAME, save_native_tiny_vace

    return save_native_tiny_vace(tmp_path_factory.mktemp("tiny_vace")) / "diffusion_models" / TINY_VACE_MODEL_NAME


def test_tiny_vace_weights_are_detected_and_loaded_as_wan_vace(comfy, tiny_vace):
    from safetensors.torch import load_file

    from fourd_core.native.tiny_vace import TINY_VACE

    model = comfy.sd.load_diffusion_model(str(tiny_vace))
    import comfy.ldm.wan.model as wan
    import comfy.model_base as mb

    assert type(model.model) is mb.WAN21_Vace
    net = model.model.diffusion_model
    assert isinstance(net, wan.VaceWanModel)
    assert net.vace_layers == TINY_VACE["vace_layers"] and net.vace_in_dim == TINY_VACE["vace_in_dim"]
    assert net.dim == TINY_VACE["dim"] and len(net.blocks) == TINY_VACE["num_layers"]
    # every tensor of the file is used and nothing is left uninitialised (ComfyUI loads with strict=False)
    sd = load_file(str(tiny_vace))
    got = net.state_dict()
    assert set(sd) == set(got)
    for k, v in sd.items():
        torch.testing.assert_close(got[k].float(), v, msg=k)


class SpyVAE:
    """Records what WanVaceToVideo asks the VAE to encode; returns latents of the right shape."""

    def __init__(self):
        self.calls = []

    def encode(self, pixels):
        self.calls.append(pixels.clone())
        f = pixels.shape[0]
        return torch.zeros(1, 16, (f - 1) // 4 + 1, pixels.shape[1] // 8, pixels.shape[2] // 8)


def test_render_outputs_are_what_core_wanvacetovideo_expects(comfy, pack):
    import comfy_extras.nodes_wan as nodes_wan

    scene = make_scene()
    node = pack.NODE_CLASS_MAPPINGS["FourDRenderTrajectory"]()
    video, holes, cams, text, width, height, length = node.render(
        scene, "orbit", 25.0, "y", 0.3, 0.0, False, F, W, H, "cover", 2, "")
    # ComfyUI conventions: IMAGE [B, H, W, 3] in [0, 1], MASK [B, H, W] in {0, 1}
    assert video.shape == (F, H, W, 3) and video.dtype == torch.float32
    assert float(video.min()) >= 0 and float(video.max()) <= 1
    assert holes.shape == (F, H, W) and set(torch.unique(holes).tolist()) <= {0.0, 1.0}
    assert 0 < float(holes.mean()) < 0.9 and (width, height, length) == (W, H, F)
    assert json.loads(text)["frames"][0]["K"] == cams.K[0].tolist()
    photo = scene.rgb[:1]
    pos = [[torch.zeros(1, 4, 4096), {}]]
    vae = SpyVAE()
    out = nodes_wan.WanVaceToVideo.execute(pos, pos, vae, width, height, length, 1, 1.0, control_video=video,
                                           control_masks=holes, reference_image=photo)
    positive, negative, latent, trim = out.args if hasattr(out, "args") else out
    ref_in, inactive_in, reactive_in = vae.calls
    # core keeps our size (no resampling of video or mask), and which pixels it keeps / generates:
    # inactive = (video - 0.5) * (1 - mask) + 0.5 -> the rendered pixels, gray where the mask is 1;
    # reactive = (video - 0.5) * mask + 0.5 -> gray everywhere, since our holes already are mid-gray
    keep = (holes < 0.5)[..., None]
    torch.testing.assert_close(inactive_in, torch.where(keep, video, torch.full_like(video, 0.5)))
    torch.testing.assert_close(reactive_in, torch.full_like(video, 0.5))
    torch.testing.assert_close(inactive_in, video)  # the render is the control video as it is
    assert ref_in.shape == (1, H, W, 3)
    # the mask VACE sees: [1, 64, 1 + latent frames, H/8, W/8], one channel per pixel of an 8x8 block,
    # 1 = generate, the reference frame kept (0); frame l of the latent uses pixel frame nearest-exact(l)
    cond = positive[0][1]
    mask = cond["vace_mask"][0]
    lat_frames = (F - 1) // 4 + 1
    assert mask.shape == (1, 64, 1 + lat_frames, H // 8, W // 8)
    assert float(mask[:, :, 0].abs().max()) == 0.0
    blocks = holes.reshape(F, H // 8, 8, W // 8, 8).permute(2, 4, 0, 1, 3).reshape(64, F, H // 8, W // 8)
    src = torch.nn.functional.interpolate(blocks[None], size=(lat_frames, H // 8, W // 8), mode="nearest-exact")[0]
    torch.testing.assert_close(mask[0, :, 1:], src)
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    assert cond["vace_frames"][0].shape == (1, 32, 1 + lat_frames, H // 8, W // 8)
    assert latent["samples"].shape == (1, 16, 1 + lat_frames, H // 8, W // 8) and trim == 1


class _Server:
    """What ComfyUI's PromptExecutor calls on its server (messages are dropped)."""

    client_id = None
    last_node_id = None

    def send_sync(self, *args, **kwargs):
        pass

    def queue_updated(self):
        pass


def test_tiny_native_novel_view_workflow_runs_end_to_end(comfy, pack, tmp_path, monkeypatch):
    import folder_paths
    import nodes as comfy_nodes

    if not hasattr(comfy_nodes, "init_extra_nodes"):
        pytest.skip("`nodes` is not ComfyUI's nodes.py (run tests/comfyui on their own)")
    import execution

    asyncio.run(comfy_nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    monkeypatch.setattr(comfy_nodes, "NODE_CLASS_MAPPINGS", {**comfy_nodes.NODE_CLASS_MAPPINGS, **pack.NODE_CLASS_MAPPINGS})
    old_out = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        prompt = json.loads((ROOT / "workflows" / "api" / "fourd_native_tiny_novel_view_cpu.json").read_text())
        valid = asyncio.run(execution.validate_prompt("nv-test", prompt, None))
        assert valid[0], valid[1:]
        kw = {}
        if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:  # ComfyUI >= 0.4: as main.py passes it
            a = comfy.cli_args.args
            kw["cache_args"] = {"lru": a.cache_lru, "ram": a.cache_ram}
        ex = execution.PromptExecutor(_Server(), **kw)
        ex.execute(prompt, "nv-test", {}, valid[2])
        errors = [m[1] for m in ex.status_messages if m[0] == "execution_error"]
        assert ex.success and not errors, errors[:1]
    finally:
        folder_paths.set_output_directory(old_out)
    import av  # ComfyUI's own video library (SaveVideo writes with it)

    render = prompt[next(k for k, v in prompt.items() if v["class_type"] == "FourDRenderTrajectory")]["inputs"]
    videos = sorted(Path(tmp_path, "fourd").glob("novel_view_tiny_*_.mp4"))
    assert [p.name for p in videos] == ["novel_view_tiny_00001_.mp4"]  # SaveVideo's first number
    with av.open(str(videos[0])) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert frames.shape == (render["frames"], render["height"], render["width"], 3)  # reference frame trimmed
    cams_dir = Path(tmp_path, "fourd", "novel_view_tiny_cameras_00001")  # the video's number, beside it
    cams = json.loads((cams_dir / "cameras.json").read_text())
    assert len(cams["frames"]) == render["frames"] and (cams["width"], cams["height"]) == (render["width"], render["height"])
    assert (cams_dir / "transforms.json").is_file()


def test_real_novel_view_workflow_validates_in_comfyui(comfy, pack, tmp_path, monkeypatch):
    """The full-size graph passes ComfyUI's own prompt validation (node types, link types, INT outputs into
    WanVaceToVideo's size widgets, widget ranges and model-file combos, with empty stand-ins for the files)."""
    import folder_paths
    import nodes as comfy_nodes

    if not hasattr(comfy_nodes, "init_extra_nodes"):
        pytest.skip("`nodes` is not ComfyUI's nodes.py (run tests/comfyui on their own)")
    import execution

    asyncio.run(comfy_nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    monkeypatch.setattr(comfy_nodes, "NODE_CLASS_MAPPINGS", {**comfy_nodes.NODE_CLASS_MAPPINGS, **pack.NODE_CLASS_MAPPINGS})
    prompt = json.loads((ROOT / "workflows" / "api" / "fourd_native_novel_view.json").read_text())
    for node in prompt.values():  # an empty file for every model the graph names, in its core folder
        kind = {"UNETLoader": "diffusion_models", "VAELoader": "vae", "CLIPLoader": "text_encoders",
                "CLIPVisionLoader": "clip_vision"}.get(node["class_type"])
        names = [(kind, node["inputs"].get({"UNETLoader": "unet_name", "VAELoader": "vae_name"}.get(node["class_type"],
                                                                                               "clip_name")))]
        if node["class_type"] == "FourDApply4DNeXNative":
            kind, names = "loras", [("loras", node["inputs"]["release"]), ("loras", "learnable_domain_embeddings.pt")]
        if kind is None:
            continue
        for k, name in names:
            (tmp_path / k).mkdir(exist_ok=True)
            (tmp_path / k / name).write_bytes(b"")
            folder_paths.add_model_folder_path(k, str(tmp_path / k))
    getattr(folder_paths, "filename_list_cache", {}).clear()
    valid = asyncio.run(execution.validate_prompt("nv-validate", prompt, None))
    assert valid[0], valid[1:]
    assert {prompt[k]["class_type"] for k in valid[2]} >= {"SaveVideo"}
