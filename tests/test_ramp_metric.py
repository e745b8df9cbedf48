"""The ramp metric of the primal–dual CT solvers (ctflow.solvers.ramp_metric)."""

from __future__ import annotations

import torch

from ctflow.solvers.ramp_metric import RampMetric, lanczos_norm


def _metric() -> RampMetric:
    return RampMetric(37, torch.float64, torch.device("cpu"))


def test_padding_covers_twice_the_detector_and_crop_is_its_adjoint():
    m = _metric()
    assert m.length == 128 and m.length >= 2 * 37
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, 1, 5, 37, generator=gen, dtype=torch.float64)
    u = torch.randn(2, 1, 5, m.length, generator=gen, dtype=torch.float64)
    assert abs(float((m.pad(s) * u).sum() - (s * m.crop(u)).sum())) < 1e-12


def test_filter_is_symmetric_positive_definite():
    m = _metric()
    eye = torch.eye(m.length, dtype=torch.float64)
    f = m.apply(eye)  # rows: F e_i
    assert torch.allclose(f, f.T, atol=1e-12)
    eig = torch.linalg.eigvalsh(f)
    assert float(eig.min()) >= 0.99 / m.length and float(eig.max()) <= 0.5 + 1e-9


def test_dual_step_solves_the_resolvent():
    """u' = (I + σF)⁻¹(u + σF r)  ⇔  (I + σF)u' = u + σF r."""
    m = _metric()
    gen = torch.Generator().manual_seed(1)
    u, r = (torch.randn(1, 1, 4, m.length, generator=gen, dtype=torch.float64)
            for _ in range(2))
    sigma = 0.7
    new = m.dual_step(u, r, sigma)
    assert torch.allclose(new + sigma * m.apply(new), u + sigma * m.apply(r), atol=1e-12)


def test_lanczos_norm_estimates_the_largest_singular_value():
    gen = torch.Generator().manual_seed(2)
    c = torch.randn(300, 200, generator=gen, dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(c, ord=2))
    like = torch.zeros(200, dtype=torch.float64)
    normal = lambda v: c.T @ (c @ v)  # noqa: E731
    assert exact <= lanczos_norm(normal, like, steps=40) <= exact * 1.03
    # a few steps already land within the margin; a Krylov space that closes early is exact
    assert lanczos_norm(normal, like, steps=10) >= 0.96 * exact
    d = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
    assert abs(lanczos_norm(lambda v: d @ v, torch.zeros(3, dtype=torch.float64), 6)
               - (3.0 * 1.05) ** 0.5) < 1e-9


def test_weighted_dual_step_solves_its_equation_and_is_the_closed_form_without_weights():
    """(I + σFW⁻¹)u⁺ = u + σF r to the inner CG's tolerance, for weights spanning 1e4; with
    W = 1 the closed-form step."""
    m = RampMetric(40, torch.float64, torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    u, r = (torch.randn(2, 1, 6, m.length, generator=gen, dtype=torch.float64)
            for _ in range(2))
    w = torch.exp(torch.empty(2, 1, 6, m.length, dtype=torch.float64).uniform_(-4.6, 4.6,
                                                                              generator=gen))
    sigma = 0.3
    new = m.weighted_dual_step(u, r, sigma, w.rsqrt(), tol=1e-10, maxiter=500)
    lhs = new + sigma * m.apply(new / w)
    rhs = u + sigma * m.apply(r)
    assert float((lhs - rhs).norm() / rhs.norm()) < 1e-8
    ones = torch.ones_like(w)
    assert torch.allclose(m.weighted_dual_step(u, r, sigma, ones.rsqrt(), tol=1e-12,
                                                maxiter=500),
                          m.dual_step(u, r, sigma), atol=1e-9)
