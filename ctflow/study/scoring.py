"""Scores of one reconstruction: PSNR, SSIM and RMSE in HU (``ctflow.metrics``), over the
whole image and optionally over a region.

Region (``metrics.region_hu_window = [lo, hi]`` or ``metrics.region_mask``): the pixels
whose ground truth lies in [lo, hi] HU, or the mask's True pixels.  In the region:
RMSE = √mean((x − g)²) over its pixels; PSNR = 10·log10(R² / MSE) over its pixels with
R = hi − lo for a window, else the ground truth's max − min over the region; SSIM = the mean
of scikit-image's SSIM map (computed on the whole image with the whole image's data range,
as for the global SSIM) over the region's pixels.  The fields are ``psnr_region``,
``ssim_region``, ``rmse_hu_region`` and ``region_pixels``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..metrics import evaluate


def region_of(gt_hu: np.ndarray, window: Sequence[float] | None,
              mask: np.ndarray | None) -> np.ndarray | None:
    """The boolean region of a ground truth (None when no region is set)."""
    if mask is not None:
        return np.asarray(mask, dtype=bool)
    if window is not None:
        return (gt_hu >= window[0]) & (gt_hu <= window[1])
    return None


def region_scores(image_hu: np.ndarray, gt_hu: np.ndarray, region: np.ndarray,
                  data_range: float | None) -> dict[str, float]:
    """PSNR, SSIM and RMSE over the region (see the module docstring)."""
    from skimage.metrics import structural_similarity

    count = int(region.sum())
    if count == 0:
        return {"psnr_region": math.nan, "ssim_region": math.nan,
                "rmse_hu_region": math.nan, "region_pixels": 0}
    diff = (image_hu - gt_hu)[region]
    mse = float(np.mean(diff ** 2))
    rng = data_range if data_range is not None else float(gt_hu[region].max()
                                                          - gt_hu[region].min())
    psnr = math.inf if mse == 0 else (10.0 * math.log10(rng ** 2 / mse) if rng > 0
                                      else math.nan)
    full = float(gt_hu.max() - gt_hu.min())
    _, smap = structural_similarity(gt_hu, image_hu, data_range=full, full=True)
    return {"psnr_region": psnr, "ssim_region": float(smap[region].mean()),
            "rmse_hu_region": math.sqrt(mse), "region_pixels": count}


def score(image_hu: np.ndarray, gt_hu: np.ndarray, names: Sequence[str],
          window: Sequence[float] | None = None,
          mask: np.ndarray | None = None) -> dict[str, float]:
    """The chosen metrics over the whole image, plus their region versions if a region is
    set (window in HU or a mask)."""
    whole = evaluate(image_hu, gt_hu)
    out: dict[str, float] = {k: float(whole[k]) for k in names}
    region = region_of(gt_hu, window, mask)
    if region is not None:
        rng = None if window is None else float(window[1] - window[0])
        scores = region_scores(image_hu, gt_hu, region, rng)
        out.update({k: v for k, v in scores.items()
                    if k == "region_pixels" or k.removesuffix("_region") in names})
    return out
