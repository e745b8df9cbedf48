"""Sinogram simulation: noiseless data, Gaussian and Poisson noise statistics, seeds, volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctflow import simulate
from ctflow.errors import InputError
from ctflow.operators import Identity, Inpainting, LinearOperator
from ctflow.phantoms import phantom
from ctflow.simulate import (
    ZERO_COUNT_CLAMP,
    gaussian_std,
    noise_std,
    poisson_std,
    simulate_volume,
    slice_seeds,
)
from ctflow.units import hu_to_mu


class DenseOp(LinearOperator):
    """A small dense non-negative matrix (a stand-in projector: ray sums of pixels)."""

    def __init__(self, n: int = 8, rays: tuple[int, int] = (6, 10), seed: int = 0):
        super().__init__((n, n), rays)
        gen = torch.Generator().manual_seed(seed)
        self.m = torch.rand(rays[0] * rays[1], n * n, generator=gen) * (4.0 / n)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(x.shape[0], -1) @ self.m.T).reshape(x.shape[0], *self.out_shape)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y.reshape(y.shape[0], -1) @ self.m).reshape(y.shape[0], *self.in_shape)


def _mu(size: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(hu_to_mu(phantom("abdomen", size, seed)))[None, None]


def test_noiseless_equals_forward() -> None:
    op = DenseOp()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(simulate(x, op), op(x))
    assert torch.equal(simulate(x, op, noise=0.0), op(x))
    mask = torch.rand(16, 16, generator=torch.Generator().manual_seed(2)) > 0.5
    img = _mu(16)
    assert torch.equal(simulate(img, Inpainting(mask)), img * mask)


def test_gaussian_noise_std_and_seed() -> None:
    op = Identity(128)
    x = _mu(128)
    y = simulate(x, op, noise=0.05, seed=3)
    sigma = gaussian_std(op(x), 0.05)
    rms = float(x.double().pow(2).mean().sqrt())
    assert sigma == pytest.approx(0.05 * rms, rel=1e-12)
    n = (y - x).double()
    assert float(n.std()) == pytest.approx(sigma, rel=0.03)
    assert abs(float(n.mean())) < 0.05 * sigma
    assert noise_std(op(x), noise=0.05) == sigma
    assert torch.equal(y, simulate(x, op, noise=0.05, seed=3))
    other = simulate(x, op, noise=0.05, seed=4)
    assert not torch.equal(y, other)
    # independent draws: the difference of two seeds has std √2 σ
    assert float((y - other).double().std()) == pytest.approx(math.sqrt(2) * sigma, rel=0.03)


@pytest.mark.parametrize("level", [0.5, 2.0, 4.0])
def test_poisson_post_log_variance(level: float) -> None:
    """Var(−log(N/I0)) ≈ exp(y)/I0 for N ~ Poisson(I0 e^{−y}), and the mean is ≈ y."""
    photons = 1e4
    op = Identity(128)
    x = torch.full((1, 1, 128, 128), level)
    y = simulate(x, op, photons=photons, seed=5).double()
    expected = math.exp(level) / photons
    assert float(y.var()) == pytest.approx(expected, rel=0.06)
    assert abs(float(y.mean()) - level) < 5 * math.sqrt(expected / y.numel()) + expected
    assert poisson_std(op(x), photons) == pytest.approx(math.sqrt(expected), rel=1e-9)
    assert noise_std(op(x), photons=photons) == poisson_std(op(x), photons)


def test_poisson_seed_reproducible() -> None:
    op = DenseOp()
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = simulate(x, op, photons=1e3, seed=1)
    assert torch.equal(a, simulate(x, op, photons=1e3, seed=1))
    b = simulate(x, op, photons=1e3, seed=2)
    assert not torch.equal(a, b)
    assert a.dtype == torch.float32 and a.shape == (1, 1, 6, 10)
    assert float((a - op(x)).abs().mean()) > 0


def test_poisson_zero_counts_clamped() -> None:
    """With almost no photons most counts are 0: clamped to 0.5, so y = log(I0/0.5), finite."""
    photons = 2.0
    x = torch.full((1, 1, 32, 32), 8.0)  # expected counts 2·e⁻⁸ ≈ 7e-4
    y = simulate(x, Identity(32), photons=photons, seed=0)
    assert torch.isfinite(y).all()
    ceiling = math.log(photons / ZERO_COUNT_CLAMP)
    assert float(y.max()) == pytest.approx(ceiling, rel=1e-6)
    assert float((y == y.max()).float().mean()) > 0.99


def test_bad_arguments() -> None:
    op, x = Identity(8), torch.zeros(1, 1, 8, 8)
    for kw in ({"photons": 1e4, "noise": 0.01}, {"photons": 0.0}, {"photons": -5.0},
               {"photons": float("nan")}, {"noise": -0.1}, {"noise": float("nan")}):
        with pytest.raises(InputError):
            simulate(x, op, **kw)
    vol = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(InputError):
        simulate_volume(np.zeros((2, 9, 8)), op)
    with pytest.raises(InputError):
        simulate_volume(np.zeros((2, 2, 8, 8)), op)
    with pytest.raises(InputError):
        simulate_volume(np.where(np.arange(64).reshape(8, 8) == 3, np.nan, 0.0)[None], op)
    with pytest.raises(InputError):
        simulate_volume(vol, "not an operator")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        simulate_volume(vol, op, photons=1e4, noise=0.1)


def test_volume_slice_by_slice() -> None:
    op = DenseOp()
    rng = np.random.default_rng(0)
    vol = rng.uniform(-1000, 1000, (3, 8, 8)).astype(np.float32)
    before = vol.copy()
    clean = simulate_volume(vol, op)
    assert clean.shape == (3, 6, 10) and clean.dtype == np.float32
    for k in range(3):
        mu = torch.from_numpy(hu_to_mu(vol[k]))[None, None]
        np.testing.assert_allclose(clean[k], op(mu)[0, 0].numpy(), rtol=1e-6)
    noisy = simulate_volume(vol, op, photons=1e3, seed=9, progress=True)
    assert np.array_equal(noisy, simulate_volume(vol, op, photons=1e3, seed=9))
    assert not np.array_equal(noisy, simulate_volume(vol, op, photons=1e3, seed=10))
    seeds = slice_seeds(9, 3)
    assert len(set(seeds)) == 3 and seeds == slice_seeds(9, 3)
    mu1 = torch.from_numpy(hu_to_mu(vol[1]))[None, None]
    assert np.array_equal(noisy[1], simulate(mu1, op, photons=1e3, seed=seeds[1])[0, 0].numpy())
    assert np.array_equal(vol, before)  # input untouched
    same = np.repeat(vol[:1], 2, axis=0)  # identical slices still get independent noise
    g = simulate_volume(same, op, noise=0.1, seed=1)
    assert not np.array_equal(g[0], g[1])
    one = simulate_volume(vol[0], op)  # a 2-D image is one slice
    assert one.shape == (1, 6, 10) and np.array_equal(one[0], clean[0])


def test_parallel_beam_if_available() -> None:
    ops = pytest.importorskip("ctflow.operators")
    if not hasattr(ops, "ParallelBeam2D"):
        pytest.skip("ParallelBeam2D not available yet")
    op = ops.ParallelBeam2D(image_size=32, views=12)
    x = _mu(32)
    clean = op(x)
    assert torch.equal(simulate(x, op), clean)
    longest = float(max(x.sum(dim=-1).max(), x.sum(dim=-2).max()))  # 1 mm pixels
    assert 0.7 * longest < float(clean.max()) < 1.5 * longest  # line integrals of μ
    y = simulate(x, op, photons=1e4, seed=0)
    assert torch.isfinite(y).all()
    rel = float((y - clean).pow(2).mean()) / poisson_std(clean, 1e4) ** 2
    assert 0.8 < rel < 1.25
    vol = np.stack([phantom("chest", 32, s) for s in range(2)])
    sino = simulate_volume(vol, op, photons=1e4, seed=0)
    assert sino.shape == (2, *op.out_shape) and np.all(np.isfinite(sino))
