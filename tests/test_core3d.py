"""Core ComfyUI 3D types (SPLAT, File3D) through the pack's adapters (nodes/file3d.py), against a stand-in of
core's classes (tests/core3d_standin.py, written from the fields core declares): round trips, core's
documented conventions, clear errors when core's fields change, and the nodes' typed outputs and inputs."""

from __future__ import annotations

import math
import struct
from importlib import import_module

import numpy as np
import pytest
import torch

import core3d_standin as core
from test_nodes import fake, import_pack, pack  # noqa: F401 - fixtures

H, W = 48, 64


def _m(pack, name):  # noqa: F811
    return import_module(f"{pack.__name__}.{name}")


def _camera():
    K = torch.tensor([[60.0, 0, (W - 1) / 2], [0, 60.0, (H - 1) / 2], [0, 0, 1]])
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.1, -0.05, 0.0])
    return K, c2w


def _splats(pack, n, seed, anisotropic=True):  # noqa: F811
    """Splats in front of the camera: depths 2-4, std 0.02-0.1 with axis ratios down to 1:6, random unit
    quaternions, opacities 0.2-0.95, colours 0.05-0.95."""
    G = _m(pack, "fourd_core.splats.gaussians").Gaussians
    gen = torch.Generator().manual_seed(seed)
    K, c2w = _camera()
    u, v = 8 + (W - 16) * torch.rand(n, generator=gen), 6 + (H - 12) * torch.rand(n, generator=gen)
    z = 2 + 2 * torch.rand(n, generator=gen)
    means = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1) + c2w[:3, 3]
    scales = 0.02 + 0.08 * torch.rand(n, 1, generator=gen)
    if anisotropic:
        scales = scales * torch.exp(-math.log(6) * torch.rand(n, 3, generator=gen))
    q = torch.randn(n, 4, generator=gen)
    q = q / q.norm(dim=-1, keepdim=True)
    return G.from_values(means, 0.05 + 0.9 * torch.rand(n, 3, generator=gen), scales.expand(n, 3).contiguous(),
                         0.2 + 0.75 * torch.rand(n, generator=gen), q)


def _ply_records(data: bytes) -> tuple[list[str], np.ndarray]:
    """Header lines and float32 records of a binary little-endian PLY (all properties float)."""
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    props = [ln.split()[2] for ln in header if ln.startswith("property float")]
    return header, np.frombuffer(data[end:], dtype="<f4").reshape(-1, len(props))


