"""The native path without ComfyUI: key conversion, tensor layouts, tiny original-layout weights, and
the native nodes driven with fakes of the few core APIs they use (``comfy.lora.load_lora``,
``comfy.patcher_extension``, a ModelPatcher with clone/add_patches/wrappers/patch replaces, a
WanModel exposing ``patch_size``/``rope_encode``/``forward_orig``). The same code against a real
ComfyUI is tested in ``tests/comfyui/``."""

from __future__ import annotations

import copy
import sys
import types
from importlib import import_module
from pathlib import Path

import pytest
import torch

from fourd_core.errors import InputError, WeightsError
from fourd_core.native import layout
from fourd_core.native.lora_keys import check_lora_shapes, lora_targets, lora_to_comfy
from fourd_core.native.tiny import NATIVE_TINY, TINY_MODEL_NAME, TINY_RELEASE_NAME, TinyWanVAE, original_wan_shapes
from test_nodes import fake, pack  # noqa: F401  (fixtures)

D = NATIVE_TINY["dim"]


# ----------------------------------------------------------------------------------------------
# LoRA keys
def test_lora_keys_follow_the_wan_module_names():
    sd = {f"transformer.blocks.3.{a}.lora_{ab}.weight": torch.zeros(1)
          for a in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                    "attn2.to_v", "attn2.to_out.0", "attn2.add_k_proj", "attn2.add_v_proj") for ab in "AB"}
    out = lora_to_comfy(sd)
    expected = {f"diffusion_model.blocks.3.{m}.lora_{ab}.weight" for m in (
        "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k", "cross_attn.v",
        "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img") for ab in "AB"}
    assert set(out) == expected
    assert lora_targets(out)["diffusion_model.blocks.3.cross_attn.k_img"] == "diffusion_model.blocks.3.cross_attn.k_img.weight"
    with pytest.raises(WeightsError, match="attn1.to_q"):
        lora_to_comfy({"transformer.blocks.0.ffn.net.0.proj.lora_A.weight": torch.zeros(1)})


def test_lora_shape_checks_name_the_problem():
    good = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 8),
            "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(6, 4)}
    assert check_lora_shapes(good, {"diffusion_model.blocks.0.self_attn.q.weight": (6, 8)}) == 4
    with pytest.raises(WeightsError, match="another base model"):
        check_lora_shapes(good, {"diffusion_model.blocks.0.self_attn.q.weight": (6, 9)})
    with pytest.raises(WeightsError, match="does not have"):
        check_lora_shapes(good, {})
    with pytest.raises(WeightsError, match="only one"):
        check_lora_shapes({k: v for k, v in good.items() if "lora_A" in k}, {"diffusion_model.blocks.0.self_attn.q.weight": (6, 8)})


# ----------------------------------------------------------------------------------------------
# Layouts
def test_native_mask_is_comfy_convention_of_the_4dnex_mask():
    m = layout.native_concat_mask(3, 2, 8)
    assert m.shape == (1, 1, 3, 2, 8)
    assert torch.all(m[0, 0, 0, :, :4] == 0) and torch.all(m[0, 0, 0, :, 4:] == 0.5) and torch.all(m[0, 0, 1:] == 1)
    # what WAN21.concat_cond feeds the model: 1 - mask, repeated to 4 channels = the diffusers mask
    from fourd_core.pipelines.conditioning import condition_mask

    torch.testing.assert_close((1 - m).repeat(1, 4, 1, 1, 1), condition_mask(1, 9, 2, 8))


def test_condition_frames_put_rgb_left_xyz_right_then_gray():
    rgb = torch.rand(16, 16, 3)
    xyz = torch.rand(16, 16, 3) * 2 - 1
    v = layout.condition_frames(rgb, xyz, 5)
    assert v.shape == (5, 16, 32, 3)
    torch.testing.assert_close(v[0, :, :16], rgb)
    torch.testing.assert_close(v[0, :, 16:], xyz / 2 + 0.5)
    assert torch.all(v[1:] == 0.5)
    with pytest.raises(InputError):
        layout.condition_frames(rgb, xyz[:8], 5)


