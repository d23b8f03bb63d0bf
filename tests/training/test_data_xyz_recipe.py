"""The 4DNeX XYZ recipe against an independent float64 computation, for every annotation format.

Fixtures are built here from a known scene (a tilted plane seen by known moving cameras; a "box
corner" of two planes for the static format): depth maps come from ray-plane intersection, poses
from rotation angles (written as quaternions), so the world points are known analytically. The
reference recipe below is written from the description (first-camera axes, per-frame 2-98 %
linear percentiles by sorting, per-frame box centre, one global scale, nearest resize by integer
index arithmetic, centre crop, ping-pong), with the sizes' known answers hard-coded.
"""

from __future__ import annotations

import csv
import json
import math

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from fourd_core.errors import InputError
from fourd_core.scene import Scene4D
from fourd_core.training.data.clips import FourDNeXDataConfig
from fourd_core.training.data.fourdnex10m import (FourDNeX10MSource, read_dynamic3_npz, read_monst3r_clip,
                                                  read_static_npz)
from fourd_core.training.data.rgbd import RGBDSource, SceneSource, read_rgbd_folder, read_scene_file

HP, WP = 10, 16          # depth / point-map resolution
HR, WR = 20, 32          # raw RGB resolution
CFG = FourDNeXDataConfig(height=32, width=48, num_frames=5)
# known answers: 20x32 covers 32x48 as 32 x int(32 * 32 / 20) = 32 x 51; crop left = round(1.5) = 2 (not floor)
NH, NW, TOP, LEFT = 32, 51, 0, 2
TOL = 1e-5


# ----------------------------------------------------------------------------------------------
# Known scene
def rot(axis, deg):
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def cameras(t):
    out = []
    for i in range(t):
        m = np.eye(4)
        m[:3, :3] = rot("z", 10) @ rot("y", 4.0 * i) @ rot("x", 2.0 * i)
        m[:3, 3] = [1.0 + 0.15 * i, 2.0 - 0.05 * i, 3.0 + 0.1 * i]
        out.append(m)
    return np.stack(out)


def quat_wxyz(R):
    """Quaternion (w, x, y, z) of a rotation matrix (Shepperd's method, w > 0 branch suffices here)."""
    w = math.sqrt(1 + R[0, 0] + R[1, 1] + R[2, 2]) / 2
    return np.array([w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)])


PLANE_N = np.array([0.2, -0.1, -1.0]) / np.linalg.norm([0.2, -0.1, -1.0])


