"""The native 4DNeX patch on a GGUF-quantised Wan model loaded by the ComfyUI-GGUF pack (city96's
``Unet Loader (GGUF)``), the way most 12-24 GB users run Wan2.1-I2V-14B.

The pack is looked up at ``$COMFYUI_GGUF_PATH`` or ``$COMFYUI_PATH/custom_nodes/ComfyUI-GGUF`` (with
the ``gguf`` package installed); the tests skip without it. The tiny original-layout Wan weights are
written as a GGUF file with every block matrix in Q8_0 (5-D patch embedding flattened with
ComfyUI-GGUF's ``comfy.gguf.orig_shape`` field, as its converter does). The reference is the same
model loaded by core ComfyUI from safetensors holding the weights as ComfyUI-GGUF dequantises them
(its default Q8_0 dequantisation multiplies in float16), so both sides use identical numbers and any
difference would come from how the patches reach the model:

* one CFG denoiser evaluation of the 4DNeX-patched GGUF model equals the patched reference (LoRA
  applied at ComfyUI-GGUF's dequantisation time, domain embeddings and shared RoPE by our patches);
* the LoRA changes the dequantised weights by exactly ``0.5 * strength * B A``;
* the stock GGUF model gives the same output before and after the patched one ran.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_fixtures import comfy, pack  # noqa: F401  (fixtures)
from test_native_denoiser import FRAMES, inputs, native_velocity  # noqa: F401  (fixture, helpers)

Q8_ROWS = 32           # Q8_0 block size: the last dimension must be a multiple of it


@pytest.fixture(scope="module")
def gguf_pack(comfy):
    """ComfyUI-GGUF imported as ComfyUI imports a custom node."""
    gguf = pytest.importorskip("gguf", reason="the gguf package (ComfyUI-GGUF's requirement) is not installed")
    del gguf
    root = os.environ.get("COMFYUI_GGUF_PATH") or str(Path(os.environ["COMFYUI_PATH"]) / "custom_nodes" / "ComfyUI-GGUF")
    root = Path(root).expanduser().resolve()
    if not (root / "nodes.py").is_file():
        pytest.skip(f"ComfyUI-GGUF not found at {root} (set COMFYUI_GGUF_PATH)")
    name = "ComfyUI_GGUF_for_fourd_tests"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _quantise(sd: dict[str, torch.Tensor]):
    """GGUF tensors ``{key: (data, original shape, type)}``: block matrices Q8_0, everything else F32."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    out = {}
    for k, t in sd.items():
        a = t.float().numpy()
        if a.ndim == 2 and a.shape[-1] % Q8_ROWS == 0 and k.startswith("blocks.") and a.size >= 1024:
            out[k] = (quants.quantize(a, Q.Q8_0), a.shape, Q.Q8_0)
        else:
            out[k] = (np.ascontiguousarray(a.reshape(a.shape[0], -1) if a.ndim > 4 else a), a.shape, Q.F32)
    return out


@pytest.fixture(scope="module")
def gguf_files(gguf_pack, tmp_path_factory):
    import gguf
    from safetensors.torch import save_file

    from fourd_core.native.tiny_wan import save_native_tiny, tiny_native_state_dict

    folder = save_native_tiny(tmp_path_factory.mktemp("native_gguf"))
    tensors = _quantise(tiny_native_state_dict(0))
    path = folder / "diffusion_models" / "fourd_tiny_wan21_i2v_q8_0.gguf"
    w = gguf.GGUFWriter(str(path), arch="wan")
    for k, (data, shape, qtype) in tensors.items():
        if data.shape != shape:
            w.add_array(f"comfy.gguf.orig_shape.{k}", list(shape))
        w.add_tensor(k, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    deq = {k: gguf_pack.dequant.dequantize_tensor(t, torch.float32).contiguous()
           for k, t in gguf_pack.loader.gguf_sd_loader(str(path)).items()}
    ref = folder / "diffusion_models" / "fourd_tiny_wan21_i2v_dequantised.safetensors"
    save_file(deq, str(ref))
    n_q8 = sum(q == gguf.GGMLQuantizationType.Q8_0 for _, _, q in tensors.values())
    assert n_q8 >= 16                                      # every block matrix is really quantised
    return folder, path, ref


@pytest.fixture(scope="module")
def models(comfy, gguf_pack, gguf_files):
    import folder_paths

    folder, path, ref = gguf_files
    folder_paths.add_model_folder_path("diffusion_models", str(path.parent))
    loaded = gguf_pack.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]().load_unet(path.name)[0]
    assert type(loaded).__name__ == "GGUFModelPatcher"
    return loaded, comfy.sd.load_diffusion_model(str(ref)), folder