def test_xyz_denormalisation_in_raw_latent_space():
    mean = torch.tensor(layout.WAN21_LATENTS_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(layout.WAN21_LATENTS_STD).view(1, -1, 1, 1, 1)
    assert mean[0, 0, 0, 0, 0] == pytest.approx(-0.7571) and std[0, 15, 0, 0, 0] == pytest.approx(1.916)
    z = torch.randn(1, 16, 2, 3, 4)                      # the model's space
    raw = z * std + mean                                 # what a ComfyUI sampler returns
    expected = (1.70 * z - 0.13) * std + mean            # 4DNeX: z_v = 1.70 z - 0.13, then the VAE's own stats
    torch.testing.assert_close(layout.denormalize_xyz_raw(raw), expected, rtol=1e-5, atol=1e-5)


def test_tiny_native_weights_fit_comfyui_detection_rules(tmp_path):
    from safetensors.torch import load_file

    from fourd_core.native.tiny import save_native_tiny

    save_native_tiny(tmp_path)
    sd = load_file(str(tmp_path / "diffusion_models" / TINY_MODEL_NAME))
    assert set(sd) == set(original_wan_shapes(D, NATIVE_TINY["ffn_dim"], NATIVE_TINY["num_layers"]))
    dim = sd["head.modulation"].shape[-1]
    assert dim % 128 == 0 and dim // 128 == 2                          # num_heads = dim / 128
    assert sd["patch_embedding.weight"].shape[1] == 36 and sd["head.head.weight"].shape[0] == 64
    assert sd["text_embedding.0.weight"].shape == (dim, 4096) and sd["img_emb.proj.1.weight"].shape == (1280, 1280)
    assert "img_emb.proj.0.bias" in sd and not any(k.startswith("model.") for k in sd)
    rel = tmp_path / "loras" / TINY_RELEASE_NAME
    assert (rel / "pytorch_lora_weights.safetensors").is_file() and (rel / "learnable_domain_embeddings.pt").is_file()


# ----------------------------------------------------------------------------------------------
# Fakes of the core APIs the native nodes use
class FakeWan(torch.nn.Module):
    """The attributes of ComfyUI's WanModel the native nodes touch (weights on the meta device)."""

    def __init__(self, in_dim=36, img_emb=True):
        super().__init__()
        self.dim, self.patch_size = D, (1, 2, 2)
        self.patch_embedding = torch.nn.Conv3d(in_dim, D, (1, 2, 2), stride=(1, 2, 2), device="meta")
        self.blocks = torch.nn.ModuleList()
        for _ in range(NATIVE_TINY["num_layers"]):
            b = torch.nn.Module()
            for attn in ("self_attn", "cross_attn"):
                m = torch.nn.Module()
                for p in ("q", "k", "v", "o"):
                    setattr(m, p, torch.nn.Linear(D, D, device="meta"))
                setattr(b, attn, m)
            self.blocks.append(b)
        self.img_emb = torch.nn.Linear(1280, D, device="meta") if img_emb else None
        self.calls = []

    def rope_encode(self, t, h, w, device=None, dtype=None):   # positions as the "table"
        ids = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h // 2), torch.arange(w // 2), indexing="ij"), -1)
        return ids.reshape(1, -1, 1, 3).float()

    def forward_orig(self, x, t, context, clip_fea=None, freqs=None, transformer_options=None, **kw):
        self.calls.append({"freqs": freqs, "options": transformer_options})
        return x[:, :16] * 2


class FakePatcher:
    def __init__(self, dm):
        self.model = types.SimpleNamespace(diffusion_model=dm,
                                           state_dict=lambda: {"diffusion_model." + k: v for k, v in dm.state_dict().items()})
        self.patches, self.wrappers, self.model_options = {}, {}, {"transformer_options": {}}
        self.load_device, self.offload_device, self.additional_models = torch.device("cpu"), torch.device("cpu"), {}

    def clone(self):
        n = FakePatcher(self.model.diffusion_model)
        n.additional_models = {k: list(v) for k, v in self.additional_models.items()}
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.wrappers = {t: {k: list(v) for k, v in d.items()} for t, d in self.wrappers.items()}
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        sd = self.model.state_dict()
        added = [k for k in patches if k in sd]
        for k in added:
            self.patches.setdefault(k, []).append((strength_patch, patches[k]))
        return added

    def add_wrapper_with_key(self, wrapper_type, key, fn):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(fn)

    def set_additional_models(self, key, models):
        self.additional_models[key] = models

    def get_additional_models_with_key(self, key):
        return self.additional_models.get(key, [])

    def set_model_patch_replace(self, patch, name, block_name, number):
        to = self.model_options["transformer_options"]
        to.setdefault("patches_replace", {}).setdefault(name, {})[(block_name, number)] = patch


class FakeExecutor:
    """ComfyUI's WrapperExecutor semantics: wrappers[0] outermost; calling the executor runs the next."""

    def __init__(self, original, class_obj, wrappers, idx):
        self.original, self.class_obj, self.wrappers, self.idx = original, class_obj, list(wrappers), idx

    @classmethod
    def new_class_executor(cls, original, class_obj, wrappers, idx=0):
        return cls(original, class_obj, wrappers, idx)

    def __call__(self, *a, **k):
        return FakeExecutor(self.original, self.class_obj, self.wrappers, self.idx + 1).execute(*a, **k)

    def execute(self, *a, **k):
        if self.idx == len(self.wrappers):
            return self.original(*a, **k)
        return self.wrappers[self.idx](self, *a, **k)


@pytest.fixture
def fake_core(monkeypatch):
    lora = types.ModuleType("comfy.lora")
    lora.load_lora = lambda sd, to_load, log_missing=True: {
        t: ("lora", (sd[p + ".lora_B.weight"], sd[p + ".lora_A.weight"])) for p, t in to_load.items()}
    ext = types.ModuleType("comfy.patcher_extension")
    ext.WrappersMP = types.SimpleNamespace(DIFFUSION_MODEL="diffusion_model")
    mp = types.ModuleType("comfy.model_patcher")
    mp.ModelPatcher = lambda model, load_device, offload_device: types.SimpleNamespace(
        model=model, load_device=load_device, offload_device=offload_device)
    monkeypatch.setitem(sys.modules, "comfy.lora", lora)
    monkeypatch.setitem(sys.modules, "comfy.patcher_extension", ext)
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", mp)


@pytest.fixture
def perr(pack):  # noqa: F811
    return import_module(pack.__name__ + ".fourd_core.errors")


@pytest.fixture
def native(pack):  # noqa: F811
    return import_module(pack.__name__ + ".nodes.native")


def test_tiny_files_are_listed_for_core_loaders(pack, fake):  # noqa: F811
    fp = sys.modules["folder_paths"]
    assert TINY_MODEL_NAME in fp.get_filename_list("diffusion_models")
    assert TINY_RELEASE_NAME in pack.NODE_CLASS_MAPPINGS["FourDApply4DNeXNative"].INPUT_TYPES()["required"]["release"][0]


def test_apply_node_patches_a_clone(pack, fake, fake_core, native, perr):  # noqa: F811
    stock = FakePatcher(FakeWan())
    node = pack.NODE_CLASS_MAPPINGS["FourDApply4DNeXNative"]()
    out = node.apply(stock, TINY_RELEASE_NAME, "(beside the LoRA)", 0.6)[0]
    assert out is not stock and not stock.patches and not stock.wrappers and not stock.model_options["transformer_options"]
    assert len(out.patches) == 16 and all(p[0][0] == pytest.approx(0.3) for p in out.patches.values())   # 0.5 x 0.6
    assert "diffusion_model.blocks.1.cross_attn.o.weight" in out.patches
    assert list(out.wrappers["diffusion_model"]) == ["fourd_4dnex_native"]
    patch = out.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    assert isinstance(patch, native.patches.DomainEmbeddingPatch) and patch.embeddings.shape == (2, D)
    with pytest.raises(perr.InputError, match="already"):
        node.apply(out, TINY_RELEASE_NAME, "(beside the LoRA)", 1.0)
    with pytest.raises(perr.InputError, match="image-to-video"):
        node.apply(FakePatcher(FakeWan(in_dim=16, img_emb=False)), TINY_RELEASE_NAME, "(beside the LoRA)", 1.0)
    with pytest.raises(perr.InputError, match="not a Wan"):
        node.apply(types.SimpleNamespace(model=types.SimpleNamespace()), TINY_RELEASE_NAME, "(beside the LoRA)", 1.0)


def test_forward_wrapper_shares_rope_and_keeps_later_wrappers(native, perr):
    wan = FakeWan()
    seen = []

    def later(executor, *a, **k):      # another pack's wrapper registered after ours
        seen.append("later")
        return executor(*a, **k) + 1

    wrappers = [native.patches.fourdnex_forward_wrapper, later]
    x = torch.randn(1, 36, 2, 4, 8)
    out = FakeExecutor(lambda *a, **k: pytest.fail("stock _forward must not run"), wan, wrappers, 0).execute(
        x, torch.ones(1), torch.zeros(1, 4, 4096), None, None, {"keep": 1})
    assert seen == ["later"] and torch.equal(out, x[:, :16] * 2 + 1)
    call = wan.calls[-1]
    assert call["options"]["keep"] == 1 and call["options"][native.patches.GRID_KEY] == (2, 2, 4)
    f = call["freqs"].reshape(2, 2, 4, 3)
    assert torch.equal(f[:, :, :2], f[:, :, 2:]) and f[..., 2].max() == 1     # half-width positions, repeated
    with pytest.raises(perr.InputError, match="width"):
        FakeExecutor(None, wan, wrappers[:1], 0).execute(torch.randn(1, 36, 2, 4, 6), torch.ones(1), None, None, None, {})


def test_domain_embedding_patch_runs_block_zero_or_the_previous_patch(native, perr):
    emb = torch.randn(2, 8)
    x = torch.zeros(1, 2 * 1 * 4, 8)
    args = {"img": x, "txt": None, "vec": None, "pe": None, "transformer_options": {native.patches.GRID_KEY: (2, 1, 4)}}
    out = native.patches.DomainEmbeddingPatch(emb)(args, {"original_block": lambda a: {"img": a["img"] * 10}})
    expect = torch.cat([emb[0].expand(2, 8), emb[1].expand(2, 8)]).repeat(2, 1)[None] * 10
    torch.testing.assert_close(out["img"], expect)
    prev = native.patches.DomainEmbeddingPatch(torch.zeros(2, 8), previous=lambda a, e: {"img": a["img"] - 1})
    assert torch.all(prev(args, {"original_block": None})["img"] == -1)
    with pytest.raises(perr.InputError, match="wrapper"):
        native.patches.DomainEmbeddingPatch(emb)({**args, "transformer_options": {}}, {})


def test_conditioning_node_sets_both_conds_and_the_fused_latent(pack, perr):  # noqa: F811
    vae = TinyWanVAE(0)
    image = torch.rand(1, 32, 48, 3)
    cvo = types.SimpleNamespace(penultimate_hidden_states=torch.zeros(1, 257, 1280))
    text = [[torch.ones(1, 5, 4096), {"pooled_output": None}]]
    pos, neg, latent = pack.NODE_CLASS_MAPPINGS["FourD4DNeXConditioningNative"]().encode(
        text, [[torch.zeros(1, 5, 4096), {}]], vae, cvo, image, 9, 2)
    assert latent["samples"].shape == (2, 16, 3, 4, 12) and torch.all(latent["samples"] == 0)
    for c in (pos, neg):
        opts = c[0][1]
        assert opts["concat_latent_image"].shape == (1, 16, 3, 4, 12) and opts["clip_vision_output"] is cvo
        torch.testing.assert_close(opts["concat_mask"], layout.native_concat_mask(3, 4, 12))
    assert torch.equal(pos[0][0], text[0][0]) and "pooled_output" in pos[0][1] and "concat_mask" not in text[0][1]
    # the condition latent is the VAE posterior mean of [RGB | sloped plane], gray after
    from fourd_core.geometry.xyz_init import sloped_plane

    want = vae.encode(layout.condition_frames(image[0], sloped_plane(32, 48), 9))
    torch.testing.assert_close(pos[0][1]["concat_latent_image"], want)
    with pytest.raises(perr.InputError, match="multiple of 16"):
        pack.NODE_CLASS_MAPPINGS["FourD4DNeXConditioningNative"]().encode(text, text, vae, cvo, torch.rand(1, 30, 48, 3), 9, 1)


def test_decode_node_equals_the_diffusers_decode(pack, perr):  # noqa: F811
    from fourd_core.pipelines.fourdnex import decode_6d

    vae = TinyWanVAE(0)
    z = torch.randn(1, 16, 2, 4, 8, generator=torch.Generator().manual_seed(0))
    mean, std = layout.latent_stats(z)
    rgb, xyz, scene = pack.NODE_CLASS_MAPPINGS["FourDDecode6DNative"]().decode(vae, {"samples": z * std + mean}, False)
    rgb_d, xyz_d = decode_6d(types.SimpleNamespace(vae=vae.model, maybe_free_model_hooks=lambda: None), z)
    torch.testing.assert_close(rgb, rgb_d, rtol=0, atol=1e-5)
    torch.testing.assert_close(xyz, xyz_d, rtol=0, atol=1e-5)
    assert scene.rgb.shape == (5, 32, 32, 3) and scene.metadata["path"] == "native"
    with pytest.raises(perr.InputError, match="fused"):
        pack.NODE_CLASS_MAPPINGS["FourDDecode6DNative"]().decode(vae, {"samples": torch.zeros(1, 16, 2, 4, 7)}, False)


def test_text_encode_node_appends_the_pointmap_suffix(pack, perr):  # noqa: F811
    seen = []

    class FakeClip:
        def tokenize(self, text):
            seen.append(text)
            return text

        def encode_from_tokens_scheduled(self, tokens):
            return [[torch.zeros(1, 1, 4096), {"text": tokens}]]

    pos, neg = pack.NODE_CLASS_MAPPINGS["FourD4DNeXTextEncodeNative"]().encode(FakeClip(), " a park ", "")
    assert seen == ["a park POINTMAP_STYLE.", ""] and pos[0][1]["text"] == "a park POINTMAP_STYLE."
    with pytest.raises(perr.InputError):
        pack.NODE_CLASS_MAPPINGS["FourD4DNeXTextEncodeNative"]().encode(FakeClip(), "  ", "")


def test_tiny_encoders_are_deterministic_and_shaped_like_wan_inputs(pack):  # noqa: F811
    node = pack.NODE_CLASS_MAPPINGS["FourDTinyEncodersNative"]()
    img = torch.rand(1, 32, 48, 3)
    a = node.encode(img, "park")
    b = node.encode(img, "park")
    assert a[0][0][0].shape == (1, 512, 4096) and a[2].penultimate_hidden_states.shape == (1, 257, 1280)
    assert torch.equal(a[0][0][0], b[0][0][0]) and torch.equal(a[2].penultimate_hidden_states, b[2].penultimate_hidden_states)
    assert not torch.equal(a[0][0][0], node.encode(img, "zoo")[0][0][0])
    assert not torch.equal(a[2].penultimate_hidden_states, node.encode(1 - img, "park")[2].penultimate_hidden_states)


# ----------------------------------------------------------------------------------------------
# Typed 3D outputs (item 5): File3D where the running ComfyUI has it, path strings otherwise
def test_export_adds_file3d_outputs_only_where_comfyui_has_them(pack, fake, monkeypatch):  # noqa: F811
    from test_io import _scene
    from test_nodes import import_pack

    assert pack.NODE_CLASS_MAPPINGS["FourDExport"].RETURN_TYPES == ("STRING", "STRING")   # this fake has no File3D

    class File3D:      # what core SaveGLB uses of Types.File3D (comfyanonymous/ComfyUI 84254b3): format, save_to
        def __init__(self, source, file_format=""):
            self.source, self.format = source, file_format

        def save_to(self, path):
            self.source.seek(0)
            Path(path).write_bytes(self.source.read())
            return path

    io_mod = types.SimpleNamespace(File3DGLB=types.SimpleNamespace(io_type="FILE_3D_GLB"),
                                   File3DPointCloudAny=types.SimpleNamespace(io_type="FILE_3D_POINT_CLOUD_ANY"))
    latest = types.ModuleType("comfy_api.latest")
    latest.IO, latest.Types = io_mod, types.SimpleNamespace(File3D=File3D)
    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.latest", latest)
    typed = import_pack("ComfyUI_FourD_file3d")
    export = typed.NODE_CLASS_MAPPINGS["FourDExport"]
    assert export.RETURN_TYPES == ("STRING", "STRING", "FILE_3D_GLB", "FILE_3D_POINT_CLOUD_ANY")
    assert len(export.OUTPUT_TOOLTIPS) == len(export.RETURN_NAMES) == 4
    out = export().export(_scene(), "fourd/typed", 24.0, 0.0, 0.0, 0, 0, ply=True, glb=True)["result"]
    glb, ply = out[2], out[3]
    folder = fake.root / "output" / out[1] / "pointclouds"
    assert glb.format == "glb" and glb.source.getvalue() == (folder / "frame_00000.glb").read_bytes()
    assert ply.format == "ply" and ply.source.getvalue() == (folder / "frame_00000.ply").read_bytes()
    assert out[0].endswith("frame_00000.glb")
    saved = Path(glb.save_to(str(fake.root / "saved.glb")))           # as core SaveGLB writes it
    assert saved.read_bytes()[:4] == b"glTF" and saved.read_bytes() == (folder / "frame_00000.glb").read_bytes()


# ----------------------------------------------------------------------------------------------
# Grid on a native MODEL (item 4): block-replace logic with a fake block, conditioning layout
def _fake_block(args):
    """A stand-in for a Wan block: depends on tokens, context, modulation and RoPE table."""
    x, txt, vec, pe = args["img"], args["txt"], args["vec"], args["pe"]
    return {"img": torch.tanh(x * 1.5 + txt.mean(1, keepdim=True) + vec.mean((1, 2)).unsqueeze(1) + pe.mean())}


@pytest.mark.parametrize("mode", ["hard", "soft_avg", "sequential", "rows"])
def test_grid_block_patches_follow_the_two_stream_equations(native, mode):
    from fourd_core.kernels.streams import columns_to_rows, rows_to_columns
    from fourd_core.models.sync import soft_average_weight

    grid = import_module(native.__name__ + ".grid")
    views, times, s, d, layers = 3, 2, 4, 8, 3
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2 * views, times * s, d, generator=g)        # cond rows + uncond rows
    txt = torch.randn(2 * views, 5, d, generator=g)
    vec = torch.randn(2 * views, 1, 6, d, generator=g)
    pe_row, pe_col = torch.randn(1, times * s, 1, 2, generator=g), torch.randn(1, views * s, 1, 2, generator=g)
    opts = {grid.GRID_STATE: {"views": views, "times": times, "col_freqs": pe_col, "x_t": {}}}
    patches = [grid.GridBlockPatch(i, layers, mode) for i in range(layers)]
    x = x0
    for p in patches:
        x = p({"img": x, "txt": txt, "vec": vec, "pe": pe_row, "transformer_options": opts},
              {"original_block": _fake_block})["img"]

    def col(tokens, grp):        # the same block on the column layout, row 0's context and modulation
        r = slice(grp * views, grp * views + 1)
        out = _fake_block({"img": rows_to_columns(tokens, views, times), "txt": txt[r].expand(times, -1, -1),
                           "vec": vec[r].expand(times, -1, -1, -1), "pe": pe_col})["img"]
        return columns_to_rows(out, views, times)

    expect = []
    for grp in range(2):
        rows = slice(grp * views, (grp + 1) * views)
        xv = xt = x0[rows]
        for i in range(layers):
            yv = _fake_block({"img": xv, "txt": txt[rows], "vec": vec[rows], "pe": pe_row})["img"]
            if mode == "rows":
                xv = yv
            elif mode == "sequential":
                xv = col(yv, grp)
            elif mode == "hard":
                xv = (yv + col(xv, grp)) / 2
            else:
                w = 0.1 + 0.4 * (i + 1) / layers
                assert w == pytest.approx(soft_average_weight(i, layers))
                yt = col(xt, grp)
                xv, xt = (1 - w) * yv + w * yt, (1 - w) * yt + w * yv
        expect.append(xv)
    torch.testing.assert_close(x, torch.cat(expect), rtol=1e-5, atol=1e-6)


