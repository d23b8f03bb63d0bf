"""File outputs: GLB structure (parsed here from the glTF 2.0 spec), PLY, video, cameras, depth,
the scene file, and atomic export (no partial outputs on failure)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from fourd_core.errors import InputError
from fourd_core.io import cameras as cam_io
from fourd_core.util.atomic import write_text_atomic
from fourd_core.io.pointcloud import clean_points, glb_bytes, write_glb, write_ply
from fourd_core.testing.readers import read_ply
from fourd_core.io.video import read_video, write_video
from fourd_core.scene import Scene4D

GLTF_COMPONENT = {5126: ("f", 4), 5121: ("B", 1), 5123: ("H", 2), 5125: ("I", 4)}


def parse_glb(data: bytes):
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    jlen, jtype = struct.unpack_from("<I4s", data, 12)
    assert jtype == b"JSON"
    doc = json.loads(data[20:20 + jlen])
    blen, btype = struct.unpack_from("<I4s", data, 20 + jlen)
    assert btype == b"BIN\x00"
    return doc, data[28 + jlen: 28 + jlen + blen]


def read_accessor(doc, binary, index):
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    fmt, size = GLTF_COMPONENT[acc["componentType"]]
    ncomp = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    stride = view.get("byteStride", size * ncomp)
    out = [struct.unpack_from("<" + fmt * ncomp, binary, start + i * stride) for i in range(acc["count"])]
    return np.array(out)


def node_transform(doc) -> np.ndarray:
    """The 4x4 matrix of the mesh's node (glTF 2.0 sec. 5.25: ``matrix``, or T * R * S from TRS)."""
    node = next(n for n in doc["nodes"] if "mesh" in n)
    if "matrix" in node:
        return np.array(node["matrix"], dtype=np.float64).reshape(4, 4).T
    m = np.eye(4)
    assert "rotation" not in node or node["rotation"] == [0, 0, 0, 1]
    m[:3, :3] = np.diag(node.get("scale", [1, 1, 1]))
    m[:3, 3] = node.get("translation", [0, 0, 0])
    return m


def test_glb_is_points_with_linear_color0_in_gltf_y_up_axes():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(50, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 2.0])
    c = torch.rand(50, 3, generator=g)
    doc, binary = parse_glb(glb_bytes(p, c))
    prim = doc["meshes"][0]["primitives"][0]
    assert prim["mode"] == 0  # POINTS
    pos = read_accessor(doc, binary, prim["attributes"]["POSITION"])
    col_acc = doc["accessors"][prim["attributes"]["COLOR_0"]]
    col = read_accessor(doc, binary, prim["attributes"]["COLOR_0"])
    # OpenCV (x right, y down, z forward) -> glTF (x right, y up, z toward the viewer) in the accessor
    assert np.allclose(pos, p.numpy() * np.array([1, -1, -1]), atol=1e-6)
    acc = doc["accessors"][prim["attributes"]["POSITION"]]
    assert np.allclose(acc["min"], pos.min(0)) and np.allclose(acc["max"], pos.max(0))
    # "up" in the image (smaller OpenCV y) is larger glTF y: the scene shows upright
    top, bottom = torch.tensor([[0.0, -1.0, 2.0]]), torch.tensor([[0.0, 1.0, 2.0]])
    d2, b2 = parse_glb(glb_bytes(torch.cat([top, bottom]), torch.ones(2, 3)))
    ys = read_accessor(d2, b2, d2["meshes"][0]["primitives"][0]["attributes"]["POSITION"])[:, 1]
    assert ys[0] > ys[1]
    # COLOR_0 is linear (glTF 2.0 sec. 3.7.2.1): the sRGB decoding curve of IEC 61966-2-1, written out here
    assert col_acc["componentType"] == 5123 and col_acc["normalized"] and col_acc["type"] == "VEC4"
    srgb = c.double().numpy()
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    assert np.allclose(col[:, :3] / 65535.0, linear, atol=1 / 65535) and np.all(col[:, 3] == 65535)
    assert np.allclose(col[0, :3] / 65535.0, linear[0], atol=1e-4)