def _conditioning(pack, inputs):
    from fourd_core.native.tiny_wan import TinyWanVAE

    nodes = pack.NODE_CLASS_MAPPINGS
    cvo = pack.nodes.native.demo_standins.clip_vision_output(inputs["clip"])
    pos, neg, _ = nodes["FourD4DNeXConditioningNative"]().encode(
        [[inputs["text"], {}]], [[inputs["neg_text"], {}]], TinyWanVAE(0), cvo, inputs["image"][None], FRAMES, 1)
    return pos, neg


def _apply(pack, model, folder, strength=1.0):
    from fourd_core.native.tiny_wan import TINY_RELEASE_NAME

    release = folder / "loras" / TINY_RELEASE_NAME
    return pack.NODE_CLASS_MAPPINGS["FourDApply4DNeXNative"]().apply(model, str(release), "(beside the LoRA)",
                                                                      strength)[0]


def test_4dnex_on_gguf_model_matches_dequantised_reference(comfy, pack, models, inputs):
    gguf_model, reference, folder = models
    pos, neg = _conditioning(pack, inputs)
    stock_before = native_velocity(comfy, gguf_model, pos, neg, inputs["x"], cfg=5.0)
    v_ref_stock = native_velocity(comfy, reference, pos, neg, inputs["x"], cfg=5.0)
    torch.testing.assert_close(stock_before, v_ref_stock, rtol=1e-4, atol=1e-4)     # same numbers, two loaders

    patched = _apply(pack, gguf_model, folder)
    assert type(patched).__name__ == "GGUFModelPatcher"      # the clone keeps the GGUF patcher
    v_gguf = native_velocity(comfy, patched, pos, neg, inputs["x"], cfg=5.0)
    v_ref = native_velocity(comfy, _apply(pack, reference, folder), pos, neg, inputs["x"], cfg=5.0)
    print(f"4DNeX on GGUF Q8_0 vs dequantised safetensors: max abs diff {(v_gguf - v_ref).abs().max():.2e}, "
          f"patch effect {(v_gguf - stock_before).abs().max():.2e}")
    torch.testing.assert_close(v_gguf, v_ref, rtol=1e-4, atol=1e-4)
    assert (v_gguf - stock_before).abs().max() > 1e-2                  # the patches reached the GGUF model
    stock_after = native_velocity(comfy, gguf_model, pos, neg, inputs["x"], cfg=5.0)
    assert torch.equal(stock_before, stock_after)


def test_lora_on_gguf_weights_is_half_strength_b_times_a(comfy, pack, gguf_pack, models):
    """The LoRA as ComfyUI-GGUF applies it: its ops dequantise each weight and add the patches
    (``GGMLLayer.get_weight``); the delta must be exactly 0.5 * strength * B A."""
    from safetensors.torch import load_file

    from fourd_core.native.tiny_wan import TINY_RELEASE_NAME

    gguf_model, _, folder = models
    strength = 0.6
    patched = _apply(pack, gguf_model, folder, strength)
    raw = load_file(str(folder / "loras" / TINY_RELEASE_NAME / "pytorch_lora_weights.safetensors"))
    mm = comfy.model_management
    dm = gguf_model.model.diffusion_model
    mm.unload_all_models()
    mm.load_models_gpu([patched])
    try:
        layer = dm.blocks[1].self_attn.q
        patched_w = layer.get_weight(layer.weight.to("cpu"), torch.float32).double()
        clean_w = gguf_pack.dequant.dequantize_tensor(layer.weight, torch.float32).double()
    finally:
        mm.unload_all_models()
    a = raw["transformer.blocks.1.attn1.to_q.lora_A.weight"].double()
    b = raw["transformer.blocks.1.attn1.to_q.lora_B.weight"].double()
    torch.testing.assert_close(patched_w - clean_w, 0.5 * strength * (b @ a), rtol=1e-5, atol=1e-6)