def test_pack_splats_to_core_splat_and_back_write_the_direct_ply(pack):  # noqa: F811
    f3d = _m(pack, "nodes.file3d")
    G4 = _m(pack, "fourd_core.splats.gaussians").Gaussians4D
    ply = _m(pack, "fourd_core.splats.ply")
    a, b = _splats(pack, 120, 0), _splats(pack, 75, 1)
    g4d = G4(per_frame=[a, b])
    s = f3d.to_core_splat(g4d, core.SPLAT)
    assert isinstance(s, core.SPLAT)
    # core's conventions, from its declared fields: (B, N, ...), zero padded with counts, linear scales,
    # unit wxyz quaternions, opacities (B, N, 1) in [0, 1], sh (B, N, K=1, 3) with the DC term first
    assert s.positions.shape == (2, 120, 3) and s.sh.shape == (2, 120, 1, 3) and s.opacities.shape == (2, 120, 1)
    assert s.counts.tolist() == [120, 75] and torch.all(s.positions[1, 75:] == 0)
    torch.testing.assert_close(s.scales[1, :75], torch.exp(b.log_scales), rtol=1e-6, atol=0)
    torch.testing.assert_close(s.opacities[0, :, 0], 1 / (1 + torch.exp(-a.logit_opacities)), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(s.rotations[0].norm(dim=-1), torch.ones(120))
    assert float(s.opacities.min()) >= 0 and float(s.opacities.max()) <= 1
    torch.testing.assert_close(s.sh[0, :, 0], a.sh0, rtol=0, atol=0)

    back = f3d.from_core_splat(s)
    assert back.num_frames == 2 and back.counts() == [120, 75]
    for t, direct in enumerate((a, b)):
        h1, r1 = _ply_records(ply.gaussians_ply_bytes(direct))
        h2, r2 = _ply_records(ply.gaussians_ply_bytes(back.frame(t)))
        assert h1 == h2
        np.testing.assert_array_equal(r1[:, :9], r2[:, :9])          # x y z, normals, f_dc exactly
        np.testing.assert_allclose(r2[:, 9:], r1[:, 9:], rtol=2e-5, atol=2e-5)   # logit, log-scales, rot

    # a deformable set: one batch item per frame at view 0, no counts (equal sizes)
    def_set = G4(canonical=a, time_offsets=torch.stack([torch.zeros(120, 3), torch.full((120, 3), 0.2)]))
    s2 = f3d.to_core_splat(def_set, core.SPLAT)
    assert s2.counts is None and s2.positions.shape == (2, 120, 3)
    torch.testing.assert_close(s2.positions[1], a.means + 0.2)


def _core_splat_from_ply(data: bytes):
    """A core SPLAT built from a 3DGS PLY as core documents it (written here, not the pack's reader):
    positions x y z; scales = exp(scale_*) (linear); rotations = rot_0..3 (w, x, y, z) normalised;
    opacities = sigmoid(opacity) in [0, 1]; sh = f_dc_* as the DC term (K = 1); batch of one."""
    end = data.index(b"end_header\n") + len(b"end_header\n")
    names = [ln.split()[2] for ln in data[:end].decode("ascii").splitlines() if ln.startswith("property")]
    rec = np.frombuffer(data[end:], dtype=np.dtype([(n, "<f4") for n in names])).astype(
        np.dtype([(n, "<f8") for n in names]))

    def cols(*keys):
        return torch.from_numpy(np.stack([rec[k] for k in keys], 1))

    rot = cols("rot_0", "rot_1", "rot_2", "rot_3")
    return core.SPLAT(positions=cols("x", "y", "z").float()[None],
                      scales=cols("scale_0", "scale_1", "scale_2").exp().float()[None],
                      rotations=(rot / rot.norm(dim=-1, keepdim=True)).float()[None],
                      opacities=(1 / (1 + torch.exp(-cols("opacity")))).float()[None],
                      sh=cols("f_dc_0", "f_dc_1", "f_dc_2").float()[None, :, None, :])


def _psnr(a, b):
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-12)))


def test_core_splat_made_from_a_ply_renders_like_the_packs_own_splats(pack, tmp_path):  # noqa: F811
    f3d = _m(pack, "nodes.file3d")
    ply = _m(pack, "fourd_core.splats.ply")
    render = _m(pack, "fourd_core.splats.rasterize").render_gaussians
    path = ply.write_gaussians_ply(tmp_path / "s.ply", _splats(pack, 300, 3))
    own = ply.read_gaussians_ply(path)
    from_core = f3d.from_core_splat(_core_splat_from_ply(path.read_bytes())).frame(0)
    K, c2w = _camera()
    bg = torch.tensor([0.1, 0.2, 0.3])
    ref = render(own, K, c2w, H, W, bg, backend="torch")["image"]
    got = render(from_core, K, c2w, H, W, bg, backend="torch")["image"]
    assert float((ref - bg).abs().sum(-1).gt(0.05).float().mean()) > 0.3     # the splats cover the view
    assert _psnr(got, ref) > 60
    # the check can fail: reading the quaternion as x y z w (a wrong convention) renders differently
    wrong = _core_splat_from_ply(path.read_bytes())
    wrong.rotations = wrong.rotations[..., [1, 2, 3, 0]]
    assert _psnr(render(f3d.from_core_splat(wrong).frame(0), K, c2w, H, W, bg, backend="torch")["image"], ref) < 40


def test_adapters_name_the_core_field_that_changed(pack):  # noqa: F811
    f3d = _m(pack, "nodes.file3d")
    errors = _m(pack, "fourd_core.errors")
    G4 = _m(pack, "fourd_core.splats.gaussians").Gaussians4D
    s = f3d.to_core_splat(G4(per_frame=[_splats(pack, 10, 4)]), core.SPLAT)
    del s.sh
    with pytest.raises(errors.InputError, match="'sh'"):
        f3d.from_core_splat(s)
    s = f3d.to_core_splat(G4(per_frame=[_splats(pack, 10, 4)]), core.SPLAT)
    s.rotations = s.rotations[..., :3]
    with pytest.raises(errors.InputError, match="'rotations'"):
        f3d.from_core_splat(s)
    s = f3d.to_core_splat(G4(per_frame=[_splats(pack, 10, 4)]), core.SPLAT)
    s.counts = torch.tensor([11])
    with pytest.raises(errors.InputError, match="'counts'"):
        f3d.from_core_splat(s)

    class Renamed:                     # a core that renamed a constructor field
        def __init__(self, positions, scales, rotations, opacity, sh, counts=None):
            pass

    with pytest.raises(errors.InputError, match="'opacities'"):
        f3d.to_core_splat(G4(per_frame=[_splats(pack, 10, 4)]), Renamed)
    with pytest.raises(errors.InputError, match="no core SPLAT"):
        f3d.to_core_splat(G4(per_frame=[_splats(pack, 10, 4)]))     # this fake ComfyUI has no SPLAT


