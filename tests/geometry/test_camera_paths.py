"""Camera paths (fourd_core.geometry.camera_paths): invariants and formulas."""

import pytest
import torch

from fourd_core.errors import InputError
from fourd_core.geometry.camera_paths import arc, dolly, look_at_center, orbit
from fourd_core.testing.synthetic_scene import look_at, rotation_angle_deg

EYE = torch.tensor([0.3, -0.2, -4.0])
CENTER = torch.tensor([0.1, 0.2, 1.0])
T0 = look_at(EYE, CENTER, torch.tensor([0.0, -1.0, 0.0]), roll=0.1).to(torch.float32)


def assert_rotations(T):
    R = T[:, :3, :3].double()
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-5, rtol=0)
    assert bool((torch.linalg.det(R) > 0).all())
    torch.testing.assert_close(T[:, 3], torch.tensor([0.0, 0, 0, 1], dtype=T.dtype).expand(T.shape[0], 4))


def looks_at(T, c, tol=1e-4):
    """The centre is on every camera's optical axis, in front."""
    Xc = torch.einsum("nba,nb->na", T[:, :3, :3].double(), c.double() - T[:, :3, 3].double())
    assert bool((Xc[:, 2] > 0).all())
    assert float(Xc[:, :2].norm(dim=-1).max()) < tol * float(Xc[:, 2].min())


def test_look_at_center_forms():
    d = float((CENTER - EYE).norm())
    torch.testing.assert_close(look_at_center(T0, d).float(), CENTER, atol=1e-5, rtol=0)
    torch.testing.assert_close(look_at_center(T0, CENTER), CENTER.double())
    depth = torch.full((6, 8), d)
    depth[0, 0] = float("nan")
    depth[1, 1] = -1.0
    torch.testing.assert_close(look_at_center(T0, depth).float(), CENTER, atol=1e-5, rtol=0)
    for bad in (0.0, -1.0, float("inf"), torch.zeros(4, 4), None, torch.zeros(2)):
        with pytest.raises(InputError):
            look_at_center(T0, bad)


def test_orbit_invariants():
    P = orbit(CENTER, T0, degrees=90.0, steps=7)
    assert P.shape == (7, 4, 4) and P.dtype == torch.float32
    assert torch.equal(P[0], T0)
    assert_rotations(P)
    looks_at(P, CENTER)
    r = (P[:, :3, 3] - CENTER).norm(dim=-1)
    torch.testing.assert_close(r, r[0].expand(7), atol=1e-5, rtol=0)
    # constant step of 15 deg between consecutive cameras, 90 deg in total
    steps = rotation_angle_deg(P[1:, :3, :3], P[:-1, :3, :3])
    torch.testing.assert_close(steps, torch.full((6,), 15.0, dtype=torch.float64), atol=1e-3, rtol=0)
    assert float(rotation_angle_deg(P[-1, :3, :3], P[0, :3, :3])) == pytest.approx(90.0, abs=1e-3)
    # about the camera's y axis the camera height along y stays the same
    y0 = T0[:3, 1]
    torch.testing.assert_close((P[:, :3, 3] - CENTER) @ y0, ((T0[:3, 3] - CENTER) @ y0).expand(7), atol=1e-5, rtol=0)


def test_full_orbit_closes_and_right_hand_rule():
    P = orbit(CENTER, T0.double(), degrees=360.0, steps=5)
    assert P.dtype == torch.float64
    torch.testing.assert_close(P[-1], P[0], atol=1e-9, rtol=0)
    # +90 deg about world z (right-hand rule) maps the offset (1, 0, 0) to (0, 1, 0)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, 3] = torch.tensor([1.0, 0, 0], dtype=torch.float64)
    Q = orbit(torch.zeros(3), T, degrees=90.0, steps=2, axis=torch.tensor([0.0, 0, 1]))
    torch.testing.assert_close(Q[1, :3, 3], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_arc_is_eased_and_keeps_looking_at_the_centre():
    P = arc(CENTER, T0, degrees=40.0, steps=9, elevation_degrees=-10.0)
    assert torch.equal(P[0], T0)
    assert_rotations(P)
    looks_at(P, CENTER)
    steps = rotation_angle_deg(P[1:, :3, :3], P[:-1, :3, :3])
    assert float(steps[0]) < float(steps[3]) and float(steps[-1]) < float(steps[4])  # eased in and out
    # azimuth only: the middle pose is exactly half of the sweep
    A = arc(CENTER, T0, degrees=40.0, steps=9)
    assert float(rotation_angle_deg(A[4, :3, :3], T0[:3, :3])) == pytest.approx(20.0, abs=1e-3)
    assert float(rotation_angle_deg(A[-1, :3, :3], T0[:3, :3])) == pytest.approx(40.0, abs=1e-3)
    # negative elevation raises the camera (OpenCV y points down)
    E = arc(CENTER, T0, degrees=0.0, steps=3, elevation_degrees=-20.0)
    y0 = T0[:3, 1]
    assert float((E[-1, :3, 3] - T0[:3, 3]) @ y0) < 0


def test_dolly():
    P = dolly(T0, distance=1.5, steps=4)
    assert torch.equal(P[0], T0)
    for k in range(4):
        torch.testing.assert_close(P[k, :3, :3], T0[:3, :3])
        torch.testing.assert_close(P[k, :3, 3], T0[:3, 3] + 0.5 * k * T0[:3, 2], atol=1e-6, rtol=0)


def test_single_step_and_bad_inputs():
    assert torch.equal(orbit(2.0, T0, 30, 1)[0], T0)
    assert torch.equal(dolly(T0, 1.0, 1)[0], T0)
    with pytest.raises(InputError):
        orbit(CENTER, T0, 30, 0)
    with pytest.raises(InputError):
        orbit(CENTER, T0, 30, 2.5)
    with pytest.raises(InputError):
        orbit(CENTER, T0, 30, 3, axis="w")
    with pytest.raises(InputError):
        orbit(CENTER, T0, 30, 3, axis=torch.zeros(3))
    with pytest.raises(InputError):
        orbit(CENTER, torch.eye(3), 30, 3)
    bad = T0.clone()
    bad[:3, :3] *= 2
    with pytest.raises(InputError):
        arc(CENTER, bad, 30, 3)
    with pytest.raises(InputError):
        dolly(T0, float("nan"), 3)
