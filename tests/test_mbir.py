"""MBIR (ctflow.solvers.mbir): Poisson weights, q-GGMRF prior, objective, gradient, quality;
TV's photon-weighted data term (ctflow.solvers.classical.tv with ``photons``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ctflow
from ctflow.errors import MethodError
from ctflow.metrics import psnr
from ctflow.operators import ParallelBeam2D
from ctflow.phantoms import phantom
from ctflow.simulate import noise_std, simulate
from ctflow.solvers import SOLVERS
from ctflow.solvers.mbir import (
    gradient,
    objective,
    penalty,
    potential,
    potential_weight,
    statistical_weights,
)
from ctflow.units import hu_to_mu, mu_to_hu

pytestmark = pytest.mark.usefixtures("private_cache")

PHOTONS = 1e5


@pytest.fixture(scope="module")
def chest64():
    """64² chest phantom (HU and μ), 60-view parallel beam, 1e5-photon Poisson data."""
    hu = phantom("chest", 64)
    x = torch.from_numpy(hu_to_mu(hu)).float()[None, None]
    op = ParallelBeam2D(image_size=64, views=60)
    y = simulate(x, op, photons=PHOTONS, seed=0)
    return hu, x, op, y


def test_registered_without_prior():
    spec = SOLVERS["mbir"]
    assert spec.module == "mbir" and spec.function == "mbir" and not spec.needs_prior


def test_weights_from_photons():
    y = torch.tensor([[[[0.0, 1.0, 2.5], [4.0, 0.5, 3.0]]]], dtype=torch.float64)
    counts = 2e4 * torch.exp(-y)
    assert torch.allclose(statistical_weights(y, photons=2e4), counts, rtol=1e-12)
    # electronic noise σ_e (counts): Var(y) = (c + σ_e²)/c², w = c²/(c + σ_e²)
    w = statistical_weights(y, photons=2e4, electronic_noise=10.0)
    assert torch.allclose(w, 1.0 / (1.0 / counts + 100.0 / counts**2), rtol=1e-12)
    assert float(w[0, 0, 1, 1]) == pytest.approx(counts[0, 0, 1, 1].item() ** 2
                                                 / (counts[0, 0, 1, 1].item() + 100.0))
    assert torch.allclose(statistical_weights(y, noise_std=0.1), torch.full_like(y, 100.0))
    assert torch.all(statistical_weights(y) == 1.0)


def test_weights_match_poisson_variance():
    """w_i is the inverse variance of the post-log data: measured over 4000 noisy draws."""
    op = ParallelBeam2D(image_size=16, views=4)
    x = torch.full((1, 1, 16, 16), 0.1)
    draws = torch.cat([simulate(x, op, photons=2e3, seed=s) for s in range(4000)])
    var = draws.double().var(0, keepdim=True)
    w = statistical_weights(op(x), photons=2e3).double()
    ratio = (var * w).flatten()[op(x).flatten() > 0.5]
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.05)


def test_potential_shape():
    d = torch.tensor([1e-4, 0.01, 0.1, 100.0, 1000.0], dtype=torch.float64)
    delta, q = 0.1, 1.2
    rho = potential(d, delta, q)
    assert torch.allclose(rho[:1], 0.5 * d[:1] ** 2, rtol=1e-2)  # quadratic near 0
    # far tail grows like |Δ|^q: ρ(1000)/ρ(100) ≈ 10^1.2
    assert float(rho[4] / rho[3]) == pytest.approx(10**q, rel=0.05)
    w = potential_weight(d, delta, q)
    assert torch.all(w > 0) and torch.all(w <= 1.0)
    # ω = ρ'/Δ against central differences of ρ
    h = 1e-7
    num = (potential(d + h, delta, q) - potential(d - h, delta, q)) / (2 * h)
    assert torch.allclose(num, w * d, rtol=1e-5, atol=1e-12)


def test_penalty_counts_eight_neighbours():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = 1e-4  # one bump: 4 straight (w 1) and 4 diagonal (w 1/√2) pairs
    expected = (4 + 4 / math.sqrt(2)) * 0.5 * 1e-8
    assert float(penalty(x, delta=1.0)) == pytest.approx(expected, rel=1e-3)


def test_gradient_matches_finite_differences():
    op = ParallelBeam2D(image_size=32, views=20)
    gen = torch.Generator().manual_seed(1)
    x = 0.02 * torch.rand(1, 1, 32, 32, generator=gen, dtype=torch.float64)
    y = op(0.02 * torch.rand(1, 1, 32, 32, generator=gen, dtype=torch.float64))
    w = statistical_weights(y, photons=1e4).double()
    beta, delta = 50.0, 0.002
    g = gradient(x, y, op, w, beta, delta)
    for k in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        h = 1e-6
        num = (objective(x + h * v, y, op, w, beta, delta)
               - objective(x - h * v, y, op, w, beta, delta)) / (2 * h)
        ana = (g * v).sum()
        assert float(num) == pytest.approx(float(ana), rel=1e-6), k


def test_objective_decreases_monotonically(chest64):
    _, _, op, y = chest64
    res = ctflow.reconstruct(y, op, method="mbir", photons=PHOTONS, iters=40, solver="lbfgs")
    hist = res.info["objective"]
    assert res.info["solver"] == "lbfgs" and len(hist) >= 30
    assert all(hist[i + 1] <= hist[i] for i in range(len(hist) - 1)), hist
    assert hist[-1] < 0.5 * hist[0]
    assert float(res.image.min()) >= 0.0  # non-negativity
    # the logged value is Φ of the returned image
    w = statistical_weights(y, photons=PHOTONS)
    final = objective(res.image.double(), y.double(), op, w.double(), res.info["beta"][0],
                      res.info["delta"])
    assert float(final) == pytest.approx(hist[-1], rel=1e-4)


def test_beats_tv_and_fbp_on_noisy_64(chest64):
    hu, _, op, y = chest64
    sigma = noise_std(op(torch.from_numpy(hu_to_mu(hu)).float()[None, None]), photons=PHOTONS)
    scores = {}
    for method, opts in (("fbp", {}), ("tv", {}), ("mbir", {"photons": PHOTONS})):
        res = ctflow.reconstruct(y, op, method=method, noise_std=sigma, **opts)
        scores[method] = psnr(mu_to_hu(res.image.numpy()), hu)
    assert scores["mbir"] >= scores["tv"], scores
    assert scores["mbir"] >= scores["fbp"] + 5.0, scores
    assert scores["mbir"] > 37.5, scores


def test_noise_std_without_photons_and_batches(chest64):
    """W = I/σ² when only noise_std is given; items of a batch are solved independently."""
    hu, _, op, y = chest64
    sigma = 0.004
    both = torch.cat([y, y.flip(-1)])
    res = ctflow.reconstruct(both, op, method="mbir", noise_std=sigma, iters=30)
    single = ctflow.reconstruct(y, op, method="mbir", noise_std=sigma, iters=30)
    assert res.image.shape == (2, 1, 64, 64)
    assert torch.allclose(res.image[:1], single.image, atol=1e-6)
    assert psnr(mu_to_hu(single.image.numpy()), hu) > 33.0


def test_bad_options(chest64):
    _, _, op, y = chest64
    for opts in ({"beta": -1.0}, {"delta": 0.0}, {"q": 3.0}, {"iters": 0},
                 {"photons": -5.0}, {"init": "random"}):
        with pytest.raises(MethodError):
            ctflow.reconstruct(y, op, method="mbir", **opts)


def test_tv_photon_weights_fit_reliable_rays(chest64):
    """With photons, TV's data term is ½‖Ax − y‖²_W: at the same λ each solution is the
    better one for its own objective (weighted, resp. plain), by a clear margin."""
    from ctflow.solvers.classical import _tv_weights, tv_seminorm

    _, _, op, y = chest64
    opts = {"iters": 300, "tol": 0.0, "precondition": "ramp"}  # both converged
    plain = ctflow.reconstruct(y, op, method="tv", photons=None, **opts)
    lam = plain.info["lam"]
    weighted = ctflow.reconstruct(y, op, method="tv", photons=PHOTONS, lam=lam, **opts)
    w = _tv_weights(y, PHOTONS)

    def objective(image: torch.Tensor, weights: torch.Tensor | float) -> float:
        r = op(image) - y
        return float(0.5 * (weights * r * r).sum() + lam * tv_seminorm(image).sum())

    gap_w = objective(plain.image, w) - objective(weighted.image, w)
    gap_plain = objective(weighted.image, 1.0) - objective(plain.image, 1.0)
    assert gap_w > 5e-4 * objective(weighted.image, w), gap_w
    assert gap_plain > 5e-4 * objective(plain.image, 1.0), gap_plain
    assert weighted.info["objective"][-1] == pytest.approx(objective(weighted.image, w),
                                                           rel=1e-4)
    hist = weighted.info["objective"]
    assert hist[-1] < hist[0]
    with pytest.raises(MethodError):
        ctflow.reconstruct(y, op, method="tv", photons=0.0)


def test_tv_weights_keep_lambda_scale(chest64):
    """photons=None is unchanged TV; with photons, weights w_i·mean(1/w) and noise_std
    defaulting to √mean(1/(I0 e^{−y}))."""
    from ctflow.solvers.classical import _tv_weights

    _, _, op, y = chest64
    assert _tv_weights(y, None) == 1.0
    w = _tv_weights(y, PHOTONS).double()
    counts = PHOTONS * torch.exp(-y.double())
    assert torch.allclose(w, counts * (1.0 / counts).mean(), rtol=1e-5)
    assert float((1.0 / w).mean()) == pytest.approx(1.0, rel=1e-5)
    sigma = math.sqrt(float((1.0 / counts).mean()))
    a = ctflow.reconstruct(y, op, method="tv", photons=PHOTONS, iters=20)
    b = ctflow.reconstruct(y, op, method="tv", photons=PHOTONS, noise_std=sigma, iters=20)
    assert a.info["lam"] == pytest.approx(b.info["lam"], rel=1e-6)
    assert np.allclose(a.image.numpy(), b.image.numpy())


def test_ordered_subsets_settle_near_the_minimum(chest64):
    """OS-SQS-momentum (the default at 60 views, 18 epochs) ends within 3 % of L-BFGS-B's
    Φ and no worse in PSNR; its log ends at Φ of the returned image."""
    hu, _, op, y = chest64
    fast = ctflow.reconstruct(y, op, method="mbir", photons=PHOTONS)
    exact = ctflow.reconstruct(y, op, method="mbir", photons=PHOTONS, solver="lbfgs")
    assert fast.info["solver"] == "os" and fast.info["subsets"] == 12
    assert len(fast.info["objective"]) == fast.info["iters"] + 1 == 19
    phi_fast, phi_exact = fast.info["objective"][-1], exact.info["objective"][-1]
    assert phi_exact <= phi_fast <= 1.03 * phi_exact, (phi_fast, phi_exact)
    assert phi_fast < 0.5 * fast.info["objective"][0]
    w = statistical_weights(y, photons=PHOTONS)
    final = objective(fast.image.double(), y.double(), op, w.double(), fast.info["beta"][0],
                      fast.info["delta"])
    assert float(final) == pytest.approx(phi_fast, rel=1e-4)
    assert float(fast.image.min()) >= 0.0
    score = {k: psnr(mu_to_hu(r.image.numpy()), hu) for k, r in (("os", fast), ("lbfgs", exact))}
    assert score["os"] >= score["lbfgs"] - 0.3, score


def test_coarser_levels_divide_the_subsets():
    from ctflow.solvers.mbir_os import coarser

    assert [coarser(12, g) for g in (12, 6, 3, 1)] == [6, 3, 1, 1]
    assert coarser(10, 10) == 5 and coarser(10, 5) == 2 and coarser(7, 7) == 1


@pytest.mark.parametrize("backend", ["matrix", "astra-cpu"])
def test_view_subsets_partition_the_scan(backend):
    """A_m (matrix rows, or a subset operator) is the full A on subset m's views."""
    from ctflow.solvers.mbir_os import bit_reversed_order, view_subsets

    assert bit_reversed_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    assert sorted(bit_reversed_order(12)) == list(range(12))
    op = ParallelBeam2D(image_size=32, views=30, backend=backend)
    subsets = view_subsets(op, 6)
    assert subsets is view_subsets(op, 6)  # cached per geometry
    assert bool(subsets.blocks) == (backend == "matrix") and len(subsets) == 6
    assert sorted(np.concatenate(subsets.index).tolist()) == list(range(30))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 32, 32, generator=gen)
    r = torch.rand(1, 1, 30, op.out_shape[1], generator=gen)
    full = op(x)
    for m in range(len(subsets)):
        assert torch.allclose(subsets.forward(m, x), subsets.rows(full, m), rtol=1e-5,
                              atol=1e-6)
        part = torch.zeros_like(r)
        part[..., torch.as_tensor(subsets.index[m]), :] = subsets.rows(r, m)
        assert torch.allclose(subsets.adjoint(m, subsets.rows(r, m)), op.T(part), rtol=1e-4,
                              atol=1e-5)


