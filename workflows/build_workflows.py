"""Writes the example workflows in ComfyUI's UI format and API format from one compact description per graph,
so both stay in sync.

    python workflows/build_workflows.py

* ``example_workflows/<title>.json``: the templates ComfyUI lists for the pack (its server lists a custom node's
  ``example_workflows/*.json``; frontends 1.27.10 and 1.58.1 show the file name as the template's title and,
  with ``-`` and ``_`` read as spaces, as its description, and load ``<title>.jpg`` beside it as the thumbnail:
  ``docs/make_template_thumbnails.py`` makes those). Titles are therefore short sentences without ``-`` or ``_``.
* ``workflows/api/<name>.json``: every graph in API format (``POST /prompt``; what the tests run), including the
  diffusers-path tiny demos, which are not templates.

Node sizes are at least what the frontends compute for the node (:data:`MIN_SIZES`) and :func:`layout` moves
nodes apart so no node (title bar included) overlaps another.

Widget values follow the order of each node's ``INPUT_TYPES`` (required, then optional); an INT
named ``seed`` gets ComfyUI's extra ``control_after_generate`` value. Core nodes used here
(LoadImage, PreviewImage, CreateVideo, SaveVideo, Preview3D, the native loaders/samplers, WanVaceToVideo,
TrimVideoLatent) are described in ``CORE``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WAN_FILES = {
    "transformer": ("wan2.1_i2v_480p_14B_fp16.safetensors", "diffusion_models",
                    "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors"),
    "text_encoder": ("umt5_xxl_fp16.safetensors", "text_encoders",
                     "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/umt5_xxl_fp16.safetensors"),
    "clip_vision": ("clip_vision_h.safetensors", "clip_vision",
                    "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/clip_vision/clip_vision_h.safetensors"),
    "vae": ("wan_2.1_vae.safetensors", "vae",
            "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/wan_2.1_vae.safetensors"),
}
LORA_FILES = {
    "release": ("pytorch_lora_weights.safetensors", "loras",
                "https://huggingface.co/FrozenBurning/4DNex-Lora/resolve/main/pytorch_lora_weights.safetensors"),
    "domain_embeddings": ("learnable_domain_embeddings.pt", "loras",
                          "https://huggingface.co/FrozenBurning/4DNex-Lora/resolve/main/learnable_domain_embeddings.pt"),
}

# Core ComfyUI nodes: (inputs [(name, type, is_widget)], outputs [(name, type)])
CORE = {
    "LoadImage": ([("image", "COMBO", True), ("upload", "IMAGEUPLOAD", True)], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "PreviewImage": ([("images", "IMAGE", False)], []),
    "CreateVideo": ([("images", "IMAGE", False), ("fps", "FLOAT", True)], [("VIDEO", "VIDEO")]),
    "SaveVideo": ([("video", "VIDEO", False), ("filename_prefix", "STRING", True), ("format", "COMBO", True),
                   ("codec", "COMBO", True)], []),
    "Preview3D": ([("model_file", "STRING", True)], []),
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}

#: smallest size of each node type: the larger of frontends 1.58.1 and 1.27.10's ``node.computeSize()`` for a fresh
#: node (measured in headless Chromium on ComfyUI 0.3.64), rounded up; the size a fresh node gets where its DOM
#: widget wants more (previews, multi-line text). A frontend enlarges a loaded node to its computed size, so
#: smaller sizes here would make nodes overlap after loading.
MIN_SIZES = {
    "FourDExampleImage": [360, 80], "FourDExampleScene": [440, 170], "FourDRecoverCameras": [260, 220],
    "FourDExport": [360, 250], "FourDPreview4D": [440, 480], "FourDGaussiansFromScene": [240, 110],
    "FourDSaveGaussians": [300, 100], "FourDFit4DGaussians": [220, 250], "FourDCameraPath": [290, 230],
    "FourDRenderViews": [310, 110], "FourDPrepareImage": [260, 220], "FourDApply4DNeXNative": [230, 110],
    "FourD4DNeXConditioningNative": [280, 190], "FourDDecode6DNative": [220, 200], "FourDTinyVAENative": [280, 90],
    "FourDTinyEncodersNative": [400, 200], "FourDTinyCLIPVisionNative": [320, 30], "FourDGridConditioningNative": [260, 180],
    "FourDGridModelNative": [340, 200], "FourDGridCanvasNative": [290, 170], "FourDGridWindowNative": [230, 170],
    "FourDGridWindowMergeNative": [270, 70], "FourD4DNeXTextEncodeNative": [400, 200], "FourDRenderTrajectory": [400, 470],
    "FourDLoadWan": [270, 180], "FourDLoad4DNeX": [280, 130], "FourDMemorySettings": [270, 160], "FourDSampler": [400, 400],
    "FourDDecode": [320, 100], "FourDGridSampler": [370, 590],
    "LoadImage": [230, 110], "PreviewImage": [300, 260], "CreateVideo": [220, 80], "SaveVideo": [220, 110],
    "Preview3D": [400, 550], "UNETLoader": [270, 90], "CLIPLoader": [270, 110], "CLIPVisionLoader": [270, 60],
    "CLIPVisionEncode": [290, 80], "VAELoader": [270, 60], "ModelSamplingSD3": [270, 60], "VAEDecode": [200, 50],
    "CLIPTextEncode": [400, 200], "KSampler": [270, 270], "WanVaceToVideo": [270, 260], "TrimVideoLatent": [270, 60],
}
#: height of a node's title bar above its ``pos`` (LiteGraph.NODE_TITLE_HEIGHT in both frontends)
TITLE_HEIGHT = 30
GAP = 30


#: width per character of a node's title: the frontends widen a node to fit its title (measured: at most 7.3 px)
TITLE_CHAR_WIDTH = 8


def node_size(n: dict) -> list[int]:
    """A node's size: the one it asks for, at least :data:`MIN_SIZES` and as wide as its title."""
    least = MIN_SIZES.get(n["type"], [320, 120])
    least = [max(least[0], TITLE_CHAR_WIDTH * len(n.get("title", ""))), least[1]]
    want = n.get("size", least)
    return [max(int(a), int(b)) for a, b in zip(want, least)]


def layout(nodes: dict) -> None:
    """Move nodes apart in place so no two overlap (title bars included), keeping the arrangement: nodes are
    columns by their ``x``; each column starts right of the widest node of the one before, and its nodes keep
    their order top to bottom with at least :data:`GAP` between them."""
    for n in nodes.values():
        n["size"] = node_size(n)
    columns: dict[int, list[dict]] = {}
    for n in nodes.values():
        columns.setdefault(int(n["pos"][0]), []).append(n)
    right = None
    for x in sorted(columns):
        col = sorted(columns[x], key=lambda n: n["pos"][1])
        x_new = x if right is None else max(x, right + GAP)
        bottom = None
        for n in col:
            y = n["pos"][1] if bottom is None else max(n["pos"][1], bottom + GAP + TITLE_HEIGHT)
            n["pos"] = [x_new, y]
            bottom = y + n["size"][1]
        right = x_new + max(n["size"][0] for n in col)


