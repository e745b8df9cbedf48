"""Unit conversion and metric definitions."""

import numpy as np
import pytest
import torch

from ctflow.metrics import evaluate, psnr, rmse, ssim
from ctflow.units import MU_WATER_PER_MM, hu_to_mu, mu_to_hu


def test_hu_mu_round_trip_and_anchors():
    hu = np.array([-1000.0, 0.0, 1000.0, 1500.0])
    mu = hu_to_mu(hu)
    assert mu[0] == pytest.approx(0.0)
    assert mu[1] == pytest.approx(MU_WATER_PER_MM)
    assert mu[2] == pytest.approx(2 * MU_WATER_PER_MM)
    np.testing.assert_allclose(mu_to_hu(mu), hu, atol=1e-9)
    t = torch.tensor(hu)
    torch.testing.assert_close(mu_to_hu(hu_to_mu(t)), t)


def test_psnr_matches_definition():
    rng = np.random.default_rng(0)
    gt = rng.uniform(-1000, 1000, (32, 32))
    noisy = gt + rng.normal(0, 10, gt.shape)
    mse = np.mean((noisy - gt) ** 2)
    expected = 10 * np.log10((gt.max() - gt.min()) ** 2 / mse)
    assert psnr(noisy, gt) == pytest.approx(expected, rel=1e-9)
    assert rmse(noisy, gt) == pytest.approx(np.sqrt(mse), rel=1e-9)
    assert ssim(gt, gt) == pytest.approx(1.0)
    assert ssim(noisy, gt) < 0.999
    m = evaluate(torch.tensor(noisy)[None, None], gt)
    assert set(m) == {"psnr", "ssim", "rmse_hu"}


def test_metrics_reject_volumes():
    with pytest.raises(ValueError):
        psnr(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
