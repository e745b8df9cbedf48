"""D-Flow: L-BFGS through the full ODE, honest NFE accounting, seeding, options."""

from __future__ import annotations

import pytest
import torch

import ctflow
from ctflow.errors import MethodError
from ctflow.operators import Inpainting
from ctflow.priors import GaussianPrior, load_prior
from ctflow.priors.presets import select_record
from ctflow.solvers.context import mask_kind
from ctflow.solvers.dflow import GENERIC, dflow, rollout
from ctflow.solvers.latent_reg import invert_euler

N = 8


def _problem(shift: float = 0.0) -> tuple[GaussianPrior, Inpainting, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    mean = 0.3 * torch.randn(N, N, generator=gen) + shift
    var = 0.05 + 0.5 * torch.rand(N, N, generator=gen)
    prior = GaussianPrior(mean, var)
    x1 = prior.sample_data(2, seed=1).float()
    op = Inpainting(torch.rand(N, N, generator=torch.Generator().manual_seed(3)) > 0.5)
    return prior, op, op(x1), x1


def test_loss_decreases_and_image_is_the_best_rollout() -> None:
    prior, op, y, _ = _problem()
    out = dflow(y, op, prior=prior, noise_std=0.05, steps=8, iters=15, init="noise")
    h = out.info["history"]
    best = min(range(len(h["objective"])), key=h["objective"].__getitem__)
    assert h["objective"][best] < h["objective"][0] - 0.5 * abs(h["objective"][0])
    # the returned image is the rollout whose data term was recorded at the best evaluation
    # (GaussianPrior has scale 1 and offset 0: model space = physical space)
    data = float((op(out.image) - y).pow(2).sum() / (2 * 0.05**2))
    assert data == pytest.approx(h["data"][best], rel=1e-4)


def test_nfe_counts_forwards_and_backwards() -> None:
    prior, op, y, _ = _problem()
    steps = 6
    out = dflow(y, op, prior=prior, noise_std=0.05, steps=steps, iters=5, init="inverse")
    evals = out.info["evaluations"]
    assert evals >= 5
    assert out.nfe == prior.nfe == steps + evals * 2 * steps  # inversion + (N fwd + N VJP)/eval
    prior.reset_nfe()
    capped = dflow(y, op, prior=prior, noise_std=0.05, steps=steps, iters=50, nfe=100,
                   init="inverse")
    assert capped.nfe <= 100 and capped.info["evaluations"] == (100 - steps) // (2 * steps)


def test_conjugate_warm_start_counts_its_evaluations() -> None:
    """init="conjugate": C-ΠGFM (5 NFE), then the backward run from its image (N NFE); the
    first rollout lands near the warm image and L-BFGS only improves on it."""
    prior, op, y, _ = _problem()
    steps = 64
    warm = ctflow.reconstruct(y, op, method="conjugate", prior=prior, noise_std=0.05, nfe=5,
                              task_family="inpainting")
    out = dflow(y, op, prior=prior, noise_std=0.05, steps=steps, iters=5, init="conjugate")
    h = out.info["history"]
    assert out.nfe == 5 + steps + out.info["evaluations"] * 2 * steps == h["nfe"][-1]
    start = rollout(prior, invert_euler(prior, warm.image, [0.0, 1.0], steps)[0], steps)
    assert float((start - warm.image).norm() / warm.image.norm()) < 0.05
    cold = dflow(y, op, prior=prior, noise_std=0.05, steps=steps, iters=5, init="noise")
    assert h["data"][0] < 0.2 * cold.info["history"]["data"][0]
    assert min(h["objective"]) <= h["objective"][0]


def test_inverse_init_recovers_rollout_start() -> None:
    prior, _, _, x1 = _problem()
    z = invert_euler(prior, x1, [0.0, 1.0], 64)[0]
    back = rollout(prior, z, 64)
    assert float((back - x1).norm() / x1.norm()) < 0.05  # both Euler, errors O(1/N)


def test_seeded_and_better_than_pseudo_inverse() -> None:
    prior, op, y, x1 = _problem(shift=1.0)
    prior = GaussianPrior(prior.mean.float(), 0.2 * prior.var.float())
    x1 = prior.sample_data(1, seed=7).float()
    y = op(x1)
    runs = [ctflow.reconstruct(y, op, method="dflow", prior=prior, seed=s, steps=8, iters=10,
                               init="noise") for s in (0, 0, 1)]
    assert torch.equal(runs[0].image, runs[1].image)
    assert not torch.equal(runs[0].image, runs[2].image)
    err = float((runs[0].image - x1).pow(2).mean().sqrt())
    err_pinv = float((op.pinv(y) - x1).pow(2).mean().sqrt())
    assert err < 0.5 * err_pinv


def test_bad_options_raise() -> None:
    prior, op, y, _ = _problem()
    with pytest.raises(MethodError):
        dflow(y, op, prior=prior, steps=0)
    with pytest.raises(MethodError):
        dflow(y, op, prior=prior, init="zeros")


def test_family_defaults_are_used_and_explicit_options_win() -> None:
    prior, op, y, _ = _problem()
    prior.presets = load_prior("phantom-64").presets
    for family, expect in ((None, "inpainting"), ("sr", "sr")):
        out = dflow(y, op, prior=prior, noise_std=0.05, task_family=family, iters=1)
        record = select_record(prior.presets.records("dflow"), expect, True, mask_kind(op), N,
                               None, {})
        table = {**GENERIC, **record["options"]}
        used = out.info["options"]
        assert used["task_family"] == expect and used["iters"] == 1
        assert (used["steps"], used["lam"], used["init"]) == (table["steps"], table["lam"],
                                                              table["init"])
        assert out.info["euler_steps"] == table["steps"]
    out = dflow(y, op, prior=prior, noise_std=0.05, steps=3, iters=1, init="noise")
    assert (out.info["options"]["steps"], out.info["options"]["init"]) == (3, "noise")
    with pytest.raises(MethodError):
        dflow(y, op, prior=prior, task_family="mri")
