"""The flow path module: its identities, and that the priors use it bit for bit."""

from __future__ import annotations

import math

import torch

from ctflow import paths
from ctflow.integrators import euler, euler_sample, invert_euler, seeded_noise
from ctflow.priors import GaussianPrior


def test_clean_and_noise_estimates_recompose_the_state():
    gen = torch.Generator().manual_seed(0)
    x1, z = torch.randn(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    for t in (0.1, 0.5, 0.9):
        x = paths.interpolate(x1, z, t)
        v = x1 - z  # the exact velocity of this one pair
        assert torch.allclose(paths.x1_hat(x, t, v), x1, rtol=0, atol=1e-12)
        assert torch.allclose(paths.eps_hat(x, t, v), z, rtol=0, atol=1e-12)
        assert torch.allclose(paths.interpolate(paths.x1_hat(x, t, v),
                                                paths.eps_hat(x, t, v), t), x, rtol=0, atol=1e-12)


def test_vp_map_round_trip_and_unit_variance():
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (0.05, 0.3, 0.7, 0.95):
        assert torch.allclose(paths.from_vp(paths.to_vp(x, t), t), x, rtol=0, atol=1e-12)
        n = paths.vp_norm(t)
        alpha, sigma = t / n, (1 - t) / n
        assert math.isclose(alpha ** 2 + sigma ** 2, 1.0, rel_tol=1e-12)
        assert math.isclose(paths.vp_time(alpha), t, rel_tol=1e-12)
        assert math.isclose(paths.snr(t), alpha / sigma, rel_tol=1e-12)
        assert math.isclose(paths.r2(t), sigma ** 2, rel_tol=1e-12)


def _prior() -> GaussianPrior:
    return GaussianPrior(torch.full((6, 6), 0.4), torch.full((6, 6), 0.2))


def test_prior_estimates_are_the_path_functions_bit_for_bit():
    prior = _prior()
    x = seeded_noise((2, 1, 6, 6), 3, torch.empty(0))
    t = 0.37
    v = prior.velocity(x, t)
    tt = torch.tensor(t).expand(2).view(-1, 1, 1, 1)
    assert torch.equal(prior.x1_hat(x, t), x + (1 - tt) * v)
    assert torch.equal(prior.eps_hat(x, t), x - tt * v)


def test_integrators_sample_and_invert():
    prior = _prior()
    z = seeded_noise((2, 1, 6, 6), 5, torch.empty(0))
    x = z
    dt = 1.0 / 5
    for i in range(5):  # the explicit loop euler_sample implements (as Prior.sample did)
        x = x + dt * prior.velocity(x, i * dt)
    assert torch.equal(euler_sample(prior, z, 5), x)
    ones = torch.ones(2)
    end, states = euler(prior, z, 0 * ones, ones, 64, keep_states=True)
    assert len(states) == 64 and torch.equal(states[0], z)
    errors = []
    for m in (32, 128):  # Euler there and back: the round-trip error falls like 1/M
        there, _ = euler(prior, z, 0 * ones, ones, m)
        back = invert_euler(prior, there, [0.0, 1.0], m)[0]
        errors.append(float((back - z).norm() / z.norm()))
    assert errors[1] < 0.1 and errors[1] < 0.4 * errors[0]
    assert torch.equal(seeded_noise((3,), 9, z), seeded_noise((3,), 9, z))