def test_grid_model_node_installs_a_wrapper_and_one_patch_per_block(pack, fake, fake_core, native, perr):  # noqa: F811
    stock = FakePatcher(FakeWan())
    out = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]().patch(stock, 4, "soft_avg")[0]
    assert not stock.wrappers and list(out.wrappers["diffusion_model"]) == ["fourd_grid_native"]
    reps = out.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(reps) == [("double_block", i) for i in range(NATIVE_TINY["num_layers"])]
    patched = pack.NODE_CLASS_MAPPINGS["FourDApply4DNeXNative"]().apply(stock, TINY_RELEASE_NAME, "(beside the LoRA)", 1.0)[0]
    with pytest.raises(perr.InputError, match="base Wan"):
        pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]().patch(patched, 4, "hard")
    wrapper = out.wrappers["diffusion_model"]["fourd_grid_native"][0]
    seen = {}

    def inner(executor, x, t, ctx, clip, tdc, opts, **kw):
        seen.update(opts)
        return x

    FakeExecutor(None, FakeWan(), [wrapper, inner], 0).execute(torch.zeros(8, 36, 3, 4, 6), None, None, None, None, {})
    st = seen["fourd_grid_state"]
    assert st["views"] == 4 and st["times"] == 3 and st["col_freqs"].shape == (1, 4 * 2 * 3, 1, 3)
    with pytest.raises(perr.InputError, match="batches of 4"):
        FakeExecutor(None, FakeWan(), [wrapper, inner], 0).execute(torch.zeros(6, 36, 3, 4, 6), None, None, None, None, {})