def test_glb_node_frames_any_scene_at_five_units():
    """A 40,000-unit cloud (what random weights give) lands as a 5-unit model around the origin; the accessor
    keeps scene units; one far outlier is left out; the node's extras undo the scale."""
    g = torch.Generator().manual_seed(1)
    p = (torch.rand(5000, 3, generator=g) - 0.5) * torch.tensor([80000.0, 80000.0, 0.4]) + torch.tensor([1e4, 0, 3])
    p = torch.cat([p, torch.tensor([[1e9, 0.0, 0.0]])])
    doc, binary = parse_glb(glb_bytes(p, torch.rand(len(p), 3, generator=g)))
    pos = read_accessor(doc, binary, doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
    assert len(pos) == 5000                        # the outlier at 1e9 is gone
    m = node_transform(doc)
    shown = pos @ m[:3, :3].T + m[:3, 3]
    radius = np.quantile(np.linalg.norm(shown - np.median(shown, 0), axis=1), 0.98)
    assert 2 * radius == pytest.approx(5.0, rel=0.05) and np.abs(np.median(shown, 0)).max() < 0.05
    assert np.abs(shown).max() < 10                # inside any viewer's far plane
    extras = next(n for n in doc["nodes"] if "mesh" in n)["extras"]
    assert extras["fourd_scene_units_per_unit"] == pytest.approx(1 / m[0, 0])


def test_glb_frames_of_one_export_share_their_placement(tmp_path):
    from fourd_core.io.export import ExportOptions, export_scene

    scene = _scene()
    export_scene(scene, tmp_path / "x", ExportOptions.with_formats(videos=False, images=False, depth=False,
                                                                   cameras=False, ply=False, gaussians=False))
    mats = [node_transform(parse_glb(f.read_bytes())[0]) for f in sorted((tmp_path / "x" / "pointclouds").glob("*.glb"))]
    assert len(mats) == scene.num_frames and all(np.array_equal(m, mats[0]) for m in mats)


def test_ply_reads_back_with_plyfile(tmp_path):
    """The file written, read with plyfile (not the pack's reader): the same points, colours to 1/255."""
    import plyfile

    p = torch.rand(100, 3)
    c = torch.rand(100, 3)
    write_ply(tmp_path / "a.ply", p, c)
    v = plyfile.PlyData.read(str(tmp_path / "a.ply"))["vertex"].data
    p2 = torch.from_numpy(np.stack([v["x"], v["y"], v["z"]], -1))
    c2 = torch.from_numpy(np.stack([v["red"], v["green"], v["blue"]], -1).astype(np.float32) / 255)
    assert torch.allclose(p2, p, atol=1e-6)
    assert torch.allclose(c2, c, atol=1 / 255 + 1e-6)


def test_ply_is_float32_binary_with_uchar_colors(tmp_path):
    """Parsed here from the PLY format description (header lines, then packed little-endian
    records), independent of the writer's library: three.js' loader needs float32 x y z."""
    p = torch.tensor([[1.5, -2.25, 3.0], [0.0, 1e5, -7.125]])
    c = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.4, 0.6]])
    write_ply(tmp_path / "b.ply", p, c)
    data = (tmp_path / "b.ply").read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[0] == "ply" and "format binary_little_endian 1.0" in header
    assert "element vertex 2" in header
    props = [ln.split()[1:] for ln in header if ln.startswith("property")]
    assert props == [["float", "x"], ["float", "y"], ["float", "z"],
                     ["uchar", "red"], ["uchar", "green"], ["uchar", "blue"]]
    recs = [struct.unpack_from("<fffBBB", data, end + i * 15) for i in range(2)]
    assert len(data) == end + 2 * 15
    assert np.allclose([r[:3] for r in recs], p.numpy())
    assert [r[3:] for r in recs] == [(255, 0, 128), (51, 102, 153)]
    assert oct((tmp_path / "b.ply").stat().st_mode & 0o777) != oct(0o600)  # not the private mkstemp mode


