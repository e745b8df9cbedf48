"""Noise estimation from CT measurements (ctflow.noise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ctflow
from ctflow.noise import detector_mad_std, estimate_noise_std
from ctflow.operators import ParallelBeam2D
from ctflow.phantoms import phantom
from ctflow.units import hu_to_mu

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.asarray(hu_to_mu(phantom("chest", n, seed=seed)),
                                       dtype=np.float32))[None, None]


@pytest.mark.parametrize("views", [60, 30])
def test_known_sigma_is_recovered_within_ten_percent(views):
    """White noise of known σ: the range-residual estimate is within 10 % (here ≤ 1 %)."""
    op = ParallelBeam2D(image_size=64, views=views)
    y0 = op(_image(64, 3))
    for k, sigma in enumerate((0.002, 0.005, 0.02)):
        noise = torch.randn(y0.shape, generator=torch.Generator().manual_seed(k))
        est = estimate_noise_std(y0 + sigma * noise, op)
        assert est.method == "range residual"
        assert est.sigma == pytest.approx(sigma, rel=0.1)


def test_noiseless_data_read_as_noiseless_and_poisson_data_close():
    op = ParallelBeam2D(image_size=64, views=60)
    x = _image(64, 4)
    assert estimate_noise_std(op(x), op).sigma == 0.0
    y = ctflow.simulate(x, op, photons=1e5, seed=0)
    true = float((y - op(x)).std())
    assert estimate_noise_std(y, op).sigma == pytest.approx(true, rel=0.2)


def test_detector_differences_fallback():
    """Without an exact projector: the MAD of detector second differences, which holds the
    noise plus what the sinogram's own curvature leaks in (an upper bound)."""
    op = ParallelBeam2D(image_size=64, views=60, projection="cg")
    y0 = op(_image(64, 5))
    noise = torch.randn(y0.shape, generator=torch.Generator().manual_seed(0))
    est = estimate_noise_std(y0 + 0.05 * noise, op)
    assert est.method == "detector second differences"
    assert 0.05 <= est.sigma <= 1.15 * 0.05
    assert detector_mad_std(0.05 * noise).sigma == pytest.approx(0.05, rel=0.05)
