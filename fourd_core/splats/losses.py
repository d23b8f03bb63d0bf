"""Image losses and metrics of the 3DGS reference: L1, SSIM (11x11 Gaussian window, sigma 1.5), PSNR."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["photometric_loss", "psnr", "ssim"]


@functools.lru_cache(maxsize=8)
def _window(size: int, sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return (g / g.sum()).to(device=device, dtype=dtype)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of two images ``[H, W, C]`` in [0, 1].

    Gaussian-weighted local statistics with zero padding (``padding = window // 2``), C1 = 0.01^2,
    C2 = 0.03^2, averaged over pixels and channels, as the 3DGS reference's ``ssim``.
    """
    x = a.permute(2, 0, 1)[:, None]  # [C, 1, H, W]
    y = b.permute(2, 0, 1)[:, None]
    g = _window(window, sigma, str(a.device), a.dtype)
    pad = window // 2

    def blur(t):
        t = F.conv2d(t, g.view(1, 1, 1, -1), padding=(0, pad))
        return F.conv2d(t, g.view(1, 1, -1, 1), padding=(pad, 0))

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x * mu_x
    syy = blur(y * y) - mu_y * mu_y
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2))
    return m.mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (``-10 log10 MSE``)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()


def photometric_loss(render: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.2) -> torch.Tensor:
    """The 3DGS training loss ``(1 - lambda) L1 + lambda (1 - SSIM)``, lambda = 0.2 (Kerbl et al. 2023, Eq. 7)."""
    l1 = (render - target).abs().mean()
    if ssim_weight <= 0:
        return l1
    return (1 - ssim_weight) * l1 + ssim_weight * (1 - ssim(render, target))
