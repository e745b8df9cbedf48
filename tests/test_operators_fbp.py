"""FBP: μ amplitude for both geometries and pixel sizes, PSNR on a phantom with 360 views,
filters, view weights, batching and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _shapes import MU_WATER, disk_phantom, ellipse_phantom, psnr

from ctflow.operators import (
    FILTERS,
    FanBeam2D,
    GaussianBlur,
    OperatorInputError,
    ParallelBeam2D,
    fbp,
)
from ctflow.operators.fbp import angle_weights

pytestmark = pytest.mark.usefixtures("private_cache")


def _op(kind, n, views, pixel=1.0):
    if kind == "parallel":
        return ParallelBeam2D(n, views, pixel_size_mm=pixel, backend="astra-cpu")
    return FanBeam2D(n, views, pixel_size_mm=pixel, backend="astra-cpu")


@pytest.mark.parametrize("kind", ["parallel", "fan"])
def test_fbp_psnr_360_views(kind):
    x = ellipse_phantom(128)
    op = _op(kind, 128, 360)
    rec = fbp(op(x), op)
    assert rec.shape == x.shape and rec.dtype == torch.float32
    assert psnr(rec, x) > 28.0


@pytest.mark.parametrize("pixel", [1.0, 0.4])
@pytest.mark.parametrize("kind", ["parallel", "fan"])
def test_fbp_amplitude_in_mu(kind, pixel):
    """A water disk reconstructs to μ_water (within 1 %) for every filter, whatever the
    pixel size and the fan-beam magnification."""
    n = 64
    disk = disk_phantom(n, 0.7, MU_WATER)
    op = _op(kind, n, 120, pixel)
    y = op(disk)
    inner = slice(n // 2 - 10, n // 2 + 10)
    for name in FILTERS:
        rec = fbp(y, op, filter=name)
        mean = float(rec[0, 0, inner, inner].mean())
        assert abs(mean / MU_WATER - 1) < 0.01, (name, mean)
        outside = float(rec[0, 0, :4, :4].abs().mean())
        assert outside < 0.02 * MU_WATER, name


def test_filters_differ_and_smooth_noise():
    n = 64
    op = _op("parallel", n, 90)
    gen = torch.Generator().manual_seed(0)
    noise = 0.01 * torch.randn(1, 1, *op.out_shape, generator=gen)
    stds = {name: float(fbp(noise, op, filter=name).std()) for name in FILTERS}
    assert stds["ram-lak"] > stds["shepp-logan"] > stds["cosine"] > stds["hann"]
    assert stds["hamming"] < stds["shepp-logan"]


def test_angle_weights():
    n = 36
    assert np.allclose(angle_weights(np.linspace(0, np.pi, n, endpoint=False), np.pi), np.pi / n)
    assert np.allclose(angle_weights(np.linspace(0, 2 * np.pi, n, endpoint=False), 2 * np.pi),
                       2 * np.pi / n)
    limited = np.linspace(0, np.pi / 2, 10)
    w = angle_weights(limited, np.pi)
    assert np.isclose(w.sum(), np.pi / 2 + np.pi / 18)  # covered range + one gap
    irregular = np.array([0.0, 0.1, 0.3, 1.0, 2.0, 2.5])
    w = angle_weights(irregular[::-1], np.pi)  # order does not matter
    assert np.isclose(w.sum(), np.pi)


def test_fbp_irregular_views_and_batch():
    n = 64
    x = ellipse_phantom(n)
    angles = np.sort(np.random.default_rng(1).uniform(0, np.pi, 120))
    op = ParallelBeam2D(n, angles, backend="matrix")
    batch = torch.cat([x, 0.5 * x], 0).repeat(1, 2, 1, 1)
    rec = fbp(op(batch), op)
    assert rec.shape == (2, 2, n, n)
    assert torch.allclose(rec[1, 1], 0.5 * rec[0, 0], rtol=1e-4, atol=1e-6)
    assert psnr(rec[0:1, 0:1], x) > 22.0
    assert fbp(op(x.double()), op).dtype == torch.float64


def test_fbp_errors():
    op = _op("parallel", 32, 10)
    with pytest.raises(OperatorInputError, match="filter"):
        fbp(torch.zeros(1, 1, *op.out_shape), op, filter="butterworth")
    with pytest.raises(OperatorInputError, match="shape"):
        fbp(torch.zeros(1, 1, 11, op.out_shape[1]), op)
    with pytest.raises(OperatorInputError, match="CT operator"):
        fbp(torch.zeros(1, 1, 32, 32), GaussianBlur(32))
    with pytest.raises(OperatorInputError):
        fbp(torch.zeros(*op.out_shape), op)
