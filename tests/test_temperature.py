"""The start's temperature T of the guided samplers (C-ΠGFM, C-ΠGDM, ΠGFM, OT-ODE):
x(τ) = τ ỹ + (1−τ) T z — checked against the exact ODE solution on a Gaussian toy, for
determinism at T = 0, bit-identity at T = 1, the posterior-sampling rule of
``ctflow.reconstruct``, and its effect on real CT slices with the real-anatomy prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_conjugate import Toy

import ctflow
from ctflow.errors import MethodError
from ctflow.metrics import psnr
from ctflow.realct import validation_images
from ctflow.solvers.conjugate import conjugate, conjugate_diffusion
from ctflow.solvers.pigfm import otode, pigfm
from ctflow.units import mu_to_hu

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy() -> Toy:
    return Toy()


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_temperature_scales_the_start_noise_of_the_exact_ode(toy, temperature):
    """At 80 NFE C-ΠGFM and ΠGFM reach the ODE solution started from τ ỹ + (1−τ) T z."""
    w, tau = 8.0, 0.3
    ref = toy.reference(tau, lambda t: w * t * (1 - t), False, temperature=temperature)
    other = toy.reference(tau, lambda t: w * t * (1 - t), False)
    out = conjugate(toy.y, toy.op, prior=toy.prior, nfe=80, w=w, lam=0.0, tau=tau,
                    temperature=temperature)
    euler = pigfm(toy.y, toy.op, prior=toy.prior, nfe=400, w=w, tau=tau,
                  temperature=temperature)
    assert toy.error(out.image, ref) < 0.01
    assert toy.error(euler.image, ref) < 0.01
    assert toy.error(out.image, other) > 0.05  # T changes the solution measurably
    assert out.info["params"]["temperature"] == temperature


def test_temperature_zero_is_deterministic_and_one_is_the_default(toy):
    for solver in (conjugate, conjugate_diffusion, pigfm, otode):
        a = solver(toy.y, toy.op, prior=toy.prior, nfe=6, seed=0, temperature=0.0).image
        b = solver(toy.y, toy.op, prior=toy.prior, nfe=6, seed=7, temperature=0.0).image
        assert torch.equal(a, b), solver.__name__
        default = solver(toy.y, toy.op, prior=toy.prior, nfe=6, seed=3).image
        one = solver(toy.y, toy.op, prior=toy.prior, nfe=6, seed=3, temperature=1.0).image
        assert torch.equal(default, one), solver.__name__
        assert not torch.equal(a, default), solver.__name__


def test_bad_temperatures_are_refused(toy):
    with pytest.raises(MethodError, match="temperature"):
        conjugate(toy.y, toy.op, prior=toy.prior, nfe=4, temperature=-0.5)
    with pytest.raises(MethodError, match="temperature"):
        ctflow.reconstruct(toy.y, toy.op, method="pigfm", prior=toy.prior, nfe=4,
                           temperature=float("nan"))
    with pytest.raises(MethodError, match="posterior_samples > 1 needs temperature > 0"):
        ctflow.reconstruct(toy.y, toy.op, method="conjugate", prior=toy.prior, nfe=4,
                           posterior_samples=2, temperature=0.0)


@pytest.fixture(scope="module")
def ct30_slices():
    """Two real validation slices at 64² and their 30-view noiseless problems."""
    from ctflow.bench.tasks import get_task

    task = get_task("ct30")
    return [task.problem(gt, seed=i) for i, gt in enumerate(validation_images(64, 2))]


def test_real_anatomy_presets_start_cold_and_posterior_samples_start_warm(ct30_slices):
    """realct-64's CT presets set T = 0; posterior samples are drawn at T = 1."""
    prior = ctflow.load_prior("realct-64")
    problem = ct30_slices[0]
    res = ctflow.reconstruct(problem.y, problem.op, method="conjugate", prior=prior)
    assert res.info["params"]["temperature"] == 0.0
    sampled = ctflow.reconstruct(problem.y, problem.op, method="conjugate", prior=prior,
                                 posterior_samples=2)
    assert sampled.info["params"]["temperature"] == 1.0
    assert float(sampled.spread.max()) > 0


def test_cold_start_beats_posterior_sampling_on_real_slices(ct30_slices):
    """Measured on 8 val slices: C-ΠGFM@5 36.8 dB at T = 1, 41.8 dB at T = 0 (30 views)."""
    prior = ctflow.load_prior("realct-64")
    gains = []
    for i, problem in enumerate(ct30_slices):
        scores = []
        for temperature in (1.0, 0.0):
            res = ctflow.reconstruct(problem.y, problem.op, method="conjugate", prior=prior,
                                     seed=i, temperature=temperature)
            scores.append(psnr(mu_to_hu(res.image.double().numpy()[0, 0]), problem.gt_hu))
        gains.append(scores[1] - scores[0])
    assert np.mean(gains) > 2.0, gains
