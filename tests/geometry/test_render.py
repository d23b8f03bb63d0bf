"""Point rendering with a z-buffer (fourd_core.geometry.render)."""

import pytest
import torch

from fourd_core.errors import InputError
from fourd_core.geometry.render import project_points, render_points
from fourd_core.testing.synthetic_scene import make_synthetic_scene

K = torch.tensor([[100.0, 0, 31.5], [0, 100.0, 23.5], [0, 0, 1]])
I4 = torch.eye(4)


def test_projection_formula():
    pts = torch.tensor([[0.0, 0, 2], [0.2, -0.1, 4], [1.0, 1.0, -1.0]])
    uv, z = project_points(pts, K, I4)
    torch.testing.assert_close(uv[0], torch.tensor([31.5, 23.5]))
    torch.testing.assert_close(uv[1], torch.tensor([31.5 + 100 * 0.05, 23.5 - 100 * 0.025]))
    torch.testing.assert_close(z, torch.tensor([2.0, 4.0, -1.0]))
    # a camera moved by +1 in x sees the point shifted by -f/z in u
    T = I4.clone()
    T[0, 3] = 1.0
    uv2, _ = project_points(pts[:1], K, T)
    torch.testing.assert_close(uv2[0], torch.tensor([31.5 - 50.0, 23.5]))


def test_pixel_centres_and_colours():
    # points exactly on pixel centres (u = column, v = row) land there with their colours
    z = torch.tensor([2.0, 3.0])
    rows, cols = torch.tensor([4, 10]), torch.tensor([7, 60])
    pts = torch.stack([(cols - 31.5) / 100 * z, (rows - 23.5) / 100 * z, z], -1)
    colors = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    img, valid, depth = render_points(pts, colors, K, I4, 48, 64)
    assert img.shape == (48, 64, 3) and valid.shape == depth.shape == (48, 64)
    assert img.dtype == torch.float32 and valid.dtype == torch.bool
    assert int(valid.sum()) == 2
    for k in range(2):
        assert bool(valid[rows[k], cols[k]])
        torch.testing.assert_close(img[rows[k], cols[k]], colors[k])
        assert float(depth[rows[k], cols[k]]) == pytest.approx(float(z[k]))
    assert float(img[~valid].abs().max()) == 0.0 and float(depth[~valid].abs().max()) == 0.0


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_z_buffer_keeps_the_nearest_point(order):
    near = torch.tensor([0.0, 0.0, 1.0])
    far = torch.tensor([0.0, 0.0, 5.0])
    pts = torch.stack([near, far])[list(order)]
    cols = torch.tensor([[0.0, 1, 0], [1.0, 0, 1]])[list(order)]  # near is green, far is magenta
    img, valid, depth = render_points(pts, cols, K, I4, 48, 64)
    assert int(valid.sum()) == 1
    green = torch.tensor([0.0, 1, 0])
    torch.testing.assert_close(img[24, 32], green)  # (u, v) = (31.5, 23.5) rounds to column 32, row 24
    assert float(depth[24, 32]) == pytest.approx(1.0)


def test_points_behind_the_camera_are_dropped():
    pts = torch.tensor([[0.0, 0, -2.0], [0.1, 0.1, 0.0]])
    img, valid, depth = render_points(pts, torch.ones(2, 3), K, I4, 48, 64)
    assert not bool(valid.any())


def test_point_size_splats_a_square_and_background():
    pts = torch.tensor([[0.0, 0.0, 2.0]])  # lands on (u, v) = (31.5, 23.5) -> pixel (24, 32)
    img, valid, _ = render_points(pts, torch.tensor([[0.2, 0.4, 0.6]]), K, I4, 48, 64, point_size=3,
                                  background=(1.0, 1.0, 1.0))
    assert int(valid.sum()) == 9
    assert bool(valid[23:26, 31:34].all())
    torch.testing.assert_close(img[23:26, 31:34], torch.tensor([0.2, 0.4, 0.6]).expand(3, 3, 3))
    assert float((img[~valid] - 1.0).abs().max()) == 0.0
    # squares are clipped at the border
    edge = torch.tensor([[(0 - 31.5) / 100 * 2, (0 - 23.5) / 100 * 2, 2.0]])
    _, valid2, _ = render_points(edge, torch.ones(1, 3), K, I4, 48, 64, point_size=3)
    assert int(valid2.sum()) == 4


def test_rerender_of_a_frame_in_its_own_camera_reproduces_it():
    sc = make_synthetic_scene(1, 36, 54, seed=3)
    colors = torch.rand(36, 54, 3, generator=torch.Generator().manual_seed(0))
    img, valid, depth = render_points(sc.clean_points[0], colors, sc.K[0], sc.cam_to_world[0], 36, 54)
    assert bool(valid.all())
    torch.testing.assert_close(img, colors)
    torch.testing.assert_close(depth, sc.depth[0], rtol=1e-5, atol=1e-5)


def test_uint8_colours_and_nan_points():
    pts = torch.tensor([[0.0, 0, 2.0], [float("nan"), 0, 2.0]])
    cols = torch.tensor([[255, 0, 0], [0, 255, 0]], dtype=torch.uint8)
    img, valid, _ = render_points(pts, cols, K, I4, 48, 64)
    assert int(valid.sum()) == 1
    torch.testing.assert_close(img[24, 32], torch.tensor([1.0, 0, 0]))


def test_bad_inputs():
    pts = torch.zeros(4, 3)
    with pytest.raises(InputError):
        render_points(pts, torch.zeros(3, 3), K, I4, 10, 10)
    with pytest.raises(InputError):
        render_points(pts, torch.zeros(4, 3), K, I4, 0, 10)
    with pytest.raises(InputError):
        render_points(pts, torch.zeros(4, 3), K, I4, 10, 10, point_size=0)
    with pytest.raises(InputError):
        render_points(pts, torch.zeros(4, 3), torch.eye(4), I4, 10, 10)
    with pytest.raises(InputError):
        render_points(pts, torch.zeros(4, 3), K, torch.full((4, 4), float("nan")), 10, 10)
    with pytest.raises(InputError):
        render_points(pts, torch.zeros(4, 3), K, I4, 10, 10, background=(1.0, 2.0))
    with pytest.raises(InputError):
        render_points(torch.zeros(4, 2), torch.zeros(4, 2), K, I4, 10, 10)