def test_grid_conditioning_node_known_rows_and_columns(pack, perr):  # noqa: F811
    from fourd_core.pipelines.grid_canvas import latent_mask

    vae = TinyWanVAE(0)
    seen = {}

    class FakeClipVision:
        def encode_image(self, images):
            seen.setdefault("images", []).append(images)
            return types.SimpleNamespace(penultimate_hidden_states=torch.full((images.shape[0], 257, 1280), len(seen["images"])))

    fixed, freeze = torch.rand(5, 32, 48, 3), torch.rand(3, 32, 48, 3)
    holes = torch.zeros(3, 32, 48)
    holes[2, :8, :8] = 1
    text = [[torch.zeros(1, 4, 4096), {}]]
    pos, neg, latent, views, column_clip = pack.NODE_CLASS_MAPPINGS["FourDGridConditioningNative"]().encode(
        text, text, vae, FakeClipVision(), fixed, freeze, holes)
    assert views == 3 and latent["samples"].shape == (3, 16, 2, 4, 6)
    rows, cols = seen["images"]
    torch.testing.assert_close(rows[0], fixed[0])          # row 0 starts with the video's first frame
    torch.testing.assert_close(rows[1:], freeze[1:])
    torch.testing.assert_close(cols, fixed[[0, 4]])          # columns: row 0 at pixel frames 4 tau
    assert column_clip.penultimate_hidden_states.eq(2).all() and pos[0][1]["clip_vision_output"].penultimate_hidden_states.eq(1).all()
    known = torch.zeros(3, 5, 32, 48)
    known[0], known[1:, 0] = 1, 1
    known[2, 0, :8, :8] = 0
    m = pos[0][1]["concat_mask"]
    torch.testing.assert_close(m, 1 - latent_mask(known))
    assert m[2, :, 0, 0, 0].eq(1).all() and m[2, :, 0, 1, 1].eq(0).all() and m[1, :, 1].eq(1).all() and m[0].eq(0).all()
    row1 = freeze[1:2].expand(1, -1, -1, -1)
    gray = torch.cat([row1, torch.full((4, 32, 48, 3), 0.5)])
    torch.testing.assert_close(pos[0][1]["concat_latent_image"][1:2], vae.encode(gray))
    assert neg[0][1]["concat_latent_image"] is pos[0][1]["concat_latent_image"]
    with pytest.raises(perr.InputError, match="4k\\+1"):
        pack.NODE_CLASS_MAPPINGS["FourDGridConditioningNative"]().encode(text, text, vae, FakeClipVision(), fixed[:4], freeze)


