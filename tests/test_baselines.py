"""The flow baselines PnP-Flow, FlowDPS, DPS and Flower on an exact Gaussian toy prior.

For x1 ~ N(m, Σ) and y = A x1 + η, η ~ N(0, σ²I), the posterior mean is
E[x1 | y] = m + ΣAᵀ(AΣAᵀ + σ²I)⁻¹(y − Am); the methods are posterior samplers (or, for
PnP-Flow, a stochastic MMSE-like estimator), so the average of many reconstructions of the
same y should approach it, and each reconstruction should beat the pseudo-inverse A⁺y,
which cannot fill A's null space with the prior mean.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch

import ctflow
from ctflow.bench import baselines as tb
from ctflow.errors import MethodError
from ctflow.operators import GaussianBlur, Inpainting, LinearOperator, SuperResolution
from ctflow.priors import GaussianPrior
from ctflow.priors.presets import FAMILIES, Presets, load_presets
from ctflow.solvers import defaults as bd
from ctflow.solvers import dps as dps_mod
from ctflow.solvers import flowdps as flowdps_mod
from ctflow.solvers import flower as flower_mod
from ctflow.solvers import get_solver
from ctflow.solvers import pnpflow as pnpflow_mod
from ctflow.solvers.dps import _velocity_and_residual_grad

METHODS = ("pnpflow", "flowdps", "dps", "flower")
N = 8


def toy_prior(n: int = N, level: float = 2.0) -> GaussianPrior:
    """Diagonal Gaussian with mean ≈ level (far from 0, so A⁺y is visibly wrong) and
    per-pixel variances in [0.05, 1.05]."""
    gen = torch.Generator().manual_seed(0)
    mean = level + 0.5 * torch.randn(n, n, generator=gen)
    var = 0.05 + torch.rand(n, n, generator=gen)
    return GaussianPrior(mean, var)


def toy_mask(n: int = N) -> torch.Tensor:
    return torch.rand(n, n, generator=torch.Generator().manual_seed(3)) > 0.5


def dense(op: LinearOperator) -> torch.Tensor:
    """The matrix of op (rows: measurements), float64."""
    d = op.in_shape[0] * op.in_shape[1]
    basis = torch.eye(d, dtype=torch.float64).view(d, 1, *op.in_shape)
    return op(basis).reshape(d, -1).T


def posterior_mean(op: LinearOperator, prior: GaussianPrior, y: torch.Tensor,
                   sigma: float) -> torch.Tensor:
    a = dense(op)
    cov = torch.diag(prior.var.flatten())
    m = prior.mean.flatten()
    k = a @ cov @ a.T + max(sigma, 1e-6) ** 2 * torch.eye(a.shape[0], dtype=torch.float64)
    pm = m + cov @ a.T @ torch.linalg.solve(k, y[0].flatten().double() - a @ m)
    return pm.view(1, 1, *op.in_shape)


def measure(op: LinearOperator, x1: torch.Tensor, sigma: float) -> torch.Tensor:
    y = op(x1)
    if sigma > 0:
        y = y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    return y


def copies(y: torch.Tensor, b: int) -> torch.Tensor:
    return y.expand(b, *y.shape[1:]).contiguous()


def err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item Euclidean distance."""
    return (a.double() - b.double()).flatten(1).norm(dim=1)


@pytest.mark.parametrize("sigma", [0.0, 0.1])
@pytest.mark.parametrize("method", METHODS)
def test_mask_average_approaches_posterior_mean(method, sigma):
    prior = toy_prior()
    op = Inpainting(toy_mask())
    x1 = prior.sample_data(1, seed=1).float()
    y = measure(op, x1, sigma)
    pm = posterior_mean(op, prior, y, sigma)
    pinv = op.pinv(y)
    res = ctflow.reconstruct(copies(y, 64), op, method=method, prior=prior,
                             noise_std=sigma or None, seed=0)
    assert res.image.shape == (64, 1, N, N)
    gap = float(err(pinv, pm))  # ≈ 12.6: the prior mean missing from the null space
    assert float(err(res.image.mean(0, keepdim=True), pm)) < 0.15 * gap
    # every single reconstruction (a posterior sample) beats the zero-filled estimate
    assert float(err(res.image, x1).max()) < 0.75 * float(err(pinv, x1))


