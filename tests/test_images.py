"""Input image handling: formats, modes, sizes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fourd_core.errors import InputError
from fourd_core.io.images import load_image, max_area_size, prepare_image, to_rgb


def test_rgba_is_composited_over_white(tmp_path):
    a = np.zeros((40, 60, 4), np.uint8)
    a[..., 0] = 200
    a[..., 3] = 64  # alpha 0.25
    Image.fromarray(a, "RGBA").save(tmp_path / "x.png")
    img = load_image(tmp_path / "x.png")
    alpha = 64 / 255
    assert img.shape == (40, 60, 3)
    assert torch.allclose(img[0, 0], torch.tensor([200 / 255 * alpha + (1 - alpha), 1 - alpha, 1 - alpha]), atol=1e-6)


def test_grayscale_and_16bit(tmp_path):
    g = (np.arange(40 * 60).reshape(40, 60) % 256).astype(np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert torch.equal(img[..., 0], img[..., 1]) and torch.equal(img[..., 1], img[..., 2])
    assert img[0, 5, 0] == pytest.approx(5 / 255)
    d = (np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)
    Image.fromarray(d).save(tmp_path / "d16.png")
    img16 = load_image(tmp_path / "d16.png")
    assert img16[0, 10, 0].item() == pytest.approx(270 / 65535, abs=1e-6)  # scaled by range, not clipped


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (40, 40))
    im.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    im.info["transparency"] = 0
    im.save(tmp_path / "p.png", transparency=0)
    img = load_image(tmp_path / "p.png")
    assert torch.allclose(img[0, 0], torch.ones(3))  # fully transparent -> white


def test_unreadable_and_missing(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="Could not read"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("hw,expected", [((480, 720), (480, 720)), ((1080, 1920), (432, 784)), ((512, 512), (576, 576)),
                                         ((1920, 1080), (784, 432))])
def test_official_max_area_rule(hw, expected):
    assert max_area_size(*hw) == expected  # table of 4dnex.md sec. 1.3


def test_crop_mode_covers_and_centres():
    img = torch.zeros(100, 300, 3)
    img[:, 100:200] = 1.0  # a white central third
    out = prepare_image(img, 32, 48)
    assert out.shape == (32, 48, 3)
    # scale = max(32/100, 48/300) = 0.32 -> 32x96, crop the central 48 columns: all from the white band
    assert out[:, 10:38].min() > 0.95 and out[:, :6].max() < 0.05 and out[:, -6:].max() < 0.05


def test_batched_and_channel_variants():
    x = torch.rand(1, 64, 96, 4)
    assert prepare_image(x, 32, 48).shape == (32, 48, 3)
    with pytest.raises(InputError, match="one image"):
        prepare_image(torch.rand(2, 64, 96, 3), 32, 48)
    assert to_rgb(torch.rand(10, 12)).shape == (10, 12, 3)
    with pytest.raises(InputError, match="NaN"):
        to_rgb(torch.full((10, 12, 3), float("nan")))


def test_too_small_or_bad_size():
    with pytest.raises(InputError, match="at least"):
        prepare_image(torch.rand(20, 30, 3), 32, 48)
    with pytest.raises(InputError, match="multiples of 16"):
        prepare_image(torch.rand(64, 96, 3), 30, 48)