def test_conditioning_length_is_checked_at_queue_time(pack):  # noqa: F811
    cls = pack.NODE_CLASS_MAPPINGS["FourD4DNeXConditioningNative"]
    assert cls.VALIDATE_INPUTS(length=49, batch_size=1) is True and cls.VALIDATE_INPUTS(length=None) is True
    assert "4k+1" in cls.VALIDATE_INPUTS(length=48) and "batch_size" in cls.VALIDATE_INPUTS(length=5, batch_size=0)


# ----------------------------------------------------------------------------------------------
# Grid on a native MODEL: trained sync layers, fused view-time attention, known-latent pasting
def _grid_patches(native):
    """The pack's patch module (as the nodes import it, so error classes match ``perr``)."""
    return import_module(native.__name__.rsplit(".nodes", 1)[0] + ".fourd_core.native.grid_patches")


def _random_sync(mode, layers, dim, seed=0):
    from fourd_core.models.sync import GridSync

    sync = GridSync(mode, layers, dim)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sync.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return sync


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_grid_block_patches_with_trained_sync_follow_eqs_8_to_10(native, mode):
    from fourd_core.kernels.streams import columns_to_rows, rows_to_columns
    from fourd_core.models.sync import sigma_features

    grid = _grid_patches(native)
    views, times, s, d, layers, sigma = 3, 2, 4, 8, 3, 0.37
    sync = _random_sync(mode, layers, d)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(views, times * s, d, generator=g)
    txt, vec = torch.randn(views, 5, d, generator=g), torch.randn(views, 1, 6, d, generator=g)
    pe_row, pe_col = torch.randn(1, times * s, 1, 2, generator=g), torch.randn(1, views * s, 1, 2, generator=g)
    opts = {grid.GRID_STATE: {"views": views, "times": times, "col_freqs": pe_col, "x_t": {}, "sigma": sigma}}
    x = x0
    for i in range(layers):
        x = grid.GridBlockPatch(i, layers, mode, sync=sync)({"img": x, "txt": txt, "vec": vec, "pe": pe_row,
                                                            "transformer_options": opts}, {"original_block": _fake_block})["img"]

    def col(tokens):
        out = _fake_block({"img": rows_to_columns(tokens, views, times), "txt": txt[:1].expand(times, -1, -1),
                           "vec": vec[:1].expand(times, -1, -1, -1), "pe": pe_col})["img"]
        return columns_to_rows(out, views, times)

    phi = sigma_features(sigma, 32)
    xv = xt = x0
    with torch.no_grad():
        for i in range(layers):
            lay = sync.layers[i]
            yv, yt = _fake_block({"img": xv, "txt": txt, "vec": vec, "pe": pe_row})["img"], col(xv if mode == "hard" else xt)
            m = lay.mod.weight @ phi + lay.mod.bias
            if mode == "hard":                                  # Eq. 8: per-channel sigma-modulated weights
                xv = (lay.w_v + m[:d]) * yv + (lay.w_t + m[d:]) * yt
            else:                                               # Eqs. 9-10: ModLinear on [y_v, y_t]
                h = torch.cat([yv, yt], -1) * (1 + m[:2 * d]) + m[2 * d:]
                out = h @ lay.linear.weight.T + lay.linear.bias
                xv, xt = yv + out[..., :d], yt + out[..., d:]
    torch.testing.assert_close(x, xv, rtol=1e-5, atol=1e-5)