def test_point_writers_reject_nan(tmp_path):
    p = torch.rand(10, 3)
    p[3, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        write_glb(tmp_path / "x.glb", p, torch.rand(10, 3))
    assert not (tmp_path / "x.glb").exists()


def test_clean_points_filters():
    p = torch.rand(1000, 3)
    p[0] = float("inf")
    conf = torch.rand(1000)
    q, c = clean_points(p, torch.rand(1000, 3), confidence=conf, min_confidence=0.5)
    assert len(q) == int(((conf >= 0.5) & torch.isfinite(p).all(-1)).sum())
    q, _ = clean_points(p, torch.rand(1000, 3), max_points=100)
    assert len(q) == 100
    q, _ = clean_points(torch.rand(2000, 3), torch.rand(2000, 3), voxel_size=0.25)
    assert 27 <= len(q) <= 5 ** 3  # one point per occupied 0.25 voxel of the unit cube


def test_video_roundtrip(tmp_path):
    frames = torch.zeros(5, 32, 48, 3)
    frames[:, :, :24, 0] = 1.0
    frames[2, :, :, 1] = 0.5
    write_video(tmp_path / "v.mp4", frames, fps=8)
    back = read_video(tmp_path / "v.mp4")
    assert back.shape == (5, 32, 48, 3)
    assert (back - frames).abs().mean() < 0.03
    assert not list(tmp_path.glob(".*tmp*"))


def test_cameras_and_transforms_conventions(tmp_path):
    """A world point projects to the same pixel through cameras.json (OpenCV, centres at integers)
    and transforms.json (OpenGL axes, centres at +0.5), computed here from each convention."""
    K = torch.tensor([[[100.0, 0, 23.5], [0, 100.0, 15.5], [0, 0, 1]]])
    ang = 0.3
    R = torch.tensor([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]], dtype=torch.float32)
    c2w = torch.eye(4)[None].clone()
    c2w[0, :3, :3] = R
    c2w[0, :3, 3] = torch.tensor([0.2, -0.1, 0.5])
    cam_io.write_cameras_json(tmp_path / "cameras.json", K, c2w, 32, 48)
    cam_io.write_transforms_json(tmp_path / "transforms.json", K, c2w, 32, 48, ["images/a.png"])
    X = np.array([0.4, 0.3, 3.0])
    cj = json.loads((tmp_path / "cameras.json").read_text())["frames"][0]
    M = np.linalg.inv(np.array(cj["cam_to_world"]))
    xc = M[:3, :3] @ X + M[:3, 3]
    u_cv = np.array(cj["K"]) @ (xc / xc[2])
    tj = json.loads((tmp_path / "transforms.json").read_text())["frames"][0]
    Mg = np.linalg.inv(np.array(tj["transform_matrix"]))
    xg = Mg[:3, :3] @ X + Mg[:3, 3]
    assert xg[2] < 0  # OpenGL: the camera looks down -z
    u_ns = tj["fl_x"] * xg[0] / -xg[2] + tj["cx"]
    v_ns = -tj["fl_y"] * xg[1] / -xg[2] + tj["cy"]
    assert u_ns == pytest.approx(u_cv[0] + 0.5) and v_ns == pytest.approx(u_cv[1] + 0.5)
    K2, c2w2 = cam_io.read_cameras_json(tmp_path / "cameras.json")
    assert torch.allclose(K2, K) and torch.allclose(c2w2, c2w, atol=1e-6)


def test_depth_png_roundtrip(tmp_path):
    d = torch.rand(16, 20) * 5 + 0.1
    s = cam_io.depth_png_scale(d)
    cam_io.write_depth_png(tmp_path / "d.png", d, s)
    from fourd_core.testing.readers import read_depth_png

    back = read_depth_png(tmp_path / "d.png", s)
    assert (back - d).abs().max() <= 0.5 / s + 1e-6
    import imageio.v2 as imageio

    assert imageio.imread(tmp_path / "d.png").dtype == np.uint16


def _scene(F=3, H=8, W=12):
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[10.0, 0, (W - 1) / 2], [0, 10.0, (H - 1) / 2], [0, 0, 1]]).expand(F, 3, 3).clone()
    c2w = torch.eye(4).expand(F, 4, 4).clone()
    c2w[:, 0, 3] = torch.arange(F) * 0.1
    return Scene4D(rgb=torch.rand(F, H, W, 3, generator=g), xyz=torch.rand(F, H, W, 3, generator=g), K=K,
                   cam_to_world=c2w, depth=torch.rand(F, H, W, generator=g) + 1, confidence=torch.rand(F, H, W, generator=g),
                   metadata={"prompt": "p", "seed": 3})