def _glb_points(data: bytes) -> int:
    jlen = struct.unpack_from("<I", data, 12)[0]
    import json

    doc = json.loads(data[20:20 + jlen])
    return doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]["count"]


def test_nodes_speak_core_types_where_comfyui_has_them(fake, monkeypatch):  # noqa: F811
    from test_io import _scene

    core.install(monkeypatch)
    typed = import_pack("ComfyUI_FourD_core3d")
    N = typed.NODE_CLASS_MAPPINGS
    f3d = _m(typed, "nodes.file3d")
    assert f3d.available() and f3d.splat_available()
    assert N["FourDGaussiansFromScene"].RETURN_TYPES == ("FOURD_GAUSSIANS", "SPLAT")
    assert N["FourDFit4DGaussians"].RETURN_TYPES == ("FOURD_GAUSSIANS", "IMAGE", "SPLAT")
    assert N["FourDFit4DGaussians"].INPUT_TYPES()["optional"]["splat"][0] == "SPLAT"
    assert N["FourDPreview4D"].INPUT_TYPES()["optional"]["splat"][0] == "SPLAT"
    assert N["FourDSaveGaussians"].RETURN_TYPES == ("STRING", "STRING", "STRING", "FILE_3D_SPLAT_ANY")
    assert N["FourDExport"].RETURN_TYPES == ("STRING", "STRING", "FILE_3D_GLB", "FILE_3D_POINT_CLOUD_ANY")
    for cls in N.values():
        if cls.RETURN_TYPES:
            assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))

    scene = _scene(F=2, H=10, W=14)
    g4d, splat = N["FourDGaussiansFromScene"]().make(scene, 1, 0.4, 0.0)
    assert isinstance(splat, core.SPLAT) and splat.positions.shape == (2, 140, 3)
    torch.testing.assert_close(splat.positions[1], g4d.frame(1).means)

    out = N["FourDSaveGaussians"]().save(g4d, "fourd/typed_splats")["result"]
    folder = fake.root / "output" / out[1]
    assert isinstance(out[3], core.File3D) and out[3].format == "ply"
    assert out[3].get_bytes() == (folder / "frame_00000.ply").read_bytes()
    glb = (fake.root / "output" / out[2]).read_bytes()
    # frame 0's splat centres, without the faint ones (opacity = the pixel's confidence here)
    assert glb[:4] == b"glTF" and _glb_points(glb) == int((g4d.frame(0).opacities >= 0.05).sum()) > 100

    # the 4D preview takes the core SPLAT instead of the pack's splats
    ui = N["FourDPreview4D"]().preview(splat=splat)["ui"]["fourd_scene"][0]
    va = _m(typed, "fourd_core.testing.readers")
    header, pos, _ = va.read_viewer_asset((fake.root / "temp" / ui["subfolder"] / ui["filename"]).read_bytes())
    assert header["splats"] and header["frames"] == 2 and [len(p) for p in pos] == [140, 140]
    errors = _m(typed, "fourd_core.errors")
    with pytest.raises(errors.InputError, match="not both"):
        N["FourDPreview4D"]().preview(gaussians=g4d, splat=splat)


def test_fit_starts_from_a_core_splat(fake, monkeypatch):  # noqa: F811
    from test_io import _scene

    core.install(monkeypatch)
    typed = import_pack("ComfyUI_FourD_core3d_fit")
    N = typed.NODE_CLASS_MAPPINGS
    scene = _scene(F=2, H=10, W=14)
    start = _m(typed, "nodes.file3d").to_core_splat(N["FourDGaussiansFromScene"]().make(scene, 2, 0.4, 0.0)[0], core.SPLAT)
    g4d, orbit, splat = N["FourDFit4DGaussians"]().fit(scene, 1, 0, False, 0, splat=start)
    # one step, no densification: the fit keeps the 2 x 35 splats it started from
    assert len(g4d.canonical) == 2 * 35 and splat.positions.shape == (2, 70, 3)