def test_sync_layer_left_partly_on_another_device_runs_on_copies_without_moving_it(native):
    """A partial (low-VRAM) load can leave parts of a sync layer on the offload device: the block
    runs the layer on copies of its weights on the activations' device and never moves the module
    behind ComfyUI's memory manager ("meta" stands in for the GPU here)."""
    grid = _grid_patches(native)
    sync = _random_sync("soft", 2, 8)
    run0, _ = grid.GridBlockPatch(0, 2, "soft", sync=sync)._sync_layer({"sigma": 0.5}, torch.zeros(1))
    assert run0 is sync.layers[0]                          # all on the device already: the module itself
    sync.layers[1].mod.to("meta")                          # half of layer 1 "loaded", its linear left behind
    like = torch.empty(3, 4, 8, device="meta")
    run1, feats = grid.GridBlockPatch(1, 2, "soft", sync=sync)._sync_layer({"sigma": 0.5}, like)
    dv, dt = run1(like, like, feats)
    assert dv.device.type == dt.device.type == "meta" and dv.shape == dt.shape == (3, 4, 8)
    assert sync.layers[1].linear.weight.device.type == "cpu" and sync.layers[1].mod.weight.device.type == "meta"


def test_fused_wrapper_makes_one_video_per_group_with_view_plus_time_positions(native, perr):
    grid = _grid_patches(native)
    views, t, h, w = 3, 2, 4, 6
    wrapper = grid.GridForwardWrapper(views, "fused", "dense")
    seen = {}

    def inner(executor, x, ts, ctx, clip, tdc, opts, **kw):
        seen.update(x=x, ts=ts, ctx=ctx, clip=clip, opts=opts)
        return x[:, :16] * 2

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * views, 36, t, h, w, generator=g)
    ts = torch.tensor([700.0] * views + [700.0] * views)
    ctx = torch.randn(2 * views, 7, 32, generator=g)
    clip = torch.randn(2 * views, 5, 1280, generator=g)
    out = FakeExecutor(None, FakeWan(), [wrapper, inner], 0).execute(x, ts, ctx, clip, None, {})
    torch.testing.assert_close(out, x[:, :16] * 2)                      # rows come back in their order
    assert seen["x"].shape == (2, 36, views * t, h, w)
    for v in range(views):                                               # frame v*T + tau of group k = row k*V + v
        torch.testing.assert_close(seen["x"][1, :, v * t:(v + 1) * t], x[views + v])
    assert seen["ts"].tolist() == [700.0, 700.0]
    torch.testing.assert_close(seen["ctx"], ctx[::views])
    torch.testing.assert_close(seen["clip"][1].reshape(views, 5, 1280), clip[views:])
    st = seen["opts"][grid.GRID_STATE]
    s = (h // 2) * (w // 2)
    pos = st["fused_freqs"].reshape(views, t, s, 3)                     # FakeWan's table holds (t, h, w) ids
    for v in range(views):
        for tau in range(t):
            assert pos[v, tau, :, 0].eq(v + tau).all()
    assert st["geometry"].backend == "dense" and st["geometry"].tokens_per_frame == s and st["img_tokens"] == views * 5
    with pytest.raises(perr.InputError, match="batches of 3"):
        FakeExecutor(None, FakeWan(), [wrapper, inner], 0).execute(x[:4], ts[:4], ctx[:4], clip[:4], None, {})


def _plain_attention(q, k, v, heads, **kw):
    """ComfyUI's attention contract: ``[B, L, H*d]`` in and out."""
    b, n, hd = q.shape
    q, k, v = (t.reshape(b, -1, heads, hd // heads).transpose(1, 2) for t in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, hd)


def test_fused_attention_override_masks_self_attention_and_splits_clip_per_view(native, perr):
    import math

    from fourd_core.kernels.fused import FusedGeometry, fused_dense_mask

    grid = _grid_patches(native)
    views, times, s, heads, dh, n_img = 3, 2, 4, 2, 8, 5
    n = views * times * s
    geo = FusedGeometry(views, times, s, "gather", "cpu")
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, n, heads * dh, generator=g) for _ in range(3))
    ki, vi = (torch.randn(2, views * n_img, heads * dh, generator=g) for _ in range(2))
    kt, vt = (torch.randn(2, 9, heads * dh, generator=g) for _ in range(2))
    override = grid.FusedBlockAttention({"geometry": geo, "img_tokens": views * n_img})
    calls = []

    def func(*a, **kw):
        calls.append(a[1].shape[1])
        return _plain_attention(*a, **kw)

    out_self = override(func, q, k, v, heads=heads, transformer_options={})
    out_img = override(func, q, ki, vi, heads=heads, transformer_options={})
    out_txt = override(func, q, kt, vt, heads=heads, transformer_options={})
    allowed = fused_dense_mask(views, times, s)
    qh, kh, vh = (t.reshape(2, -1, heads, dh) for t in (q, k, v))
    sc = torch.einsum("bqhd,bkhd->bhqk", qh, kh) / math.sqrt(dh)
    ref = torch.einsum("bhqk,bkhd->bqhd", sc.masked_fill(~allowed, float("-inf")).softmax(-1), vh).reshape(2, n, -1)
    torch.testing.assert_close(out_self, ref, rtol=1e-5, atol=1e-5)
    per = n // views
    for vw in range(views):                          # queries of view v see only view v's CLIP tokens
        sl, si = slice(vw * per, (vw + 1) * per), slice(vw * n_img, (vw + 1) * n_img)
        torch.testing.assert_close(out_img[:, sl], _plain_attention(q[:, sl], ki[:, si], vi[:, si], heads), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_txt, _plain_attention(q, kt, vt, heads))
    assert calls == [n_img, 9]                        # self-attention never reaches ComfyUI's (unmasked) function
    bad = grid.FusedBlockAttention({"geometry": geo, "img_tokens": views * n_img})
    with pytest.raises(perr.InputError, match="self-attention over 24 tokens first"):
        bad(func, q, kt, vt, heads=heads, transformer_options={})


def test_fused_block_patch_swaps_rope_and_attention_for_the_call_only(native):
    grid = _grid_patches(native)
    st = {"fused_freqs": torch.ones(1), "geometry": None, "img_tokens": 0}
    opts = {grid.GRID_STATE: st, "other": 1}
    seen = {}

    def block(args):
        seen.update(args)
        return {"img": args["img"] + 1}

    out = grid.GridBlockPatch(0, 2, "fused")({"img": torch.zeros(1, 3), "txt": None, "vec": None, "pe": torch.zeros(1),
                                             "transformer_options": opts}, {"original_block": block})
    assert out["img"].eq(1).all() and seen["pe"] is st["fused_freqs"]
    assert isinstance(seen["transformer_options"]["optimized_attention_override"], grid.FusedBlockAttention)
    assert seen["transformer_options"]["other"] == 1 and "optimized_attention_override" not in opts


def test_grid_model_node_loads_sync_weights_from_fourd_sync_with_clear_errors(pack, fake, fake_core, native, perr):  # noqa: F811
    from fourd_core.models.sync import GridSync, save_sync_weights

    folder = fake.root / "models" / "fourd_sync"
    folder.mkdir(parents=True, exist_ok=True)
    layers = NATIVE_TINY["num_layers"]
    save_sync_weights(_random_sync("hard", layers, D), folder / "good_hard_sync.safetensors")
    save_sync_weights(GridSync("hard", layers + 1, D), folder / "deeper_sync.safetensors")
    save_sync_weights(GridSync("hard", layers, D * 2), folder / "wider_sync.safetensors")
    cls = pack.NODE_CLASS_MAPPINGS["FourDGridModelNative"]
    opt = cls.INPUT_TYPES()["optional"]
    assert "good_hard_sync.safetensors" in opt["sync_weights"][0] and opt["sync_weights"][0][0] == "(none)"
    assert all("tooltip" in spec[1] for spec in opt.values())
    assert "fused" in cls.INPUT_TYPES()["required"]["mode"][0] and "soft" in cls.INPUT_TYPES()["required"]["mode"][0]
    stock = FakePatcher(FakeWan())
    out = cls().patch(stock, 4, "hard", sync_weights="good_hard_sync.safetensors")[0]
    patches = out.model_options["transformer_options"]["patches_replace"]["dit"]
    assert all(patches[("double_block", i)].sync is patches[("double_block", 0)].sync for i in range(layers))
    assert patches[("double_block", 0)].sync.mode == "hard"
    # handed to ComfyUI's memory manager as an additional model of the patched MODEL only
    (managed,) = out.get_additional_models_with_key(native.grid.SYNC_MODELS_KEY)
    assert managed.model is patches[("double_block", 0)].sync and managed.load_device == stock.load_device
    assert not stock.additional_models
    again = cls().patch(out, 4, "hard", sync_weights="good_hard_sync.safetensors")[0]   # a grid MODEL patched again
    assert [m.model for m in again.get_additional_models_with_key(native.grid.SYNC_MODELS_KEY)][:1] == [managed.model]
    assert len(again.get_additional_models_with_key(native.grid.SYNC_MODELS_KEY)) == 2
    assert not stock.wrappers and stock.model_options == {"transformer_options": {}}     # the input MODEL is untouched
    with pytest.raises(perr.WeightsError, match=f"{layers + 1} blocks of width {D}; this MODEL has {layers} blocks.*"
                                                "trained for this base model"):
        cls().patch(stock, 4, "hard", sync_weights="deeper_sync.safetensors")
    with pytest.raises(perr.WeightsError, match=f"width {2 * D}; this MODEL"):
        cls().patch(stock, 4, "hard", sync_weights="wider_sync.safetensors")
    with pytest.raises(perr.WeightsError, match="holds 'hard' sync weights.*Choose mode 'hard'"):
        cls().patch(stock, 4, "soft", sync_weights="good_hard_sync.safetensors")
    with pytest.raises(perr.InputError, match="for mode 'hard' or 'soft'.*\\(none\\)"):
        cls().patch(stock, 4, "soft_avg", sync_weights="good_hard_sync.safetensors")
    with pytest.raises(perr.WeightsError, match="not found"):
        cls().patch(stock, 4, "hard", sync_weights="missing_sync.safetensors")
    with pytest.raises(perr.InputError, match="fused backend"):
        cls().patch(stock, 4, "fused", fused_backend="fast")
    assert not stock.wrappers and stock.model_options == {"transformer_options": {}}


def test_grid_conditioning_latent_pastes_fully_known_latent_frames(pack):  # noqa: F811
    vae = TinyWanVAE(0)

    class FakeClipVision:
        def encode_image(self, images):
            return types.SimpleNamespace(penultimate_hidden_states=torch.zeros(images.shape[0], 257, 1280))

    fixed, freeze = torch.rand(9, 32, 48, 3), torch.rand(3, 32, 48, 3)
    holes = torch.zeros(3, 32, 48)
    holes[2, 5, 7] = 1                                      # one hole pixel: frame 0 of row 2 is not fully known
    text = [[torch.zeros(1, 4, 4096), {}]]
    node = pack.NODE_CLASS_MAPPINGS["FourDGridConditioningNative"]()
    pos, _, latent, _, _ = node.encode(text, text, vae, FakeClipVision(), fixed, freeze, holes)
    m = latent["noise_mask"]
    assert m.shape == (3, 1, 3, 4, 6) and m.dtype == torch.float32
    assert m[0].eq(0).all()                                 # row 0: the whole video is known
    assert m[1, :, 0].eq(0).all() and m[1, :, 1:].eq(1).all()     # row 1: only its freeze-time frame
    assert m[2].eq(1).all()                                 # row 2: its frame 0 has a hole
    assert latent["samples"] is pos[0][1]["concat_latent_image"]   # the known latents KSampler pastes
    assert "noise_mask" not in node.encode(text, text, vae, FakeClipVision(), fixed, freeze, holes, paste_known=False)[2]


def test_grid_windows_chain_conditions_each_window_on_the_frames_written_before(pack, perr):  # noqa: F811
    from fourd_core.pipelines.grid_canvas import latent_mask

    vae = TinyWanVAE(0)
    clips = []

    class FakeClipVision:
        def encode_image(self, images):
            clips.append(images.clone())
            return types.SimpleNamespace(penultimate_hidden_states=torch.zeros(images.shape[0], 257, 1280))

    m = pack.NODE_CLASS_MAPPINGS
    g = torch.Generator().manual_seed(5)
    fixed, freeze = torch.rand(9, 32, 48, 3, generator=g), torch.rand(4, 32, 48, 3, generator=g)
    text = [[torch.zeros(1, 4, 4096), {}]]
    grid, windows, wv = m["FourDGridCanvasNative"]().start(fixed, freeze, 3, 9, 2, 5)
    assert (windows, wv) == (2, 3) and grid["windows"] == [(0, 3, 0, 9), (1, 4, 0, 9)]
    win, merge = m["FourDGridWindowNative"](), m["FourDGridWindowMergeNative"]()
    with pytest.raises(perr.InputError, match="needs windows \\[0\\] merged first"):
        win.encode(grid, 1, text, text, vae, FakeClipVision())
    pos0, _, lat0, g0, _ = win.encode(grid, 0, text, text, vae, FakeClipVision())
    assert lat0["samples"].shape == (3, 16, 3, 4, 6)
    assert lat0["noise_mask"][0].eq(0).all() and lat0["noise_mask"][1:, :, 0].eq(0).all() and lat0["noise_mask"][1:, :, 1:].eq(1).all()
    with pytest.raises(perr.InputError, match="expected 27 images"):
        merge.merge(g0, torch.rand(26, 32, 48, 3))
    with pytest.raises(perr.InputError, match="grid output of FourD Grid Window"):
        merge.merge(grid, torch.rand(27, 32, 48, 3))
    frames0 = torch.rand(27, 32, 48, 3, generator=g)                      # "VAE Decode" of window 0, row-major
    g1, images, left = merge.merge(g0, frames0)
    assert left == 1 and images.shape == (36, 32, 48, 3)
    torch.testing.assert_close(images[:27], frames0)
    torch.testing.assert_close(images[27:], torch.zeros(9, 32, 48, 3))
    assert not grid["canvas"].written.any() and not g0["canvas"].written.any()      # inputs never change
    pos1, _, lat1, g1w, _ = win.encode(g1, 1, text, text, vae, FakeClipVision())
    # window 1 = views 1..3: views 1 and 2 were generated by window 0 and are known; view 3 only at time 0
    known = torch.zeros(3, 9, 32, 48)
    known[:2], known[2, 0] = 1, 1
    torch.testing.assert_close(pos1[0][1]["concat_mask"], 1 - latent_mask(known))
    torch.testing.assert_close(pos1[0][1]["concat_latent_image"][:1], vae.encode(frames0[9:18]))
    gray = torch.cat([freeze[3:4], torch.full((8, 32, 48, 3), 0.5)])
    torch.testing.assert_close(pos1[0][1]["concat_latent_image"][2:], vae.encode(gray))
    torch.testing.assert_close(clips[-2], torch.stack([frames0[9], frames0[18], freeze[3]]))   # rows
    torch.testing.assert_close(clips[-1], frames0[[9, 13, 17]])                                 # columns: view 1 at 4 tau
    assert lat1["noise_mask"][:2].eq(0).all() and lat1["noise_mask"][2, :, 0].eq(0).all()
    frames1 = torch.rand(27, 32, 48, 3, generator=g)
    _, images, left = merge.merge(g1w, frames1)
    assert left == 0
    torch.testing.assert_close(images[:27], frames0)                      # written frames are kept
    torch.testing.assert_close(images[27:], frames1[18:])                 # view 3 from window 1
    with pytest.raises(perr.InputError, match="this grid has 2 windows"):
        win.encode(g1, 2, text, text, vae, FakeClipVision())
