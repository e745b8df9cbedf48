"""Image-quality metrics on HU images (DESIGN §2): PSNR and SSIM from scikit-image with
data_range = gt.max() − gt.min(), and RMSE in HU."""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _as_2d(a: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"metrics expect one 2-D image, got shape {a.shape}")
    return a


def psnr(image: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """10 log10(range² / MSE) with range = gt.max() − gt.min()."""
    g, x = _as_2d(gt), _as_2d(image)
    return float(peak_signal_noise_ratio(g, x, data_range=float(g.max() - g.min())))


def ssim(image: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """Structural similarity (scikit-image defaults, 7×7 window) with the same data range."""
    g, x = _as_2d(gt), _as_2d(image)
    return float(structural_similarity(g, x, data_range=float(g.max() - g.min())))


def rmse(image: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """sqrt(mean((image − gt)²)), in the images' units (HU for HU images)."""
    g, x = _as_2d(gt), _as_2d(image)
    return float(np.sqrt(np.mean((x - g) ** 2)))


def evaluate(image_hu, gt_hu) -> dict[str, float]:
    """All three metrics of one HU image against its ground truth."""
    return {"psnr": psnr(image_hu, gt_hu), "ssim": ssim(image_hu, gt_hu),
            "rmse_hu": rmse(image_hu, gt_hu)}