def test_flower_is_exact_on_observed_pixels_and_unbiased():
    """Noiseless mask: the proximal step is a projection, so observed pixels equal y, and
    the mean over samples is the posterior mean up to Monte-Carlo error."""
    prior = toy_prior()
    mask = toy_mask()
    op = Inpainting(mask)
    x1 = prior.sample_data(1, seed=1).float()
    y = op(x1)
    res = ctflow.reconstruct(copies(y, 256), op, method="flower", prior=prior, seed=0)
    assert float((res.image - x1).abs()[..., mask].max()) < 1e-3
    pm = posterior_mean(op, prior, y, 0.0)
    gap = float(err(op.pinv(y), pm))
    assert float(err(res.image.mean(0, keepdim=True), pm)) < 0.03 * gap


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["sr", "blur-noisy"])
def test_other_image_operators_beat_pseudo_inverse(method, case):
    prior = toy_prior()
    if case == "sr":
        op, sigma = SuperResolution(image_size=N, factor=2), 0.0
    else:
        op, sigma = GaussianBlur(image_size=N, sigma=1.0), 0.1
    x1 = prior.sample_data(1, seed=1).float()
    y = measure(op, x1, sigma)
    # Flower at ν = r_t (nu_scale 1, DESIGN §4), the posterior width of this Gaussian toy;
    # the generic default is the value tuned on phantom CT (a wider ν), not this problem's
    opts = {"nu_scale": 1.0} if method == "flower" else {}
    res = ctflow.reconstruct(copies(y, 32), op, method=method, prior=prior,
                             noise_std=sigma or None, seed=0, **opts)
    avg_err = float(err(res.image.mean(0, keepdim=True), x1))
    pinv_err = float(err(op.pinv(y), x1))  # sr ≈ 6.9, noisy blur ≈ 72
    pm_err = float(err(posterior_mean(op, prior, y, sigma), x1))  # the best possible, ≈ 5.5
    assert avg_err < 0.9 * pinv_err
    assert avg_err < 1.2 * pm_err


