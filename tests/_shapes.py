"""Tiny analytic test phantoms in μ units (1/mm), shared by the operator and solver tests."""

from __future__ import annotations

import numpy as np
import torch

MU_WATER = 0.0192  # 1/mm, as ctflow.units

# (centre x, centre y, semi-axis a, semi-axis b, rotation deg, μ added), in units of the
# half field of view; a head-like phantom: water body, skull rim, soft-tissue inserts.
ELLIPSES = (
    (0.0, 0.0, 0.70, 0.90, 0.0, 1.8 * MU_WATER),  # "skull" (bone)
    (0.0, 0.0, 0.64, 0.84, 0.0, -0.8 * MU_WATER),  # brain/water inside
    (0.22, 0.05, 0.11, 0.31, -18.0, -0.5 * MU_WATER),  # low-density inserts
    (-0.22, 0.05, 0.16, 0.41, 18.0, -0.5 * MU_WATER),
    (0.0, 0.35, 0.21, 0.25, 0.0, 0.3 * MU_WATER),
    (0.0, -0.3, 0.06, 0.06, 0.0, 0.6 * MU_WATER),
    (0.3, -0.5, 0.08, 0.05, 30.0, 0.4 * MU_WATER),
)


def ellipse_phantom(n: int, supersample: int = 4) -> torch.Tensor:
    """(1, 1, n, n) float32 μ image (pixel size 1 mm, any scale works: μ is per mm),
    area-averaged over supersample² points per pixel.  Row 0 is the top (y up)."""
    m = n * supersample
    c = (np.arange(m) + 0.5) / m * 2 - 1  # pixel-centre coordinates in [-1, 1]
    x, y = np.meshgrid(c, -c)
    img = np.zeros((m, m))
    for cx, cy, a, b, deg, mu in ELLIPSES:
        t = np.deg2rad(deg)
        xr = (x - cx) * np.cos(t) + (y - cy) * np.sin(t)
        yr = -(x - cx) * np.sin(t) + (y - cy) * np.cos(t)
        img[(xr / a) ** 2 + (yr / b) ** 2 <= 1.0] += mu
    img = img.reshape(n, supersample, n, supersample).mean(axis=(1, 3))
    return torch.from_numpy(img).float()[None, None]


def disk_phantom(n: int, radius_frac: float = 0.6, mu: float = MU_WATER,
                 supersample: int = 4) -> torch.Tensor:
    """A uniform disk of attenuation mu, radius = radius_frac · n/2 pixels."""
    m = n * supersample
    c = (np.arange(m) + 0.5) / m * 2 - 1
    x, y = np.meshgrid(c, c)
    img = (x**2 + y**2 <= radius_frac**2).astype(np.float64) * mu
    img = img.reshape(n, supersample, n, supersample).mean(axis=(1, 3))
    return torch.from_numpy(img).float()[None, None]


def psnr(image: torch.Tensor, gt: torch.Tensor) -> float:
    """PSNR with data_range = gt.max() − gt.min() (DESIGN §2)."""
    rng = float(gt.max() - gt.min())
    mse = float(((image.double() - gt.double()) ** 2).mean())
    return 10 * np.log10(rng**2 / mse)