def rectangles(ui: dict) -> dict[int, tuple[float, float, float, float]]:
    """``{node id: (x0, y0, x1, y1)}`` of a UI workflow's nodes, title bar included."""
    return {n["id"]: (n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in ui["nodes"]}


def overlaps(ui: dict) -> list[tuple[int, int]]:
    """Pairs of node ids whose rectangles (:func:`rectangles`) overlap."""
    r = sorted(rectangles(ui).items())
    return [(a, b) for i, (a, ra) in enumerate(r) for b, rb in r[i + 1:]
            if ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]]


def load_pack():
    """Import the pack the way ComfyUI does (a package from its __init__.py)."""
    spec = importlib.util.spec_from_file_location("comfyui_fourd_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def node_io(mappings, class_type):
    """``(inputs [(name, type, is_widget)], outputs [(name, type)])`` of a node type."""
    if class_type in CORE:
        return CORE[class_type]
    cls = mappings[class_type]
    it = cls.INPUT_TYPES()
    inputs = []
    for section in ("required", "optional"):
        for name, spec in it.get(section, {}).items():
            t = spec[0]
            typ = "COMBO" if isinstance(t, (list, tuple)) else t
            inputs.append((name, typ, typ == "COMBO" or typ in WIDGET_TYPES))
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    return inputs, list(zip(names, cls.RETURN_TYPES))


def widget_default(mappings, class_type, name):
    """The default a freshly added node shows for widget ``name`` (INPUT_TYPES default / first option)."""
    cls = mappings[class_type]
    for section in cls.INPUT_TYPES().values():
        if name in section:
            spec = section[name]
            if isinstance(spec[0], (list, tuple)):
                return spec[1].get("default", spec[0][0]) if len(spec) > 1 else spec[0][0]
            opts = spec[1] if len(spec) > 1 else {}
            return opts.get("default", {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[spec[0]])
    raise KeyError(name)


def build(graph: dict, mappings: dict) -> tuple[dict, dict]:
    """graph: {"nodes": {id: {"type", "pos", "values": {widget: value}, "links": {input: (src_id, slot)},
    "title"?, "models"?: [...], "size"?}}} -> (ui_workflow, api_prompt)."""
    layout(graph["nodes"])
    ui_nodes, links, api = [], [], {}
    link_id = 0
    incoming = {}  # (dst, input name) -> link id
    out_links: dict[tuple[int, int], list[int]] = {}
    for nid, n in graph["nodes"].items():
        for inp, (src, slot) in n.get("links", {}).items():
            link_id += 1
            incoming[(nid, inp)] = link_id
            out_links.setdefault((src, slot), []).append(link_id)
            src_type = node_io(mappings, graph["nodes"][src]["type"])[1][slot][1]
            links.append([link_id, src, slot, nid, None, src_type, inp])
    for order, (nid, n) in enumerate(graph["nodes"].items()):
        inputs, outputs = node_io(mappings, n["type"])
        ui_inputs, widgets = [], []
        slot_index = 0
        for name, typ, is_widget in inputs:
            linked = (nid, name) in incoming
            if is_widget:
                if name in n.get("values", {}):
                    widgets.append(n["values"][name])
                elif n["type"] in mappings:
                    widgets.append(widget_default(mappings, n["type"], name))
                elif linked:
                    widgets.append("")
                if name == "seed":
                    widgets.append("fixed")
            if not is_widget or linked:
                entry = {"name": name, "type": typ, "link": incoming.get((nid, name))}
                if is_widget:
                    entry["widget"] = {"name": name}
                ui_inputs.append(entry)
                for l in links:
                    if l[0] == incoming.get((nid, name)):
                        l[4] = slot_index
                slot_index += 1
        ui_outputs = [{"name": name, "type": typ, "links": out_links.get((nid, i), []), "slot_index": i}
                      for i, (name, typ) in enumerate(outputs)]
        props = {"Node name for S&R": n["type"]}
        if n.get("models"):
            props["models"] = [{"name": a, "directory": b, "url": c} for a, b, c in n["models"]]
        node = {"id": nid, "type": n["type"], "pos": n["pos"], "size": node_size(n), "flags": {},
                "order": order, "mode": 0, "inputs": ui_inputs, "outputs": ui_outputs, "properties": props,
                "widgets_values": widgets}
        if n.get("title"):
            node["title"] = n["title"]
        ui_nodes.append(node)
        api_inputs = {k: v for k, v in n.get("values", {}).items()}
        for inp, (src, slot) in n.get("links", {}).items():
            api_inputs[inp] = [str(src), slot]
        api[str(nid)] = {"class_type": n["type"], "inputs": api_inputs,
                         "_meta": {"title": n.get("title", mappings[n["type"]].__name__ if n["type"] in mappings else n["type"])}}
    ui = {"last_node_id": max(graph["nodes"]), "last_link_id": link_id, "nodes": ui_nodes,
          "links": [l[:6] for l in links], "groups": [], "config": {},
          "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "info": graph.get("info", "")}, "version": 0.4}
    return ui, api


def image_to_4d(tiny: bool) -> dict:
    """Example photo -> loaders -> prepare -> sample -> decode -> cameras -> export / preview / videos.

    The photo and its prompt come from FourDExampleImage (shipped with the pack), so every demo runs
    on a fresh install; users swap in a core LoadImage for their own photo."""
    h, w, steps = (96, 144, 8) if tiny else (480, 720, 50)
    loader_values = ({"base": "tiny (random weights, no download)", "transformer": "(from base model)",
                      "text_encoder": "(from base model)", "clip_vision": "(from base model)", "vae": "(from base model)",
                      "dtype": "float32"} if tiny else
                     {"base": "(none: single files only)", "transformer": WAN_FILES["transformer"][0],
                      "text_encoder": WAN_FILES["text_encoder"][0], "clip_vision": WAN_FILES["clip_vision"][0],
                      "vae": WAN_FILES["vae"][0], "dtype": "bfloat16"})
    nodes = {
        1: {"type": "FourDExampleImage", "pos": [40, 60], "size": [300, 120], "values": {"example": "example_coffee.jpg"},
            "title": "FourD Example Image (swap for Load Image)"},
        2: {"type": "FourDMemorySettings", "pos": [40, 420], "values": {"device": "cpu" if tiny else "auto",
            "offload": "none" if tiny else "group", "fp8_storage": False, "vae_tiling": False, "attention_backend": "default"}},
        3: {"type": "FourDLoadWan", "pos": [380, 60], "size": [380, 200], "values": loader_values, "links": {"memory": (2, 0)},
            "models": [] if tiny else list(WAN_FILES.values())},
        4: {"type": "FourDLoad4DNeX", "pos": [380, 300], "size": [380, 160],
            "values": {"release": "FrozenBurning/4DNex-Lora (download)" if tiny else LORA_FILES["release"][0],
                       "domain_embeddings": "(beside the LoRA)" if tiny else LORA_FILES["domain_embeddings"][0],
                       "strength": 1.0, "fuse": True},
            "links": {"model": (3, 0)}, "models": [] if tiny else list(LORA_FILES.values())},
        5: {"type": "FourDPrepareImage", "pos": [380, 500], "values": {"width": w, "height": h, "resize": "crop",
            "xyz_init": "sloped plane"}, "links": {"image": (1, 0)}},
        6: {"type": "FourDSampler", "pos": [800, 60], "size": [400, 420],
            "values": {"seed": 42, "steps": steps, "cfg": 5.0, "shift": 3.0, "scheduler": "unipc", "frames": 49},
            "links": {"model": (4, 0), "image": (5, 0), "xyz_init": (5, 1), "prompt": (1, 1)}},
        7: {"type": "FourDDecode", "pos": [1240, 60], "values": {"joint_decode": False}, "links": {"model": (4, 0), "latent": (6, 0)}},
        8: {"type": "FourDRecoverCameras", "pos": [1240, 260], "values": {"intrinsics": "auto", "square_pixels": True,
            "principal_point": "auto", "robust_loss": "auto", "temporal_smoothness": 0.0}, "links": {"scene": (7, 2)}},
        9: {"type": "FourDExport", "pos": [1640, 60], "size": [340, 300],
            "values": {"filename_prefix": "fourd/tiny_demo" if tiny else "fourd/scene", "fps": 24.0, "ply": True,
                       "glb": True, "min_confidence": 0.0, "voxel_size": 0.0, "outlier_neighbors": 0, "max_points": 0},
            "links": {"scene": (8, 0)}},
        10: {"type": "FourDPreview4D", "pos": [1640, 400], "size": [480, 440],
             "values": {"points_per_frame": 40000, "min_confidence": 0.0}, "links": {"scene": (8, 0)}},
        11: {"type": "CreateVideo", "pos": [1240, 520], "values": {"fps": 24.0}, "links": {"images": (7, 0)}},
        12: {"type": "SaveVideo", "pos": [1240, 640], "values": {"filename_prefix": "fourd/rgb", "format": "auto", "codec": "auto"},
             "links": {"video": (11, 0)}},
        13: {"type": "CreateVideo", "pos": [1240, 800], "values": {"fps": 24.0}, "links": {"images": (7, 1)}},
        14: {"type": "SaveVideo", "pos": [1240, 920], "values": {"filename_prefix": "fourd/xyz", "format": "auto", "codec": "auto"},
             "links": {"video": (13, 0)}},
        15: {"type": "PreviewImage", "pos": [800, 540], "links": {"images": (8, 1)}, "title": "Depth"},
        16: {"type": "Preview3D", "pos": [2160, 60], "size": [400, 550], "values": {}, "links": {"model_file": (9, 0)}},
    }
    info = ("Tiny random-weight preset: runs on a CPU in about a minute, outputs are meaningless (exercises the graph)."
            if tiny else "4DNeX image -> 4D scene. Models: Wan2.1-I2V-14B-480P single files (Comfy-Org repackaged) and "
            "the 4DNeX release (FrozenBurning/4DNex-Lora) in models/loras/.")
    return {"nodes": nodes, "info": info}


def image_to_grid(tiny: bool) -> dict:
    """Example photo -> 4DNeX scene (LoRA unfused, shared with the grid) -> cameras -> orbit render -> 4D grid."""
    base = image_to_4d(tiny)["nodes"]
    h, w, frames, steps4d, views, grid_steps = (64, 96, 9, 4, 3, 4) if tiny else (480, 720, 49, 50, 8, 30)
    nodes = {k: base[k] for k in (1, 2, 3, 4, 5, 6, 7, 8)}
    nodes[4] = {**base[4], "values": {**base[4]["values"], "fuse": False},
                "title": "FourD Load 4DNeX LoRA (fuse off: the grid shares the model)"}
    nodes[5] = {**base[5], "values": {**base[5]["values"], "width": w, "height": h}}
    nodes[6] = {**base[6], "values": {**base[6]["values"], "steps": steps4d, "frames": frames}}
    nodes.update({
        9: {"type": "FourDCameraPath", "pos": [1640, 60], "size": [320, 260],
            "values": {"path": "orbit", "degrees": 30.0, "steps": views, "axis": "y", "distance": 0.3, "elevation": 0.0,
                       "frame": 0}, "links": {"scene": (8, 0)}},
        10: {"type": "FourDRenderViews", "pos": [1640, 360], "values": {"frame": 0, "point_size": 2},
             "links": {"scene": (8, 0), "cameras": (9, 0)}},
        11: {"type": "FourDGridSampler", "pos": [2000, 60], "size": [400, 560],
             "values": {"mode": "soft_avg", "window_views": 8, "window_frames": 49,
                        "overlap_views": 2, "overlap_frames": 5, "steps": grid_steps, "cfg": 5.0, "shift": 3.0,
                        "seed": 42, "view": -1, "sync_weights": "(none)", "scheduler": "unipc", "negative_prompt": "",
                        "fused_backend": "auto"},
             "links": {"model": (4, 0), "fixed_view": (7, 0), "freeze_time": (10, 0), "holes": (10, 1),
                       "prompt": (1, 1)}},
        12: {"type": "PreviewImage", "pos": [1640, 560], "links": {"images": (10, 0)}, "title": "Freeze-time input"},
        13: {"type": "CreateVideo", "pos": [2440, 60], "values": {"fps": 24.0}, "links": {"images": (11, 1)}},
        14: {"type": "SaveVideo", "pos": [2440, 200], "values": {"filename_prefix": "fourd/novel_view", "format": "auto",
             "codec": "auto"}, "links": {"video": (13, 0)}},
        15: {"type": "PreviewImage", "pos": [2440, 400], "links": {"images": (11, 0)}, "title": "Grid (row-major)"},
    })
    info = ("Tiny random-weight preset on a CPU: image -> 4DNeX scene -> orbit render -> 3 x 9 grid (meaningless "
            "pictures; exercises the graph)." if tiny else
            "Image -> 4DNeX 4D scene -> frame 0 rendered along a 30 degree orbit -> 4Real-Video grid of 8 views x 49 "
            "frames with the same Wan2.1 model (4DNeX LoRA loaded unfused and switched off for the grid). The grid "
            "output is row-major (index = view * 49 + time); view_video is the last view.")
    return {"nodes": nodes, "info": info}


# ----------------------------------------------------------------------------------------------
# Native path: core loaders / ModelSamplingSD3 / KSampler on ComfyUI's own Wan MODEL.
NATIVE_CORE = {
    "UNETLoader": ([("unet_name", "COMBO", True), ("weight_dtype", "COMBO", True)], [("MODEL", "MODEL")]),
    "CLIPLoader": ([("clip_name", "COMBO", True), ("type", "COMBO", True), ("device", "COMBO", True)], [("CLIP", "CLIP")]),
    "CLIPVisionLoader": ([("clip_name", "COMBO", True)], [("CLIP_VISION", "CLIP_VISION")]),
    "CLIPVisionEncode": ([("clip_vision", "CLIP_VISION", False), ("image", "IMAGE", False), ("crop", "COMBO", True)],
                         [("CLIP_VISION_OUTPUT", "CLIP_VISION_OUTPUT")]),
    "VAELoader": ([("vae_name", "COMBO", True)], [("VAE", "VAE")]),
    "ModelSamplingSD3": ([("model", "MODEL", False), ("shift", "FLOAT", True)], [("MODEL", "MODEL")]),
    "VAEDecode": ([("samples", "LATENT", False), ("vae", "VAE", False)], [("IMAGE", "IMAGE")]),
    "CLIPTextEncode": ([("text", "STRING", True), ("clip", "CLIP", False)], [("CONDITIONING", "CONDITIONING")]),
    "KSampler": ([("model", "MODEL", False), ("seed", "INT", True), ("steps", "INT", True), ("cfg", "FLOAT", True),
                  ("sampler_name", "COMBO", True), ("scheduler", "COMBO", True), ("positive", "CONDITIONING", False),
                  ("negative", "CONDITIONING", False), ("latent_image", "LATENT", False), ("denoise", "FLOAT", True)],
                 [("LATENT", "LATENT")]),
}
CORE.update(NATIVE_CORE)
TINY_NATIVE_MODEL = "fourd_tiny_wan21_i2v_native.safetensors"   # written by the pack (fourd_core.native.tiny_wan)
TINY_NATIVE_RELEASE = "fourd_tiny_4dnex_native"


def native_image_to_4d(tiny: bool) -> dict:
    """Core loaders -> FourD Apply 4DNeX (native) -> ModelSamplingSD3 -> conditioning -> core KSampler ->
    FourD Decode 6D (native) -> cameras -> export / 4D preview / videos."""
    base = image_to_4d(tiny)["nodes"]
    h, w, frames, steps = (96, 144, 13, 8) if tiny else (480, 720, 49, 50)
    nodes = {1: base[1]}                    # FourDExampleImage: the shipped photo and its prompt
    if tiny:
        nodes.update({
            2: {"type": "UNETLoader", "pos": [40, 420], "values": {"unet_name": TINY_NATIVE_MODEL, "weight_dtype": "default"},
                "title": "Load Diffusion Model (tiny native demo weights, written by the pack)"},
            3: {"type": "FourDTinyVAENative", "pos": [40, 560], "values": {"seed": 0}},
        })
        release, emb = TINY_NATIVE_RELEASE, "(beside the LoRA)"
    else:
        nodes.update({
            2: {"type": "UNETLoader", "pos": [40, 420], "values": {"unet_name": WAN_FILES["transformer"][0],
                "weight_dtype": "default"}, "models": [WAN_FILES["transformer"]]},
            3: {"type": "VAELoader", "pos": [40, 560], "values": {"vae_name": WAN_FILES["vae"][0]}, "models": [WAN_FILES["vae"]]},
            4: {"type": "CLIPLoader", "pos": [40, 680], "values": {"clip_name": WAN_FILES["text_encoder"][0], "type": "wan",
                "device": "default"}, "models": [WAN_FILES["text_encoder"]]},
            5: {"type": "CLIPVisionLoader", "pos": [40, 840], "values": {"clip_name": WAN_FILES["clip_vision"][0]},
                "models": [WAN_FILES["clip_vision"]]},
        })
        release, emb = LORA_FILES["release"][0], "(beside the LoRA)"
    nodes.update({
        6: {"type": "FourDApply4DNeXNative", "pos": [380, 60], "size": [360, 160],
            "values": {"release": release, "domain_embeddings": emb, "strength": 1.0}, "links": {"model": (2, 0)},
            "models": [] if tiny else list(LORA_FILES.values())},
        7: {"type": "ModelSamplingSD3", "pos": [380, 260], "values": {"shift": 3.0}, "links": {"model": (6, 0)}},
        8: {"type": "FourDPrepareImage", "pos": [380, 380], "values": {"width": w, "height": h, "resize": "crop",
            "xyz_init": "sloped plane"}, "links": {"image": (1, 0)}},
    })
    prompt_link = {"prompt": (1, 1)}
    if tiny:
        nodes[9] = {"type": "FourDTinyEncodersNative", "pos": [380, 620], "links": {"image": (8, 0), **prompt_link}}
        pos, neg, cvo = (9, 0), (9, 1), (9, 2)
    else:
        nodes[9] = {"type": "CLIPVisionEncode", "pos": [380, 620], "values": {"crop": "center"},
                    "links": {"clip_vision": (5, 0), "image": (8, 0)}}
        nodes[10] = {"type": "FourD4DNeXTextEncodeNative", "pos": [380, 760], "size": [360, 200],
                     "values": {"negative_prompt": ""},
                     "links": {"clip": (4, 0), **prompt_link}}
        pos, neg, cvo = (10, 0), (10, 1), (9, 0)
    nodes.update({
        11: {"type": "FourD4DNeXConditioningNative", "pos": [780, 60], "size": [360, 240],
             "values": {"length": frames, "batch_size": 1},
             "links": {"positive": pos, "negative": neg, "vae": (3, 0), "clip_vision_output": cvo, "image": (8, 0),
                       "xyz_init": (8, 1)}},
        12: {"type": "KSampler", "pos": [780, 340], "size": [320, 300],
             "values": {"seed": 42, "steps": steps, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple",
                        "denoise": 1.0},
             "links": {"model": (7, 0), "positive": (11, 0), "negative": (11, 1), "latent_image": (11, 2)}},
        13: {"type": "FourDDecode6DNative", "pos": [1140, 60], "values": {"tiled": False, "tile_size": 256, "overlap": 64,
             "temporal_size": 64}, "links": {"vae": (3, 0), "samples": (12, 0)}},
    })
    for k in (8, 9, 10, 11, 12, 13, 14, 15, 16):   # cameras -> export / preview / videos, as in the diffusers graph
        n = dict(base[k])
        n["pos"] = [n["pos"][0] + 300, n["pos"][1] + (400 if k >= 11 else 0)]
        n["links"] = {name: ((13, slot) if src == 7 else (src + 10, slot)) for name, (src, slot) in n.get("links", {}).items()}
        nodes[k + 10] = n
    nodes[19]["values"] = {**nodes[19]["values"], "filename_prefix": "fourd/native_tiny_demo" if tiny else "fourd/native"}
    layout = {1: [40, 60], 2: [40, 240], 3: [40, 380], 4: [40, 500], 5: [40, 660], 6: [380, 60], 7: [380, 260],
              8: [380, 370], 9: [380, 660], 10: [380, 800], 11: [780, 60], 12: [780, 360], 13: [1160, 60],
              18: [1160, 300], 25: [1160, 560], 19: [1540, 60], 20: [1540, 420], 26: [2060, 60], 21: [780, 720],
              22: [780, 830], 23: [1160, 830], 24: [1160, 940]}
    sizes = {1: [300, 140], 8: [320, 260], 22: [340, 300], 24: [340, 300]}
    for k, n in nodes.items():
        n["pos"] = layout.get(k, n["pos"])
        if k in sizes:
            n["size"] = sizes[k]
    info = ("Native path, CPU demo: tiny random weights the pack writes in the original Wan layout, loaded by core Load "
            "Diffusion Model and sampled by core KSampler; stand-in text/image encoders and VAE. Meaningless pictures; "
            "exercises the graph." if tiny else
            "Native path: 4DNeX on ComfyUI's own Wan2.1-I2V MODEL (core loaders, memory manager, samplers). Models: "
            "Comfy-Org repackaged Wan2.1 single files; the 4DNeX release (FrozenBurning/4DNex-Lora) in models/loras/ "
            "(apply it with FourD Apply 4DNeX (native), not with the core LoRA loader).")
    return {"nodes": nodes, "info": info}


# --- Gaussian splats -------------------------------------------------------------------------------
def image_to_4d_gaussians(tiny: bool) -> dict:
    """The grid graph, then: pixel-aligned splats of the scene, and 4D Gaussians fitted to the scene frames +
    the grid's views -> PLY sequences, core Preview 3D, the splat 4D preview and an orbit video."""
    nodes = {k: v for k, v in image_to_grid(tiny)["nodes"].items() if k not in (13, 14)}
    iterations, resolution = (30, 0) if tiny else (3000, 256)
    nodes.update({
        16: {"type": "FourDGaussiansFromScene", "pos": [1240, 1080], "values": {"stride": 1, "footprint": 0.4,
             "min_confidence": 0.0}, "links": {"scene": (8, 0)}},
        17: {"type": "FourDSaveGaussians", "pos": [1640, 1080], "values": {"filename_prefix": "fourd/pixel_aligned"},
             "links": {"gaussians": (16, 0)}, "title": "Save pixel-aligned splats"},
        18: {"type": "FourDFit4DGaussians", "pos": [2440, 60], "size": [360, 300],
             "values": {"iterations": iterations, "resolution": resolution, "isotropic": False, "seed": 0,
                        "init_stride": 2, "backend": "auto"},
             "links": {"scene": (8, 0), "grid": (11, 0), "cameras": (9, 0)}},
        19: {"type": "FourDSaveGaussians", "pos": [2840, 60], "values": {"filename_prefix": "fourd/gaussians"},
             "links": {"gaussians": (18, 0)}, "title": "Save fitted 4D Gaussians"},
        20: {"type": "Preview3D", "pos": [3200, 60], "size": [400, 550], "values": {}, "links": {"model_file": (19, 2)},
             "title": "Preview 3D (frame 0 splat centres)"},
        21: {"type": "FourDPreview4D", "pos": [2840, 300], "size": [480, 440],
             "values": {"splats_per_frame": 100000, "min_opacity": 0.0}, "links": {"gaussians": (18, 0)},
             "title": "FourD 4D Preview (fitted splats)"},
        22: {"type": "CreateVideo", "pos": [2440, 420], "values": {"fps": 8.0}, "links": {"images": (18, 1)}},
        23: {"type": "SaveVideo", "pos": [2440, 540], "values": {"filename_prefix": "fourd/gaussians_orbit",
             "format": "auto", "codec": "auto"}, "links": {"video": (22, 0)}},
    })
    info = ("Tiny random-weight preset on a CPU: image -> 4DNeX scene -> 3 x 9 grid -> pixel-aligned splats and a "
            "30-step 4D Gaussian fit (meaningless pictures; exercises the graph)." if tiny else
            "Image -> 4DNeX 4D scene -> 4Real-Video grid (8 views x 49 frames) -> pixel-aligned splats (instant) and "
            "deformable 4D Gaussians fitted to the scene frames + grid views (4Real-Video supp. Sec. 6), saved as "
            "PLY sequences (output/fourd/gaussians_#####/frame_#####.ply), shown in Preview 3D and the 4D preview.")
    return {"nodes": nodes, "info": info}


GRAPHS = {"fourd_image_to_4d": lambda: image_to_4d(False), "fourd_tiny_demo_cpu": lambda: image_to_4d(True),
          "fourd_image_to_grid": lambda: image_to_grid(False), "fourd_tiny_grid_cpu": lambda: image_to_grid(True)}
GRAPHS.update({"fourd_image_to_4d_gaussians": lambda: image_to_4d_gaussians(False),
               "fourd_tiny_gaussians_cpu": lambda: image_to_4d_gaussians(True)})


def native_image_to_grid(tiny: bool) -> dict:
    """The native 4DNeX graph, then cameras -> orbit render -> FourD Grid Conditioning (native) -> FourD Grid Model
    (native) on the *stock* MODEL -> ModelSamplingSD3 -> core KSampler -> core VAE Decode (row-major grid)."""
    nodes = native_image_to_4d(tiny)["nodes"]
    keep = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 18}
    nodes = {k: v for k, v in nodes.items() if k in keep}
    views, grid_steps = (3, 4) if tiny else (8, 30)
    if tiny:
        nodes[30] = {"type": "FourDTinyCLIPVisionNative", "pos": [40, 520]}
        cv = (30, 0)
        pos, neg = (9, 0), (9, 1)
    else:
        nodes[31] = {"type": "CLIPTextEncode", "pos": [1540, 700], "size": [360, 160],
                     "values": {}, "links": {"clip": (4, 0), "text": (1, 1)}, "title": "Grid prompt"}
        nodes[32] = {"type": "CLIPTextEncode", "pos": [1540, 900], "values": {"text": ""}, "links": {"clip": (4, 0)},
                     "title": "Grid negative (empty)"}
        cv = (5, 0)
        pos, neg = (31, 0), (32, 0)
    nodes.update({
        33: {"type": "FourDCameraPath", "pos": [1540, 60], "size": [320, 260],
             "values": {"path": "orbit", "degrees": 30.0, "steps": views, "axis": "y", "distance": 0.3, "elevation": 0.0,
                        "frame": 0}, "links": {"scene": (18, 0)}},
        34: {"type": "FourDRenderViews", "pos": [1540, 360], "values": {"frame": 0, "point_size": 2},
             "links": {"scene": (18, 0), "cameras": (33, 0)}},
        35: {"type": "FourDGridConditioningNative", "pos": [1920, 60], "size": [340, 200], "values": {"paste_known": True},
             "links": {"positive": pos, "negative": neg, "vae": (3, 0), "clip_vision": cv, "fixed_view": (13, 0),
                       "freeze_time": (34, 0), "holes": (34, 1)}},
        36: {"type": "FourDGridModelNative", "pos": [1920, 300], "values": {"mode": "soft_avg"},
             "links": {"model": (2, 0), "views": (35, 3), "column_clip": (35, 4)},
             "title": "FourD Grid Model (native, on the stock MODEL)"},
        37: {"type": "ModelSamplingSD3", "pos": [1920, 440], "values": {"shift": 3.0}, "links": {"model": (36, 0)}},
        38: {"type": "KSampler", "pos": [2300, 60], "size": [320, 300],
             "values": {"seed": 42, "steps": grid_steps, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple",
                        "denoise": 1.0},
             "links": {"model": (37, 0), "positive": (35, 0), "negative": (35, 1), "latent_image": (35, 2)}},
        39: {"type": "VAEDecode", "pos": [2300, 400], "links": {"samples": (38, 0), "vae": (3, 0)}},
        40: {"type": "PreviewImage", "pos": [2660, 60], "size": [400, 400], "links": {"images": (39, 0)},
             "title": "Grid (row-major: view v, time t at v * T + t)"},
        41: {"type": "PreviewImage", "pos": [1540, 560], "links": {"images": (34, 0)}, "title": "Freeze-time input"},
    })
    info = ("Native grid, CPU demo: the native tiny 4DNeX scene, an orbit of 3 views, and the 3 x 13 grid sampled by core "
            "KSampler on the stock tiny MODEL with FourD Grid Model (native). Meaningless pictures." if tiny else
            "Native grid: 4DNeX scene on the native MODEL, frame 0 rendered along a 30 degree orbit, then the 8-view grid "
            "sampled by core KSampler on the same loaded Wan model (stock clone + FourD Grid Model (native)); the known row "
            "and column are pasted at every step (noise_mask). Modes: two-stream sync (trained sync weights from "
            "models/fourd_sync optional) or fused view-time attention. One window: the whole 8 x 49 grid at once (larger "
            "grids: fourd_native_image_to_grid_windows).")
    return {"nodes": nodes, "info": info}


def native_image_to_grid_windows(tiny: bool) -> dict:
    """The native grid graph with sliding windows: FourD Grid Canvas (native) -> two groups of FourD Grid Window
    (native) -> KSampler (seed + k) -> VAE Decode -> FourD Grid Window Merge (native)."""
    nodes = native_image_to_grid(tiny)["nodes"]
    views, window_views, frames, grid_steps = (4, 3, 13, 4) if tiny else (12, 8, 49, 30)
    nodes[33]["values"]["steps"] = views
    nodes[33]["values"]["degrees"] = 45.0
    pos, neg = nodes[35]["links"]["positive"], nodes[35]["links"]["negative"]
    cv = nodes[35]["links"]["clip_vision"]
    for k in (35, 38, 39):
        del nodes[k]
    nodes[36]["links"]["views"] = (50, 2)
    nodes[36]["links"]["column_clip"] = (51, 4)
    nodes[36]["title"] = "FourD Grid Model (native) for window 0"
    nodes[50] = {"type": "FourDGridCanvasNative", "pos": [1920, 60], "size": [340, 200],
                 "values": {"window_views": window_views, "window_frames": frames, "overlap_views": 2, "overlap_frames": 5},
                 "links": {"fixed_view": (13, 0), "freeze_time": (34, 0), "holes": (34, 1)}}
    grid = (50, 0)
    for k in range(2):
        w, ks, dec, mg = 51 + 4 * k, 52 + 4 * k, 53 + 4 * k, 54 + 4 * k
        x = 2300 + 380 * k
        nodes[w] = {"type": "FourDGridWindowNative", "pos": [x, 60], "size": [340, 160], "values": {"window": k},
                    "links": {"grid": grid, "positive": pos, "negative": neg, "vae": (3, 0), "clip_vision": cv},
                    "title": f"FourD Grid Window (native) {k}"}
        model = (37, 0)
        if k:                            # each window's columns have their own CLIP: one grid model per window
            nodes[60] = {"type": "FourDGridModelNative", "pos": [x, 900], "values": {"mode": "soft_avg"},
                         "links": {"model": (2, 0), "views": (50, 2), "column_clip": (w, 4)},
                         "title": f"FourD Grid Model (native) for window {k}"}
            nodes[61] = {"type": "ModelSamplingSD3", "pos": [x, 1040], "values": {"shift": 3.0}, "links": {"model": (60, 0)}}
            model = (61, 0)
        nodes[ks] = {"type": "KSampler", "pos": [x, 260], "size": [320, 300],
                     "values": {"seed": 42 + k, "steps": grid_steps, "cfg": 5.0, "sampler_name": "uni_pc",
                                "scheduler": "simple", "denoise": 1.0},
                     "links": {"model": model, "positive": (w, 0), "negative": (w, 1), "latent_image": (w, 2)},
                     "title": f"KSampler (window {k}: seed 42 + {k})"}
        nodes[dec] = {"type": "VAEDecode", "pos": [x, 600], "links": {"samples": (ks, 0), "vae": (3, 0)}}
        nodes[mg] = {"type": "FourDGridWindowMergeNative", "pos": [x, 700], "links": {"grid": (w, 3), "images": (dec, 0)}}
        grid = (mg, 0)
    nodes[40] = {"type": "PreviewImage", "pos": [3060, 60], "size": [400, 400], "links": {"images": (58, 1)},
                 "title": "Grid (row-major: view v, time t at v * T + t)"}
    info = (f"Native grid with sliding windows, CPU demo: an orbit of {views} views, sampled as 2 windows of {window_views} "
            "views (overlap 2) by core KSampler on the stock tiny MODEL; window 1 is conditioned on the views window 0 "
            "generated. Meaningless pictures." if tiny else
            f"Native grid with sliding windows: {views} views x {frames} frames as 2 windows of {window_views} views "
            "(overlap 2), each sampled by core KSampler (seed 42 + k) on the same loaded Wan model; each window's known "
            "frames (input row and column, frames earlier windows generated) are pasted every step.")
    return {"nodes": nodes, "info": info}


NATIVE_GRAPHS = {"fourd_native_image_to_4d": lambda: native_image_to_4d(False),
                 "fourd_native_tiny_demo_cpu": lambda: native_image_to_4d(True),
                 "fourd_native_image_to_grid": lambda: native_image_to_grid(False),
                 "fourd_native_tiny_grid_cpu": lambda: native_image_to_grid(True),
                 "fourd_native_image_to_grid_windows": lambda: native_image_to_grid_windows(False),
                 "fourd_native_tiny_grid_windows_cpu": lambda: native_image_to_grid_windows(True)}


# --- Novel-view video (4DNeX's last step): trajectory render -> core WanVaceToVideo on a Wan VACE MODEL ---------
VACE_FILES = {
    "14B": ("wan2.1_vace_14B_fp16.safetensors", "diffusion_models",
            "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/diffusion_models/wan2.1_vace_14B_fp16.safetensors"),
    "1.3B": ("wan2.1_vace_1.3B_fp16.safetensors", "diffusion_models",
             "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/diffusion_models/wan2.1_vace_1.3B_fp16.safetensors"),
}
TINY_NATIVE_VACE = "fourd_tiny_wan21_vace_native.safetensors"   # written by the pack (fourd_core.native.tiny_vace)
CORE.update({
    "WanVaceToVideo": ([("positive", "CONDITIONING", False), ("negative", "CONDITIONING", False), ("vae", "VAE", False),
                        ("width", "INT", True), ("height", "INT", True), ("length", "INT", True),
                        ("batch_size", "INT", True), ("strength", "FLOAT", True), ("control_video", "IMAGE", False),
                        ("control_masks", "MASK", False), ("reference_image", "IMAGE", False)],
                       [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT"),
                        ("trim_latent", "INT")]),
    "TrimVideoLatent": ([("samples", "LATENT", False), ("trim_amount", "INT", True)], [("LATENT", "LATENT")]),
})


def native_novel_view(tiny: bool) -> dict:
    """The native 4DNeX graph, then FourD Render Trajectory (the scene along a 30 degree orbit) -> core
    WanVaceToVideo (control video + hole mask + the photo as reference) -> core KSampler on a Wan VACE MODEL ->
    TrimVideoLatent (drops the reference frame) -> VAE Decode -> SaveVideo."""
    nodes = native_image_to_4d(tiny)["nodes"]
    keep = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 18}
    nodes = {k: v for k, v in nodes.items() if k in keep}
    w, h, frames, steps = (160, 96, 13, 4) if tiny else (832, 480, 49, 30)
    nodes[40] = {"type": "FourDRenderTrajectory", "pos": [1540, 60], "size": [340, 420],
                 "values": {"path": "orbit", "degrees": 30.0, "axis": "y", "distance": 0.3, "elevation": 0.0,
                            "follow_scene": False, "frames": frames, "width": w, "height": h, "fit": "cover",
                            "point_size": 2, "filename_prefix": "fourd/novel_view_tiny" if tiny else "fourd/novel_view",
                            "min_confidence": 0.0},
                 "links": {"scene": (18, 0)}}
    if tiny:
        nodes[41] = {"type": "UNETLoader", "pos": [1540, 520], "values": {"unet_name": TINY_NATIVE_VACE,
                     "weight_dtype": "default"}, "title": "Load Diffusion Model (tiny VACE demo weights, written by the pack)"}
        pos, neg = (9, 0), (9, 1)
    else:
        nodes[41] = {"type": "UNETLoader", "pos": [1540, 520], "values": {"unet_name": VACE_FILES["14B"][0],
                     "weight_dtype": "default"}, "models": [VACE_FILES["14B"]],
                     "title": "Load Diffusion Model (Wan2.1 VACE 14B; 1.3B works too)"}
        nodes[43] = {"type": "CLIPTextEncode", "pos": [1540, 780], "size": [360, 160], "values": {},
                     "links": {"clip": (4, 0), "text": (1, 1)}, "title": "VACE prompt (the scene's prompt)"}
        nodes[44] = {"type": "CLIPTextEncode", "pos": [1540, 980], "values": {"text": ""}, "links": {"clip": (4, 0)},
                     "title": "VACE negative (empty)"}
        pos, neg = (43, 0), (44, 0)
    nodes.update({
        42: {"type": "ModelSamplingSD3", "pos": [1540, 660], "values": {"shift": 3.0}, "links": {"model": (41, 0)}},
        45: {"type": "WanVaceToVideo", "pos": [1920, 60], "size": [340, 300],
             "values": {"width": w, "height": h, "length": frames, "batch_size": 1, "strength": 1.0},
             "links": {"positive": pos, "negative": neg, "vae": (3, 0), "width": (40, 4), "height": (40, 5),
                       "length": (40, 6), "control_video": (40, 0), "control_masks": (40, 1), "reference_image": (8, 0)}},
        46: {"type": "KSampler", "pos": [2300, 60], "size": [320, 300],
             "values": {"seed": 42, "steps": steps, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple",
                        "denoise": 1.0},
             "links": {"model": (42, 0), "positive": (45, 0), "negative": (45, 1), "latent_image": (45, 2)}},
        47: {"type": "TrimVideoLatent", "pos": [2300, 400], "values": {"trim_amount": 1},
             "links": {"samples": (46, 0), "trim_amount": (45, 3)}, "title": "TrimVideoLatent (drop the reference frame)"},
        48: {"type": "VAEDecode", "pos": [2300, 520], "links": {"samples": (47, 0), "vae": (3, 0)}},
        49: {"type": "CreateVideo", "pos": [2660, 60], "values": {"fps": 16.0}, "links": {"images": (48, 0)}},
        50: {"type": "SaveVideo", "pos": [2660, 180], "values": {"filename_prefix": "fourd/novel_view_tiny" if tiny else
             "fourd/novel_view", "format": "auto", "codec": "auto"}, "links": {"video": (49, 0)}},
        51: {"type": "PreviewImage", "pos": [1920, 420], "size": [360, 300], "links": {"images": (40, 0)},
             "title": "Trajectory render (control video, holes gray)"},
    })
    info = ("Native novel view, CPU demo: the native tiny 4DNeX scene rendered along a 30 degree orbit (13 frames, "
            "160x96), refined by core WanVaceToVideo + KSampler on the tiny random VACE model the pack writes (original "
            "Wan VACE layout). Meaningless pictures; exercises the graph." if tiny else
            "Novel-view video as 4DNeX makes it: 4DNeX scene on the native MODEL -> the moving point cloud rendered "
            "along a 30 degree orbit (49 frames, 832x480, holes gray + mask) -> core WanVaceToVideo (control video, "
            "mask: 1 = generate, the photo as reference) -> core KSampler on Wan2.1 VACE (models/diffusion_models: "
            "wan2.1_vace_14B_fp16 or wan2.1_vace_1.3B_fp16) -> TrimVideoLatent -> VAE Decode -> SaveVideo. The path's "
            "cameras are saved beside the video (output/fourd/novel_view_NNNNN_.mp4) as "
            "output/fourd/novel_view_cameras_NNNNN/cameras.json and transforms.json.")
    return {"nodes": nodes, "info": info}


NATIVE_GRAPHS.update({"fourd_native_novel_view": lambda: native_novel_view(False),
                      "fourd_native_tiny_novel_view_cpu": lambda: native_novel_view(True)})


def native_image_to_4d_gaussians(tiny: bool) -> dict:
    """The native grid graph, then: pixel-aligned splats of the scene, and 4D Gaussians fitted to the scene frames +
    the grid's views (VAE Decode's row-major grid, the camera path's cameras) -> PLY sequences, core Preview 3D of
    the fitted splats' centres, the 4D preview of the splats and an orbit video."""
    nodes = native_image_to_grid(tiny)["nodes"]
    iterations, resolution = (30, 0) if tiny else (3000, 256)
    nodes.update({
        70: {"type": "FourDGaussiansFromScene", "pos": [1160, 1200], "values": {"stride": 1, "footprint": 0.4,
             "min_confidence": 0.0}, "links": {"scene": (18, 0)}},
        71: {"type": "FourDSaveGaussians", "pos": [1540, 1200], "values": {"filename_prefix": "fourd/native_pixel_aligned"},
             "links": {"gaussians": (70, 0)}, "title": "Save pixel-aligned splats"},
        72: {"type": "FourDFit4DGaussians", "pos": [3100, 60],
             "values": {"iterations": iterations, "resolution": resolution, "isotropic": False, "seed": 0,
                        "init_stride": 2, "backend": "auto"},
             "links": {"scene": (18, 0), "grid": (39, 0), "cameras": (33, 0)}},
        73: {"type": "FourDSaveGaussians", "pos": [3500, 60], "values": {"filename_prefix": "fourd/native_gaussians"},
             "links": {"gaussians": (72, 0)}, "title": "Save fitted 4D Gaussians"},
        74: {"type": "Preview3D", "pos": [3900, 60], "values": {}, "links": {"model_file": (73, 2)},
             "title": "Preview 3D (frame 0 splat centres)"},
        75: {"type": "FourDPreview4D", "pos": [3500, 280], "values": {"splats_per_frame": 100000, "min_opacity": 0.0},
             "links": {"gaussians": (72, 0)}, "title": "FourD 4D Preview (fitted splats)"},
        76: {"type": "CreateVideo", "pos": [3100, 420], "values": {"fps": 8.0}, "links": {"images": (72, 1)}},
        77: {"type": "SaveVideo", "pos": [3100, 540], "values": {"filename_prefix": "fourd/native_gaussians_orbit",
             "format": "auto", "codec": "auto"}, "links": {"video": (76, 0)}},
    })
    info = ("Native Gaussians, CPU demo: the native tiny grid graph, then pixel-aligned splats and a 30-step 4D Gaussian "
            "fit to the scene frames and the grid's views (random weights: meaningless pictures; exercises the graph)."
            if tiny else
            "Native 4D Gaussians: 4DNeX scene on the native MODEL -> 8-view grid by core KSampler -> pixel-aligned splats "
            "(instant) and deformable 4D Gaussians fitted to the scene frames + grid views (4Real-Video supp. Sec. 6), "
            "saved as PLY sequences, shown in Preview 3D (splat centres) and the 4D preview (true splats).")
    return {"nodes": nodes, "info": info}


def example_scene() -> dict:
    """FourD Example Scene (no weights) -> cameras -> export -> Preview 3D; pixel-aligned splats -> PLY sequence; the 4D
    preview of the scene's points and splats; depth and point-map previews."""
    nodes = {
        1: {"type": "FourDExampleScene", "pos": [40, 60], "values": {"frames": 12, "width": 384, "dolly": 0.06, "rise": 0.5}},
        2: {"type": "FourDRecoverCameras", "pos": [40, 300], "values": {"intrinsics": "auto", "square_pixels": True,
            "principal_point": "auto", "robust_loss": "auto", "temporal_smoothness": 0.0}, "links": {"scene": (1, 0)}},
        3: {"type": "PreviewImage", "pos": [40, 580], "links": {"images": (1, 2)}, "title": "Point map (the scene's input)"},
        4: {"type": "PreviewImage", "pos": [40, 900], "links": {"images": (2, 1)}, "title": "Recovered depth"},
        5: {"type": "FourDExport", "pos": [520, 60],
            "values": {"filename_prefix": "fourd/example_scene", "fps": 8.0, "ply": True, "glb": True,
                       "min_confidence": 0.0, "voxel_size": 0.0, "outlier_neighbors": 0, "max_points": 0},
            "links": {"scene": (2, 0)}},
        6: {"type": "FourDGaussiansFromScene", "pos": [520, 380], "values": {"stride": 1, "footprint": 0.4,
            "min_confidence": 0.0}, "links": {"scene": (2, 0)}},
        7: {"type": "FourDSaveGaussians", "pos": [520, 560], "values": {"filename_prefix": "fourd/example_splats"},
            "links": {"gaussians": (6, 0)}},
        8: {"type": "Preview3D", "pos": [920, 60], "values": {}, "links": {"model_file": (5, 0)},
            "title": "Preview 3D (frame 0 point cloud)"},
        9: {"type": "FourDPreview4D", "pos": [1360, 60], "size": [560, 560],
            "values": {"points_per_frame": 40000, "min_confidence": 0.0, "splats_per_frame": 100000, "min_opacity": 0.0},
            "links": {"scene": (2, 0), "gaussians": (6, 0)}, "title": "FourD 4D Preview (points and splats)"},
    }
    info = ("No weights, no download, about a minute on a CPU: a 4D scene made from the shipped photo (FourD Example "
            "Scene: the table recedes, the cup rises, the camera dollies in) -> FourD Recover Cameras -> export (videos, "
            "PLY/GLB point clouds, cameras, depth) -> Preview 3D; pixel-aligned Gaussian splats -> PLY sequence; the 4D "
            "preview shows points and splats over time.")
    return {"nodes": nodes, "info": info}


NATIVE_GRAPHS.update({"fourd_native_image_to_4d_gaussians": lambda: native_image_to_4d_gaussians(False),
                      "fourd_native_tiny_gaussians_cpu": lambda: native_image_to_4d_gaussians(True),
                      "fourd_example_scene": example_scene})

#: the graphs ComfyUI lists as the pack's templates: name -> title (the file name in example_workflows/; the
#: frontends show it as the title and, with - and _ as spaces, as the description). The diffusers-path tiny demos
#: (fourd_tiny_*) are API files only: every demo uses the native path.
TEMPLATES = {
    "fourd_example_scene": "FourD example scene, no weights (CPU, a minute)",
    "fourd_native_tiny_demo_cpu": "FourD tiny demo, image to 4D (native, CPU, random weights)",
    "fourd_native_tiny_grid_cpu": "FourD tiny demo, 4D grid (native, CPU, random weights)",
    "fourd_native_tiny_grid_windows_cpu": "FourD tiny demo, grid windows (native, CPU, random weights)",
    "fourd_native_tiny_novel_view_cpu": "FourD tiny demo, novel view (native, CPU, random weights)",
    "fourd_native_tiny_gaussians_cpu": "FourD tiny demo, 4D Gaussians (native, CPU, random weights)",
    "fourd_native_image_to_4d": "FourD image to 4D scene (native Wan2.1 and 4DNeX)",
    "fourd_native_image_to_grid": "FourD image to 4D grid (native, 4Real Video)",
    "fourd_native_image_to_grid_windows": "FourD image to a large 4D grid in windows (native)",
    "fourd_native_novel_view": "FourD novel view video with Wan VACE (native)",
    "fourd_native_image_to_4d_gaussians": "FourD image to 4D Gaussians (native)",
    "fourd_image_to_4d": "FourD image to 4D scene (diffusers, loads its own Wan)",
    "fourd_image_to_grid": "FourD image to 4D grid (diffusers, loads its own Wan)",
    "fourd_image_to_4d_gaussians": "FourD image to 4D Gaussians (diffusers, loads its own Wan)",
}
TEMPLATE_DIR = ROOT / "example_workflows"


def main() -> None:
    pack = load_pack()
    (HERE / "api").mkdir(exist_ok=True)
    TEMPLATE_DIR.mkdir(exist_ok=True)
    for name, make in {**GRAPHS, **NATIVE_GRAPHS}.items():
        graph = make()
        ui, api = build(graph, pack.NODE_CLASS_MAPPINGS)
        assert not overlaps(ui), (name, overlaps(ui))
        (HERE / "api" / f"{name}.json").write_text(json.dumps(api, indent=1) + "\n")
        if name in TEMPLATES:
            ui["extra"]["fourd"] = {"name": name, "title": TEMPLATES[name], "api": f"workflows/api/{name}.json"}
            (TEMPLATE_DIR / f"{TEMPLATES[name]}.json").write_text(json.dumps(ui, indent=1) + "\n")
        print("wrote", name)


if __name__ == "__main__":
    main()