def smooth_prior(n: int) -> GaussianPrior:
    """Gaussian with DCT-diagonal covariance, variance 4/(1 + |k|²) at frequency k (smooth
    images), around a rough mean image: most of the mean lies in a sparse-view CT null
    space, which A⁺y cannot recover and the prior can."""
    k = torch.arange(n, dtype=torch.float64)
    c = torch.cos(math.pi * (k[None, :] + 0.5) * k[:, None] / n) * math.sqrt(2 / n)
    c[0] /= math.sqrt(2)
    basis = torch.kron(c, c).T  # orthonormal, columns = 2-D DCT images
    var = 4.0 / (1.0 + (k[:, None] ** 2 + k[None, :] ** 2))
    mean = torch.randn(n, n, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return GaussianPrior(mean, var, basis=basis)


def dense_posterior_mean(op: LinearOperator, prior: GaussianPrior, y: torch.Tensor):
    """E[x1 | y] for noiseless y with a full-covariance Gaussian prior."""
    a = dense(op)
    cov = prior.basis @ torch.diag(prior.var.flatten()) @ prior.basis.T
    m = prior.mean.flatten()
    k = a @ cov @ a.T + 1e-12 * torch.eye(a.shape[0], dtype=torch.float64)
    return (m + cov @ a.T @ torch.linalg.solve(k, y[0].flatten().double() - a @ m)).view(
        1, 1, *op.in_shape)


@pytest.mark.parametrize("method", METHODS)
def test_parallel_beam_ct(method):
    ops = pytest.importorskip("ctflow.operators")
    if not hasattr(ops, "ParallelBeam2D"):
        pytest.skip("ParallelBeam2D not available in this build")
    n = 16
    op = ops.ParallelBeam2D(image_size=n, views=6, backend="matrix")
    prior = smooth_prior(n)
    x1 = prior.sample_data(1, seed=1).float()
    y = op(x1)
    res = ctflow.reconstruct(copies(y, 16), op, method=method, prior=prior, seed=0)
    pinv_err = float(err(op.pinv(y), x1))  # ≈ 13: the mean's null-space part is lost
    pm = dense_posterior_mean(op, prior, y)  # error ≈ 2.1
    assert float(err(res.image, x1).max()) < 0.5 * pinv_err
    assert float(err(res.image.mean(0, keepdim=True), x1)) < 0.35 * pinv_err
    if method == "flower":  # CG proximal steps: the average is the posterior mean
        assert float(err(res.image.mean(0, keepdim=True), pm)) < 0.1 * float(
            err(op.pinv(y), pm))


class CountingPrior(GaussianPrior):
    """Records the batch size of every call of the underlying velocity."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls: list[int] = []

    def _velocity(self, x, t):
        self.calls.append(int(x.shape[0]))
        return super()._velocity(x, t)


@pytest.mark.parametrize("method,expected_nfe,expected_calls",
                         [("pnpflow", 7, 7), ("flowdps", 7, 7), ("dps", 6, 3),
                          ("flower", 7, 7)])
def test_nfe_counts_are_exact(method, expected_nfe, expected_calls):
    base = toy_prior()
    prior = CountingPrior(base.mean.float(), base.var.float())
    op = Inpainting(toy_mask())
    y = copies(op(base.sample_data(1, seed=1).float()), 2)
    res = ctflow.reconstruct(y, op, method=method, prior=prior, nfe=7, seed=0)
    assert res.nfe == expected_nfe
    assert len(prior.calls) == expected_calls  # dps: 3 forwards + 3 VJPs
    per_call = 2 * res.info["samples"] if method == "pnpflow" else 2
    assert set(prior.calls) == {per_call}  # pnpflow: the m draws in one batched call
    if method == "pnpflow":
        assert res.info["forwards_per_image"] == 7 * res.info["samples"]


@pytest.mark.parametrize("method", METHODS)
def test_seed_reproduces(method):
    prior = toy_prior()
    op = SuperResolution(image_size=N, factor=2)
    y = op(prior.sample_data(1, seed=1).float())
    a = ctflow.reconstruct(y, op, method=method, prior=prior, nfe=6, seed=3).image
    b = ctflow.reconstruct(y, op, method=method, prior=prior, nfe=6, seed=3).image
    c = ctflow.reconstruct(y, op, method=method, prior=prior, nfe=6, seed=4).image
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_batch_of_different_images(method):
    prior = toy_prior()
    mask = toy_mask()
    op = Inpainting(mask)
    x1 = prior.sample_data(2, seed=7).float()
    y = op(x1)
    res = ctflow.reconstruct(y, op, method=method, prior=prior, seed=0)
    assert res.image.shape == (2, 1, N, N)
    assert bool((err(res.image, x1) < 0.75 * err(op.pinv(y), x1)).all())
    # each item follows its own data: observed pixels nearer its own y than the other's
    own = err(res.image * mask, y)
    swapped = err(res.image * mask, y.flip(0))
    assert bool((own < 0.5 * swapped).all())


def test_model_space_normalisation_is_undone():
    """A prior working on x = a·μ + b: the solver maps data in and the image back out."""
    base = toy_prior()
    a, b = 4.0, -1.0
    model = GaussianPrior(a * base.mean.float() + b, a * a * base.var.float())
    model.scale, model.offset = a, b
    mask = toy_mask()
    op = Inpainting(mask)
    mu = base.sample_data(1, seed=1).float()
    y = op(mu)
    res = ctflow.reconstruct(copies(y, 64), op, method="flower", prior=model, seed=0)
    assert float((res.image - mu).abs()[..., mask].max()) < 1e-3
    pm = posterior_mean(op, base, y, 0.0)
    assert float(err(res.image.mean(0, keepdim=True), pm)) < 0.05 * float(err(op.pinv(y), pm))


def test_dps_gradient_matches_finite_differences():
    prior = toy_prior()
    op = SuperResolution(image_size=N, factor=2)
    x = torch.randn(1, 1, N, N, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = op(prior.sample_data(1, seed=1))
    t = 0.4
    nfe0 = prior.nfe
    v, grad = _velocity_and_residual_grad(prior, op, y, x, t)
    assert prior.nfe - nfe0 == 2

    def rho(z):
        return float((y - op(z + (1 - t) * prior._velocity(z, torch.tensor([t])))).norm())

    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    h = 1e-6
    fd = (rho(x + h * d) - rho(x - h * d)) / (2 * h)
    assert abs(fd - float((grad * d).sum())) < 1e-6 * max(1.0, abs(fd))


def test_registry_reaches_each_module():
    from ctflow.solvers import dps, flowdps, flower, pnpflow

    for name, fn in [("pnpflow", pnpflow.pnpflow), ("flowdps", flowdps.flowdps),
                     ("dps", dps.dps), ("flower", flower.flower)]:
        assert get_solver(name)[0] is fn


GENERIC = {"pnpflow": pnpflow_mod.GENERIC, "flowdps": flowdps_mod.GENERIC,
           "dps": dps_mod.GENERIC, "flower": flower_mod.GENERIC}
PRIORS_DIR = Path(__file__).resolve().parents[1] / "data" / "priors"


def shipped_presets(name: str = "phantom-64") -> Presets:
    presets = load_presets(PRIORS_DIR / f"{name}.presets.json")
    assert presets is not None
    return presets


def test_presets_are_complete_and_accepted():
    """Generic defaults name the budget; every shipped record covers a family and only
    options the method takes."""
    for method in METHODS:
        params = inspect.signature(get_solver(method)[0]).parameters
        assert "nfe" in GENERIC[method] and set(GENERIC[method]) <= set(params)
        for name in ("phantom-64", "phantom-128"):
            records = shipped_presets(name).records(method)
            assert {r["family"] for r in records} == set(FAMILIES)
            for rec in records:
                assert set(rec["options"]) <= set(params) and "task_family" not in rec["options"]


def test_task_family_selects_presets_and_explicit_options_win():
    prior = toy_prior()
    prior.presets = shipped_presets()
    op = Inpainting(toy_mask())
    y = op(prior.sample_data(1, seed=1).float())
    meta = ("task_family", "tuned_at_nfe", "tuned_at_size", "presets")
    for method in METHODS:
        records = prior.presets.records(method)
        for family in FAMILIES:
            want = [r for r in records if r["family"] == family and not r.get("noisy")]
            res = ctflow.reconstruct(y, op, method=method, prior=prior, nfe=4,
                                     task_family=family)
            got = {k: v for k, v in res.info["options"].items() if k not in meta}
            assert got == {**GENERIC[method], **want[0]["options"], "nfe": 4}
            assert res.info["task_family"] == family
        # with a noise level the family's noisy-data record (tuned on ct60-1e5) serves
        noisy = [r for r in records if r["family"] == "ct" and r.get("noisy")]
        res = ctflow.reconstruct(y, op, method=method, prior=prior, nfe=4, task_family="ct",
                                 noise_std=0.05)
        got = {k: v for k, v in res.info["options"].items() if k not in meta}
        assert got == {**GENERIC[method], **noisy[0]["options"], "nfe": 4}
        # no family given: the operator's (inpainting)
        res = ctflow.reconstruct(y, op, method=method, prior=prior, nfe=4)
        assert res.info["task_family"] == "inpainting"
    res = ctflow.reconstruct(y, op, method="flower", prior=prior, nu_scale=0.7, nfe=3)
    assert res.info["options"]["nu_scale"] == 0.7
    with pytest.raises(MethodError, match="task_family"):
        ctflow.reconstruct(y, op, method="dps", prior=prior, task_family="mri")


@pytest.mark.parametrize("method,bad", [
    ("pnpflow", {"nfe": 0}), ("pnpflow", {"gamma": -1.0}), ("pnpflow", {"samples": 0}),
    ("flowdps", {"dc_steps": -1}), ("flowdps", {"eta": 0.0}), ("dps", {"nfe": 1}),
    ("dps", {"zeta": float("nan")}), ("flower", {"cg_iters": 0}),
    ("flower", {"nu_scale": -2.0}), ("flower", {"seed": 1.5}), ("pnpflow", {"samples": 2.5}),
    ("pnpflow", {"alpha": -0.5}), ("flowdps", {"dc_steps": 2.0}),
])
def test_bad_options_raise_method_error(method, bad):
    prior = toy_prior()
    op = Inpainting(toy_mask())
    y = op(prior.sample_data(1, seed=1).float())
    with pytest.raises(MethodError):
        ctflow.reconstruct(y, op, method=method, prior=prior, **bad)


def test_flower_sigma_and_floor():
    """σ enters Flower in model units (a·σ); noiseless data get the floor 1e-3·‖A‖."""
    base = toy_prior()
    model = GaussianPrior(3.0 * base.mean.float(), 9.0 * base.var.float())
    model.scale = 3.0
    op = SuperResolution(image_size=N, factor=2)  # ‖A‖ = 1/2
    y = op(base.sample_data(1, seed=1).float())
    noisy = ctflow.reconstruct(y, op, method="flower", prior=model, nfe=2, noise_std=0.1)
    assert noisy.info["sigma_model"] == pytest.approx(0.3)
    clean = ctflow.reconstruct(y, op, method="flower", prior=model, nfe=2)
    assert clean.info["sigma_model"] == pytest.approx(bd.SIGMA_FLOOR_REL * 0.5)


def test_tuning_choice_and_merge():
    """The best setting per family becomes a presets record ("ct-noisy": CT, noisy data);
    the grid scores go to the tuning log."""
    rows = {"ct": [{"options": {"zeta": 1.0}, "psnr": 20.0},
                   {"options": {"zeta": 2.0}, "psnr": 25.0}],
            "ct-noisy": [{"options": {"zeta": 1.0}, "psnr": 20.0},
                         {"options": {"zeta": 3.0}, "psnr": 19.0}]}
    best = tb.best_per_family(rows)
    assert best == {"ct": {"zeta": 2.0}, "ct-noisy": {"zeta": 1.0}}
    records = tb.preset_records(best, 64, "p", "cmd")
    assert [(r["family"], r["noisy"], r["options"]) for r in records] == \
        [("ct", False, {"zeta": 2.0}), ("ct", True, {"zeta": 1.0})]
    log = tb.merged_log({}, {"dps": rows}, "cmd", "p", 64, 2)
    assert log["tuning"]["psnr"]["dps"] == rows and log["tuning"]["split"] == "val"
