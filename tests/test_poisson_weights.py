"""Pre-log Poisson weights (ctflow.solvers.weights) in the guided samplers, MS-Flow and TV:
the weight formula and its normalisation, the weighted normal equations against dense
solves, MS-Flow's monotone weighted objective, the gain on a toy whose dose varies strongly
across rays, bad input, and the API / CLI routes of ``photons``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ctflow
from ctflow.cli import main
from ctflow.errors import MethodError
from ctflow.io.hdf5 import read_reconstruction
from ctflow.operators import ParallelBeam2D
from ctflow.priors.gaussian import GaussianPrior
from ctflow.simulate import noise_std
from ctflow.solvers.common import model_problem
from ctflow.solvers.guidance import GuidanceTarget
from ctflow.solvers.msflow_stitching import data_misfit, prox_data
from ctflow.solvers.weights import poisson_weights, solve_weighted_normal, statistical_weights

pytestmark = pytest.mark.usefixtures("one_thread")

PHOTONS = 1e4
N_TOY = 16
TOY_IMAGES = 6


# -- the weights ----------------------------------------------------------------------------
def test_equal_counts_give_white_weights():
    """All rays equal: W̃ = I and σ̄² = e^{y}/I0, so W = W̃/σ̄² = I/σ̄² (the white problem)."""
    y = torch.full((2, 1, 5, 7), 1.3)
    dw = poisson_weights(y, PHOTONS)
    assert torch.allclose(dw.relative, torch.ones_like(y), rtol=1e-6)
    assert dw.sigma == pytest.approx(math.sqrt(math.exp(1.3) / PHOTONS), rel=1e-6)
    assert dw.noise_std == dw.sigma
    assert poisson_weights(y, PHOTONS, noise_std=0.02).noise_std == 0.02


def test_weights_are_normalised_inverse_variances():
    """w̃_i/σ̄² is the inverse variance c²/(c + σ_e²), and mean(1/w̃) = 1 over the batch."""
    gen = torch.Generator().manual_seed(0)
    y = 4 * torch.rand(3, 1, 6, 9, generator=gen, dtype=torch.float64)
    for sigma_e in (0.0, 5.0):
        dw = poisson_weights(y, PHOTONS, electronic_noise=sigma_e)
        counts = PHOTONS * torch.exp(-y)
        raw = counts**2 / (counts + sigma_e**2)
        assert torch.allclose(dw.relative / dw.sigma**2, raw, rtol=1e-10)
        assert float((1 / dw.relative).mean()) == pytest.approx(1.0, rel=1e-10)
        assert torch.allclose(statistical_weights(y, PHOTONS, electronic_noise=sigma_e), raw)


def test_electronic_noise_lowers_high_attenuation_weights():
    y = torch.tensor([[[[0.2, 2.0, 4.0, 6.0]]]], dtype=torch.float64)
    plain = poisson_weights(y, PHOTONS).relative[0, 0, 0]
    noisy = poisson_weights(y, PHOTONS, electronic_noise=10.0).relative[0, 0, 0]
    # relative to the clearest ray, each darker ray loses weight, the darkest the most
    ratio = (noisy / noisy[0]) / (plain / plain[0])
    assert float(ratio[1]) < 1 and bool((ratio[1:].diff() < 0).all())
    assert float(ratio[-1]) < 0.3  # c = 25 counts against σ_e² = 100: w = c²/125 vs c


# -- the weighted normal equations ----------------------------------------------------------
def dense_matrix(op) -> torch.Tensor:
    """A as an (m, n) float64 matrix, column by column."""
    n = math.prod(op.in_shape)
    cols = op(torch.eye(n).reshape(n, 1, *op.in_shape))
    return cols.reshape(n, -1).T.double()


@pytest.fixture(scope="module")
def small_ct():
    """16² parallel beam (10 views), a high-attenuation disc, Poisson 1e4 photons."""
    op = ParallelBeam2D(image_size=16, views=10)
    yy, xx = torch.meshgrid(torch.arange(16) - 7.5, torch.arange(16) - 7.5, indexing="ij")
    x = torch.where(yy**2 + xx**2 < 49, 0.3, 0.0)[None, None].float()
    y = ctflow.simulate(x, op, photons=PHOTONS, seed=0)
    return op, x, y, dense_matrix(op)


def test_weighted_cg_solves_the_weighted_normal_equations(small_ct):
    op, _, y, a = small_ct
    w = poisson_weights(y, PHOTONS).relative
    rhs = op.T(w * y)
    got = solve_weighted_normal(op, w, rhs, 0.5, tol=1e-7, maxiter=500).double().flatten()
    gram = a.T @ torch.diag(w.double().flatten()) @ a + 0.5 * torch.eye(a.shape[1])
    want = torch.linalg.solve(gram, rhs.double().flatten())
    assert float((got - want).norm() / want.norm()) < 1e-4  # float32 CG, cond(gram) ~ 1e3


def test_msflow_weighted_prox_matches_dense_solve(small_ct):
    """Step (ii): argmin ‖Ax − y‖²_W̃/(2σ²) + (μ/2)‖x − Φ‖² against a dense solve."""
    op, x, y, a = small_ct
    w = poisson_weights(y, PHOTONS).relative
    anchor = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    sigma, mu = 0.02, 300.0
    got = prox_data(op, y, anchor, sigma, mu, tol=1e-7, maxiter=500, weights=w)
    wd = torch.diag(w.double().flatten())
    lhs = a.T @ wd @ a / sigma**2 + mu * torch.eye(a.shape[1])
    rhs = a.T @ wd @ y.double().flatten() / sigma**2 + mu * anchor.double().flatten()
    want = torch.linalg.solve(lhs, rhs)
    assert float((got.double().flatten() - want).norm() / want.norm()) < 1e-5
    # a warm start that is worse than the solve is not kept; the weighted energy is lower
    white = prox_data(op, y, anchor, sigma, mu, tol=1e-7, maxiter=500)

    def energy(u):
        return float(data_misfit(op, u, y, sigma, w) + 0.5 * mu * (u - anchor).pow(2).sum())

    assert energy(got) < energy(white)


def test_weighted_target_is_the_weighted_tikhonov_solution(small_ct):
    """ŷ_t = P(AᵀW̃A + ρ_t)⁻¹(AᵀW̃y + ρ_t P x̂1) (dense check), and = the white target for W̃ = I."""
    op, x, y, a = small_ct
    prior = GaussianPrior(torch.zeros(16, 16), torch.ones(16, 16))
    dw = poisson_weights(y, PHOTONS)
    weighted = GuidanceTarget(model_problem(y, op, prior, dw.noise_std, dw.relative), 3.0)
    t = 0.6
    px1 = op.projector(x + 0.02)
    got = weighted.at(px1, t).double().flatten()
    rho = weighted.rho(t)
    wd = torch.diag(dw.relative.double().flatten())
    u = torch.linalg.solve(a.T @ wd @ a + rho * torch.eye(256),
                           a.T @ wd @ y.double().flatten() + rho * px1.double().flatten())
    want = op.projector(u.float().reshape(1, 1, 16, 16)).double().flatten()
    # the solve meets its residual tolerance (guidance.WEIGHTED_CG_TOL = 1e-5) ...
    last = weighted._last.double().flatten()
    rhs = a.T @ wd @ y.double().flatten() + rho * px1.double().flatten()
    lhs = a.T @ wd @ a + rho * torch.eye(256)
    assert float((lhs @ last - rhs).norm() / rhs.norm()) < 2e-5
    # ... so the target is within that times the condition number (ρ ≈ 0.05 here)
    assert float((got - want).norm() / want.norm()) < 2e-3
    assert float((got - GuidanceTarget(model_problem(y, op, prior, dw.noise_std), 3.0)
                  .at(px1, t).double().flatten()).norm() / want.norm()) > 1e-2
    # W̃ = I reproduces the white target (closed form) where ρ_t is as in use (κ = 300:
    # ρ ≈ 0.8–11 here; at ρ ≈ 0.01 any 1e-4 difference of the system matrices is amplified)
    ones = GuidanceTarget(model_problem(y, op, prior, dw.noise_std, torch.ones_like(y)), 300.0)
    white = GuidanceTarget(model_problem(y, op, prior, dw.noise_std), 300.0)
    for tt in (0.3, 0.6, 0.8):
        a_, b_ = ones.at(px1, tt), white.at(px1, tt)
        assert float((a_ - b_).norm() / b_.norm()) < 3e-3


# -- solvers --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    """Gaussian prior (exact velocity) of 16² discs with a dense off-centre insert: line
    integrals 0–5.7, so at 1e4 photons the counts (and the weights) vary ~300× across rays."""
    n = N_TOY
    yy, xx = torch.meshgrid(torch.arange(n) - n / 2 + 0.5, torch.arange(n) - n / 2 + 0.5,
                            indexing="ij")
    mean = torch.where((yy**2 + xx**2).sqrt() < 0.45 * n, 0.3, 0.0).double()
    mean = mean + torch.where((xx - n / 6).abs() + yy.abs() < n / 8, 0.3, 0.0)
    prior = GaussianPrior(mean, torch.full((n, n), 0.03**2, dtype=torch.float64))
    op = ParallelBeam2D(image_size=n, views=12)
    x1 = prior.sample_data(TOY_IMAGES, seed=1).float()
    y = torch.cat([ctflow.simulate(x1[i:i + 1], op, photons=PHOTONS, seed=i)
                   for i in range(TOY_IMAGES)])
    return prior, op, x1, y


def mean_psnr(image: torch.Tensor, truth: torch.Tensor) -> float:
    out = []
    for u, g in zip(image, truth, strict=True):
        rng = float(g.max() - g.min())
        out.append(20 * math.log10(rng / float((u - g).pow(2).mean().sqrt())))
    return float(np.mean(out))


# (method, fixed options, measured mean PSNR white → weighted on the toy)
TOY_CASES = [
    ("conjugate", {"w": 1000.0, "tau": 0.5, "rho_scale": 3.0}),  # 28.52 → 29.36 dB
    ("pigfm", {"w": 100.0, "tau": 0.5, "rho_scale": 3.0}),  # 27.82 → 28.63 dB
]


@pytest.mark.parametrize("method,options", TOY_CASES)
def test_photon_weights_beat_white_noise_level_on_varying_dose(toy, method, options):
    """Same options and seed; white: the true white-equivalent σ, weighted: photons=1e4.
    Measured gains +0.84 (conjugate) and +0.81 dB (pigfm); asserted with slack."""
    prior, op, x1, y = toy
    sigma = noise_std(op(x1), photons=PHOTONS)
    white = ctflow.reconstruct(y, op, method=method, prior=prior, noise_std=sigma, nfe=5,
                               **options)
    weighted = ctflow.reconstruct(y, op, method=method, prior=prior, photons=PHOTONS, nfe=5,
                                  **options)
    assert weighted.info["weighted"] and not white.info["weighted"]
    assert "noise_std_estimated" not in weighted.info  # the level came from the counts
    gain = mean_psnr(weighted.image, x1) - mean_psnr(white.image, x1)
    assert gain > 0.5, gain


@pytest.mark.parametrize("method", ["conjugate-diffusion", "otode"])
def test_other_guided_samplers_take_photons(toy, method):
    """The weighted target reaches C-ΠGDM and OT-ODE too (generic defaults, same seed):
    measured 21.28 → 22.12 dB (conjugate-diffusion) and 25.87 → 26.60 dB (otode)."""
    prior, op, x1, y = toy
    sigma = noise_std(op(x1), photons=PHOTONS)
    white = ctflow.reconstruct(y, op, method=method, prior=prior, noise_std=sigma, nfe=5)
    weighted = ctflow.reconstruct(y, op, method=method, prior=prior, photons=PHOTONS, nfe=5)
    assert weighted.info["weighted"] and bool(torch.isfinite(weighted.image).all())
    assert float((weighted.image - white.image).abs().max()) > 1e-3
    assert mean_psnr(weighted.image, x1) > mean_psnr(white.image, x1) + 0.3


def test_msflow_weighted_objective_decreases(toy):
    prior, op, x1, y = toy
    res = ctflow.reconstruct(y[:2], op, method="msflow", prior=prior, photons=PHOTONS,
                             shooting=2, segment_steps=2, iters=6, init="inverse", mu=100.0)
    hist = res.info["history"]["objective"]
    assert len(hist) == 7
    assert all(b <= a * (1 + 1e-9) for a, b in zip(hist, hist[1:], strict=False)), hist
    assert hist[-1] < hist[0]
    # the logged data term is the weighted one, ‖Ax − y‖²_W̃/(2σ²) in model space
    dw = poisson_weights(y[:2], PHOTONS)
    x = prior.to_model(res.image)
    y_m = prior.scale * y[:2] + prior.offset * op(torch.ones_like(x[:1]))
    sigma = dw.noise_std * abs(prior.scale)
    data = float(data_misfit(op, x, y_m, sigma, dw.relative).sum())
    assert res.info["history"]["data"][-1] == pytest.approx(data, rel=1e-4)
    assert res.info["options"]["photons"] == PHOTONS


@pytest.mark.parametrize("method", ["conjugate", "conjugate-diffusion", "pigfm", "otode",
                                    "msflow", "tv", "mbir"])
@pytest.mark.parametrize("bad", [0.0, -1e4, float("nan"), float("inf"), True, "1e4"])
def test_bad_photons_is_a_method_error(toy, method, bad):
    prior, op, _, y = toy
    with pytest.raises(MethodError, match="photons"):
        ctflow.reconstruct(y[:1], op, method=method, prior=prior, photons=bad)


@pytest.mark.parametrize("method", ["conjugate", "msflow", "tv"])
def test_bad_electronic_noise_is_a_method_error(toy, method):
    prior, op, _, y = toy
    for bad in (-1.0, float("nan")):
        with pytest.raises(MethodError, match="electronic_noise"):
            ctflow.reconstruct(y[:1], op, method=method, prior=prior, photons=PHOTONS,
                               electronic_noise=bad)


def test_cli_passes_the_files_photons(tmp_path):
    """``ctflow simulate --photons`` stores I0; ``ctflow reconstruct`` uses it for methods with
    a photons option (= --opt photons=I0), and --opt photons=null turns it off."""
    sino = tmp_path / "s.h5"
    assert main(["simulate", "--phantom", "chest", "--size", "32", "--views", "16",
                 "--photons", "3e3", "--seed", "1", "-o", str(sino)]) == 0
    images = {}
    for name, opts in (("file", []), ("given", ["--opt", "photons=3000"]),
                       ("off", ["--opt", "photons=null"])):
        out = tmp_path / f"{name}.h5"
        assert main(["reconstruct", str(sino), "--method", "tv", "--iters", "30", *opts,
                     "-o", str(out)]) == 0
        images[name] = read_reconstruction(str(out)).image_hu
    assert np.array_equal(images["file"], images["given"])
    assert float(np.abs(images["file"] - images["off"]).max()) > 1.0  # HU