def test_scene_roundtrip_without_pickle(tmp_path):
    s = _scene()
    s.save(tmp_path / "s.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:  # plain safetensors, JSON metadata
        assert json.loads(f.metadata()["fourd"])["format"] == "fourd.scene4d"
    t = Scene4D.load(tmp_path / "s.safetensors")
    assert torch.allclose(t.rgb, s.rgb, atol=0.5 / 255 + 1e-6)
    assert torch.allclose(t.xyz, s.xyz, atol=1e-3)
    assert torch.equal(t.depth, s.depth) and torch.equal(t.K, s.K) and torch.equal(t.cam_to_world, s.cam_to_world)
    assert t.metadata["prompt"] == "p"


def test_scene_validation():
    s = _scene()
    with pytest.raises(InputError, match="depth"):
        Scene4D(rgb=s.rgb, xyz=s.xyz, depth=torch.rand(2, 8, 12))
    bad = s.xyz.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        Scene4D(rgb=s.rgb, xyz=bad)


def test_scene_points_unproject():
    s = _scene()
    pts = s.points(1)
    i, j = 5, 7
    d = s.depth[1, i, j]
    x_cam = torch.tensor([(j - s.K[1, 0, 2]) / s.K[1, 0, 0] * d, (i - s.K[1, 1, 2]) / s.K[1, 1, 1] * d, d])
    assert torch.allclose(pts[i, j], x_cam + s.cam_to_world[1, :3, 3], atol=1e-5)


def test_export_writes_everything(tmp_path):
    from fourd_core.io.export import export_scene

    written = export_scene(_scene(), tmp_path / "out")
    out = tmp_path / "out"
    for name in ("rgb.mp4", "xyz.mp4", "scene.safetensors", "cameras.json", "transforms.json", "depth.npy",
                 "pointclouds/frame_00000.ply", "pointclouds/frame_00002.glb", "depth/depth_00001.png", "images/frame_00000.png"):
        assert (out / name).is_file(), name
    assert np.load(out / "depth.npy", allow_pickle=False).shape == (3, 8, 12)
    assert len(written["glb"]) == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_export_failure_leaves_no_partial_output(tmp_path, monkeypatch):
    from fourd_core.io import export as export_mod

    out = tmp_path / "out"
    out.mkdir()
    write_text_atomic(out / "keep.txt", "user file")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    from fourd_core.io.formats import pointclouds

    monkeypatch.setattr(pointclouds, "write_glb", boom)
    with pytest.raises(RuntimeError):
        export_mod.export_scene(_scene(), out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_export_without_cameras_is_refused(tmp_path):
    from fourd_core.io.export import ExportOptions, export_scene

    s = _scene()
    bare = Scene4D(rgb=s.rgb, xyz=s.xyz)
    with pytest.raises(InputError, match="fit_cameras"):
        export_scene(bare, tmp_path)
    w = export_scene(bare, tmp_path, ExportOptions.with_formats(cameras=False, depth=False, ply=False, glb=False))
    assert set(w) == {"video", "scene", "images"}


@pytest.fixture
def open3d_unusable(monkeypatch):
    """``import open3d`` fails (as without libusb); the per-process caches start and end empty."""
    import sys

    from fourd_core.io import pointcloud

    monkeypatch.setitem(sys.modules, "open3d", None)  # import raises ImportError
    pointcloud.open3d_status.cache_clear(), pointcloud.warn_if_open3d_unusable.cache_clear()
    yield
    pointcloud.open3d_status.cache_clear(), pointcloud.warn_if_open3d_unusable.cache_clear()


def test_open3d_note_is_shown_once_per_process(tmp_path, open3d_unusable):
    import warnings

    from fourd_core.io.export import ExportOptions, export_scene

    opts = ExportOptions.with_formats(videos=False, voxel_size=0.1, outlier_neighbors=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # no deduplication by the warnings module: count every emission
        opts.check()
        for k in range(2):  # two scenes of three frames, ply and glb: check + 3 clean-ups each
            export_scene(_scene(), tmp_path / f"out{k}", opts)
        clean_points(torch.rand(50, 3), torch.rand(50, 3), voxel_size=0.1)
    notes = [w for w in caught if "open3d" in str(w.message)]
    assert len(notes) == 1, [str(w.message) for w in caught]
    assert "libusb-1.0-0" in str(notes[0].message) and "skipped" in str(notes[0].message)
    pts, _ = read_ply(tmp_path / "out1" / "pointclouds" / "frame_00002.ply")
    assert len(pts) == 8 * 12  # the clean-up was skipped, not failed