def plane_depth(c2w, fx, h=HP, w=WP):
    """z-depth of the world plane n.X = n.P0 along the official rays ((u - W//2)/fx, (v - H//2)/fx, 1)."""
    p0 = c2w[0, :3, :3] @ np.array([0.0, 0.0, 4.0]) + c2w[0, :3, 3]
    c = PLANE_N @ p0
    u, v = np.meshgrid(np.arange(w, dtype=float), np.arange(h, dtype=float))
    rays = np.stack([(u - w // 2) / fx, (v - h // 2) / fx, np.ones_like(u)], -1)
    out = []
    for m in c2w:
        dirs = rays @ m[:3, :3].T
        out.append((c - PLANE_N @ m[:3, 3]) / (dirs @ PLANE_N))
    return np.stack(out)


def world_points(depth, c2w, fx, fy, cx, cy):
    h, w = depth.shape[1:]
    u, v = np.meshgrid(np.arange(w, dtype=float), np.arange(h, dtype=float))
    pts = []
    for d, m in zip(depth, c2w):
        cam = np.stack([d * (u - cx) / fx, d * (v - cy) / fy, d], -1)
        pts.append(cam @ m[:3, :3].T + m[:3, 3])
    return np.stack(pts)


def rgb_frames(n):
    y, x = np.meshgrid(np.linspace(0, 1, HR), np.linspace(0, 1, WR), indexing="ij")
    f = [np.stack([(x + 0.07 * t) % 1.0, y, 0.5 + 0.4 * np.sin(3 * x + t)], -1) for t in range(n)]
    return (np.stack(f) * 255 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Independent reference recipe
def _percentile(v, p):
    s = np.sort(v)
    k = p / 100 * (len(s) - 1)
    lo = int(math.floor(k))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (k - lo) * (s[hi] - s[lo])


def pingpong_index(t, n):
    return (list(range(t)) + list(range(t - 1, -1, -1)))[:n]


def ref_xyz(world, c2w, num_frames=5, p=2.0):
    R0, t0 = c2w[0, :3, :3], c2w[0, :3, 3]
    local = (world - t0) @ R0                                # R0^T (X - t0) for row vectors
    t, h, w, _ = local.shape
    flat = local.reshape(t, -1, 3).copy()
    for f in range(t):
        for a in range(3):
            flat[f, :, a] = np.minimum(np.maximum(flat[f, :, a], _percentile(flat[f, :, a], p)),
                                       _percentile(flat[f, :, a], 100 - p))
    mn, mx = flat.min(1), flat.max(1)
    scale = ((mx - mn) / 2).max()
    x = ((flat - ((mn + mx) / 2)[:, None]) / scale).reshape(t, h, w, 3)
    rows = [(i * h) // NH for i in range(NH)]
    cols = [(j * w) // NW for j in range(NW)]
    x = x[:, rows][:, :, cols][:, TOP:TOP + 32, LEFT:LEFT + 48]
    return x[pingpong_index(t, num_frames)], scale


def ref_rgb(frames_u8, num_frames=5):
    out = []
    for f in frames_u8.astype(np.float32) / 255:
        ch = [np.asarray(Image.fromarray(np.ascontiguousarray(f[..., c]), "F").resize((NW, NH), Image.BILINEAR))
              for c in range(3)]
        out.append(np.stack(ch, -1)[TOP:TOP + 32, LEFT:LEFT + 48])
    out = np.stack(out)
    return out[pingpong_index(len(out), num_frames)]


def _check(clip, world, c2w, frames_u8=None, rgb_tol=1e-5):
    xyz, scale = ref_xyz(world, c2w)
    assert clip.xyz.shape == (5, 32, 48, 3) and clip.rgb.shape == (5, 32, 48, 3)
    assert np.abs(clip.xyz.numpy() - xyz).max() < TOL
    assert clip.scale == pytest.approx(scale, rel=1e-6)   # general vs rigid inverse of float32 poses
    assert clip.xyz.abs().max() <= 1 + 1e-6
    if frames_u8 is not None:
        assert np.abs(clip.rgb.numpy() - ref_rgb(frames_u8)).max() < rgb_tol


def _write_frames(folder, frames_u8):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames_u8):
        imageio.imwrite(folder / f"{i:04d}.png", f)


# ----------------------------------------------------------------------------------------------
# MonST3R-style (dynamic_1/2)
def write_monst3r(anno, t, fx=18.0, start=0, scale_q=1.5):
    c2w = cameras(t)
    depth = plane_depth(c2w, fx)
    anno.mkdir(parents=True)
    with open(anno / "pred_traj.txt", "w") as f:
        for i, m in enumerate(c2w):
            q = quat_wxyz(m[:3, :3]) * scale_q     # not unit length: the reader normalises (as scipy)
            f.write(" ".join(f"{x:.17g}" for x in [i, *m[:3, 3], *q]) + "\n")
    K = np.array([[fx, 0, WP // 2 + 1.7], [0, 1.3 * fx, HP // 2 - 2.2], [0, 0, 1]])   # fy, cx, cy ignored
    np.savetxt(anno / "pred_intrinsics.txt", np.tile(K.reshape(1, 9), (t, 1)), fmt="%.17g")
    for i, d in enumerate(depth):
        np.save(anno / f"frame_{i:04d}.npy", d.astype(np.float32))
        imageio.imwrite(anno / f"dynamic_mask_{i}.png", np.zeros((HP, WP), np.uint8))
    return c2w, depth.astype(np.float32).astype(np.float64), K


def test_monst3r_official_and_full_unprojection(tmp_path):
    t = 7                                         # 7 frames read, 5 kept: the scale spans all 7
    c2w, depth, K = write_monst3r(tmp_path / "anno", t)
    raw = rgb_frames(12)
    _write_frames(tmp_path / "video", raw)
    clip = read_monst3r_clip(tmp_path / "anno", tmp_path / "video", clip_start=3, length=t, config=CFG,
                             caption="a plane", name="m")
    world = world_points(depth, c2w, K[0, 0], K[0, 0], WP // 2, HP // 2)   # the official rays
    # known answer: those points lie on the plane (the depth was made along the official rays)
    p0 = c2w[0, :3, :3] @ [0, 0, 4.0] + c2w[0, :3, 3]
    assert np.abs(world @ PLANE_N - PLANE_N @ p0).max() < 1e-5
    _check(clip, world, c2w, raw[3:3 + t])
    assert clip.prompt == "a plane POINTMAP_STYLE."
    # the frames after num_frames change the scale: with only 5 frames read it differs
    five = read_monst3r_clip(tmp_path / "anno", tmp_path / "video", clip_start=3, length=5, config=CFG)
    assert five.scale != pytest.approx(clip.scale, rel=1e-6)
    full = read_monst3r_clip(tmp_path / "anno", tmp_path / "video", clip_start=3, length=t,
                             config=FourDNeXDataConfig(height=32, width=48, num_frames=5, unprojection="full"))
    _check(full, world_points(depth, c2w, K[0, 0], K[1, 1], K[0, 2], K[1, 2]), c2w)


# ----------------------------------------------------------------------------------------------
# dynamic_3 npz
def test_dynamic3_npz_scalar_and_matrix_intrinsics(tmp_path):
    t, fx = 4, 21.0                                # 4 frames -> ping-pong [0, 1, 2, 3, 3]
    c2w = cameras(t)
    depth = plane_depth(c2w, fx)
    raw = rgb_frames(t)
    np.savez(tmp_path / "a.npz", images=raw, depths=depth, intrinsic=np.float64(fx), cam_c2w=c2w)
    K = np.array([[fx, 0, 3.0], [0, 99.0, 4.0], [0, 0, 1]])
    np.savez(tmp_path / "b.npz", images=raw.astype(np.float32) / 255, depths=depth, intrinsic=K, cam_c2w=c2w)
    world = world_points(depth, c2w, fx, fx, WP // 2, HP // 2)
    for fn in ("a.npz", "b.npz"):
        clip = read_dynamic3_npz(tmp_path / fn, config=CFG, caption="x")
        _check(clip, world, c2w, raw)
    assert read_dynamic3_npz(tmp_path / "a.npz", config=CFG).rgb[4].equal(
        read_dynamic3_npz(tmp_path / "a.npz", config=CFG).rgb[3])  # the turn of the ping-pong


# ----------------------------------------------------------------------------------------------
# static npz (pickled dict, read without running code)
def box_corner_points(t):
    """World points of a wall (top rows) and a floor (bottom rows), the same every frame (static)."""
    i, j = np.meshgrid(np.arange(HP, dtype=float), np.arange(WP, dtype=float), indexing="ij")
    x = (j - WP / 2) * 0.1
    wall = np.stack([x, (i - HP / 2) * 0.1, np.full_like(x, 5.0)], -1)
    floor = np.stack([x, np.full_like(x, 0.6), 5.0 - (i - HP / 2) * 0.2], -1)
    pts = np.where((i < HP / 2)[..., None], wall, floor)
    return np.stack([pts + 0.01 * k for k in range(t)])


def write_static(path, t, pickled=True):
    pts, poses = box_corner_points(t), cameras(t)
    if pickled:
        np.savez(path, data=np.array({"pts3d": pts.astype(np.float32), "poses": poses.astype(np.float32)},
                                     dtype=object))
    else:
        np.savez(path, pts3d=pts, poses=poses)
    return pts.astype(np.float32).astype(np.float64), poses.astype(np.float32).astype(np.float64)


def test_static_npz_pickled_dict_and_plain(tmp_path):
    raw = rgb_frames(10)
    _write_frames(tmp_path / "images_4", raw)
    pts, poses = write_static(tmp_path / "frame_0002-frame_0005.npz", 4)
    clip = read_static_npz(tmp_path / "frame_0002-frame_0005.npz", tmp_path / "images_4", clip_start=2, config=CFG)
    _check(clip, pts, poses, raw[2:6])
    pts, poses = write_static(tmp_path / "plain.npz", 4, pickled=False)
    _check(read_static_npz(tmp_path / "plain.npz", tmp_path / "images_4", clip_start=2, config=CFG), pts, poses)


# ----------------------------------------------------------------------------------------------
# The whole 4DNeX-10M tree with captions
def _csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "caption", "other"])
        w.writerows([[n, c, "x"] for n, c in rows])


def test_4dnex10m_tree_all_formats_and_captions(tmp_path):
    root = tmp_path / "data"
    c2w, depth, K = write_monst3r(root / "dynamic" / "dynamic_1" / "00012" / "00012_0003-0009", 7)
    raw = rgb_frames(12)
    (root / "raw" / "dynamic" / "dynamic_1").mkdir(parents=True)
    imageio.mimwrite(root / "raw" / "dynamic" / "dynamic_1" / "00012.mp4", raw, fps=24, macro_block_size=1)
    c3 = cameras(4)
    d3 = plane_depth(c3, 21.0)
    (root / "dynamic" / "dynamic_3" / "00034").mkdir(parents=True)
    np.savez(root / "dynamic" / "dynamic_3" / "00034" / "clip_0000-clip_0003.npz", images=rgb_frames(4), depths=d3,
             intrinsic=np.float64(21.0), cam_c2w=c3)
    (root / "static" / "static_1" / "00056").mkdir(parents=True)
    pts, poses = write_static(root / "static" / "static_1" / "00056" / "frame_0002-frame_0005.npz", 4)
    _write_frames(root / "raw" / "static" / "static_1" / "00056" / "images_4", rgb_frames(10))
    _csv(root / "caption" / "dynamic_1_with_caption_upload.csv", [(11, "wrong"), (12, "a tilted plane")])
    _csv(root / "caption" / "dynamic_3_with_caption_upload.csv", [(34, "a dynamic_3 clip")])
    _csv(root / "caption" / "static_1_with_caption_upload.csv", [(56, "a box corner")])
    src = FourDNeX10MSource(root, CFG)
    assert src.names() == ["dynamic_1-00012-0003-0009", "dynamic_3-00034-clip_0000-clip_0003",
                           "static_1-00056-frame_0002-frame_0005"]
    m, d, s = (src.read(i) for i in range(3))
    assert (m.caption, d.caption, s.caption) == ("a tilted plane", "a dynamic_3 clip", "a box corner")
    _check(m, world_points(depth, c2w, K[0, 0], K[0, 0], WP // 2, HP // 2), c2w)
    assert np.abs(m.rgb.numpy() - ref_rgb(raw[3:10])).mean() < 0.03          # through a lossy MP4
    _check(d, world_points(d3, c3, 21.0, 21.0, WP // 2, HP // 2), c3, rgb_frames(4))
    _check(s, pts, poses, rgb_frames(10)[2:6])
    # bad input: a missing caption row, a missing annotation file, a missing video
    _csv(root / "caption" / "static_1_with_caption_upload.csv", [(57, "another scene")])
    src = FourDNeX10MSource(root, CFG)
    with pytest.raises(InputError, match="static_1-00056-frame_0002-frame_0005: no caption for number 56"):
        src.read(2)
    assert FourDNeX10MSource(root, CFG, default_caption="").read(2).caption == ""
    (root / "dynamic" / "dynamic_1" / "00012" / "00012_0003-0009" / "pred_intrinsics.txt").unlink()
    with pytest.raises(InputError, match="dynamic_1-00012-0003-0009: Intrinsics file not found: .*pred_intrinsics"):
        src.read(0)
    (root / "raw" / "dynamic" / "dynamic_1" / "00012.mp4").unlink()
    with pytest.raises(InputError, match="video not found"):
        src.read(0)


def test_4dnex_bad_input(tmp_path):
    with pytest.raises(InputError, match="No 4DNeX-10M clips"):
        FourDNeX10MSource(tmp_path, CFG)
    write_monst3r(tmp_path / "anno", 2)
    _write_frames(tmp_path / "video", rgb_frames(4))
    with pytest.raises(InputError, match="has 2 frames; ping-pong padding reaches at most 4, but 5"):
        read_monst3r_clip(tmp_path / "anno", tmp_path / "video", clip_start=0, length=2, config=CFG, name="short")
    (tmp_path / "anno" / "frame_0001.npy").unlink()
    with pytest.raises(InputError, match="Depth map not found: .*frame_0001.npy"):
        read_monst3r_clip(tmp_path / "anno", tmp_path / "video", clip_start=0, length=2, config=CFG)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="corrupt"):
        read_dynamic3_npz(tmp_path / "bad.npz", config=CFG)
    np.savez(tmp_path / "nokey.npz", images=rgb_frames(4))
    with pytest.raises(InputError, match="has no depths, intrinsic, cam_c2w"):
        read_dynamic3_npz(tmp_path / "nokey.npz", config=CFG)
    with pytest.raises(InputError, match="multiple of 16"):
        FourDNeXDataConfig(height=40).validate()


# ----------------------------------------------------------------------------------------------
# Generic RGB-D and scene.safetensors
def test_generic_rgbd_full_pinhole_and_cameras_json(tmp_path):
    t, fx, fy, cx, cy = 6, 17.0, 19.0, 8.3, 6.6
    c2w = cameras(t)
    depth = plane_depth(c2w, fx) * 1.0
    raw = rgb_frames(t)
    s = tmp_path / "set" / "s1"
    _write_frames(s / "rgb", raw)
    np.save(s / "depth.npy", depth)
    np.save(s / "K.npy", np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]))
    np.save(s / "cam_to_world.npy", c2w)
    (s / "caption.txt").write_text("generic\n")
    clip = read_rgbd_folder(s, CFG)
    _check(clip, world_points(depth, c2w, fx, fy, cx, cy), c2w, raw)
    assert clip.caption == "generic"
    s2 = tmp_path / "set" / "s2"
    _write_frames(s2 / "rgb", raw)
    np.save(s2 / "depth.npy", depth)
    # cameras.json written for the RGB resolution (2x the depth maps'): K is rescaled to the depth's pixels
    Kr = np.array([[2 * fx, 0, 2 * cx + 0.5], [0, 2 * fy, 2 * cy + 0.5], [0, 0, 1]])
    (s2 / "cameras.json").write_text(json.dumps({"width": WR, "height": HR, "frames": [
        {"K": Kr.tolist(), "cam_to_world": m.tolist()} for m in c2w]}))
    src = RGBDSource(tmp_path / "set", CFG)
    assert src.names() == ["s1", "s2"]
    assert np.abs(src.read(1).xyz.numpy() - clip.xyz.numpy()).max() < TOL
    (s2 / "cameras.json").unlink()
    with pytest.raises(InputError, match="s2: No cameras in"):
        src.read(1)


def test_scene_file_with_and_without_cameras(tmp_path):
    t = 4
    c2w = cameras(t).astype(np.float32).astype(np.float64)
    fx, cx, cy = 30.0, 19.5, 11.5
    c = c2w[0]
    # a scene at the RGB resolution: plane depth along the full pinhole rays
    u, v = np.meshgrid(np.arange(WR, dtype=float), np.arange(HR, dtype=float))
    p0 = c[:3, :3] @ [0, 0, 4.0] + c[:3, 3]
    rays = np.stack([(u - cx) / fx, (v - cy) / fx, np.ones_like(u)], -1)
    depth = np.stack([(PLANE_N @ p0 - PLANE_N @ m[:3, 3]) / ((rays @ m[:3, :3].T) @ PLANE_N) for m in c2w])
    depth = depth.astype(np.float32).astype(np.float64)
    rgb = rgb_frames(t)
    K = np.tile(np.array([[fx, 0, cx], [0, fx, cy], [0, 0, 1]]), (t, 1, 1))
    xyz = torch.rand(t, HR, WR, 3, generator=torch.Generator().manual_seed(0))
    scene = Scene4D(rgb=torch.from_numpy(rgb).float() / 255, xyz=xyz, K=torch.from_numpy(K).float(),
                    cam_to_world=torch.from_numpy(c2w).float(), depth=torch.from_numpy(depth).float(),
                    metadata={"prompt": "a generated scene"})
    scene.save(tmp_path / "a" / "scene.safetensors")
    Scene4D(rgb=scene.rgb, xyz=xyz, metadata={}).save(tmp_path / "b" / "scene.safetensors")
    (tmp_path / "b" / "caption.txt").write_text("from the sidecar")
    src = SceneSource(tmp_path)
    assert src.names() == ["a", "b"]
    a = read_scene_file(tmp_path / "a" / "scene.safetensors", CFG)
    # 20x32 -> 32x51 nearest: the same known sizes; the points at the RGB resolution this time
    hp_wp = (HR, WR)
    assert hp_wp == depth.shape[1:]
    world = world_points(depth, c2w, fx, fx, cx, cy)
    xyz_ref, _ = ref_xyz(world, c2w)
    assert np.abs(a.xyz.numpy() - xyz_ref).max() < TOL and a.caption == "a generated scene"
    assert np.abs(a.rgb.numpy() - ref_rgb(rgb)).max() < 1e-5
    b = read_scene_file(tmp_path / "b" / "scene.safetensors", CFG)
    xyz_ref, _ = ref_xyz(xyz.double().numpy() * 2 - 1, np.tile(np.eye(4), (t, 1, 1)))
    assert np.abs(b.xyz.numpy() - xyz_ref).max() < TOL and b.caption == "from the sidecar"


def test_crop_offsets_and_cover_sizes_known_answers():
    from fourd_core.training.data.frames import center_crop_offsets, cover_size

    # torchvision's center_crop: int(round((size - crop) / 2)), Python's round half to even
    assert [center_crop_offsets(32, w, 32, 48)[1] for w in (48, 49, 50, 51, 52, 53)] == [0, 0, 1, 2, 2, 2]
    assert cover_size(20, 32, 32, 48) == (32, 51) and cover_size(1080, 1920, 480, 720) == (480, 853)
    assert cover_size(1920, 1080, 480, 720) == (1280, 720) and cover_size(480, 720, 480, 720) == (480, 720)