def test_solver_choice_and_refusals(chest64):
    from ctflow.operators import Inpainting

    _, _, op, y = chest64
    few = ParallelBeam2D(image_size=64, views=30)
    y30 = simulate(torch.zeros(1, 1, 64, 64) + 0.01, few, photons=PHOTONS, seed=0)
    assert ctflow.reconstruct(y30, few, method="mbir", photons=PHOTONS,
                              iters=2).info["solver"] == "lbfgs"  # < 40 views
    assert ctflow.reconstruct(y, op, method="mbir", iters=2).info["solver"] == "lbfgs"
    assert ctflow.reconstruct(y, op, method="mbir", iters=2,
                              noise_std=0.01).info["solver"] == "os"  # noisy, 60 views
    assert ctflow.reconstruct(y30, few, method="mbir", photons=PHOTONS, iters=2,
                              solver="os").info["subsets"] == 6
    mask = Inpainting(torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) > 0.5)
    with pytest.raises(MethodError, match="solver 'os'"):
        ctflow.reconstruct(torch.zeros(1, 1, *mask.out_shape), mask, method="mbir",
                           solver="os")
    with pytest.raises(MethodError, match="subsets"):
        ctflow.reconstruct(y, op, method="mbir", photons=PHOTONS, subsets=61)
