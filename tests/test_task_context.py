"""The task context of a call: family from the operator class, mask kind computed in ctflow,
built once per ``ctflow.reconstruct`` call and handed to the solver."""

from __future__ import annotations

import pytest
import torch

import ctflow
from ctflow.errors import MethodError
from ctflow.operators import (
    FanBeam2D,
    GaussianBlur,
    Identity,
    Inpainting,
    ParallelBeam2D,
    SuperResolution,
)
from ctflow.priors import GaussianPrior
from ctflow.solvers import SOLVERS, get_solver
from ctflow.solvers import context as context_module
from ctflow.solvers.context import TaskContext, edge_fraction, mask_kind, task_context


def test_inpainting_mask_kind():
    """edge_fraction: share of missing pixels with an observed 4-neighbour."""
    box = torch.ones(8, 8, dtype=torch.bool)
    box[2:6, 2:6] = False  # 16 missing, the 12 on the ring touch data
    assert edge_fraction(box) == 12 / 16 and mask_kind(Inpainting(box)) == "scattered"
    box = torch.ones(16, 16, dtype=torch.bool)
    box[2:14, 2:14] = False  # 144 missing, 44 on the ring
    assert edge_fraction(box) == pytest.approx(44 / 144)
    assert mask_kind(Inpainting(box)) is None
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 == 0
    assert edge_fraction(checker) == 1.0 and mask_kind(Inpainting(checker)) == "scattered"
    assert edge_fraction(torch.ones(4, 4, dtype=torch.bool)) == 1.0
    assert edge_fraction(torch.zeros(4, 4, dtype=torch.bool)) == 0.0


def test_family_is_an_operator_attribute_and_the_context_holds_it():
    ops = {"ct": ParallelBeam2D(image_size=16, views=8), "sr": SuperResolution(16, 2),
           "blur": GaussianBlur(16, 1.0), "inpainting": Inpainting(torch.ones(16, 16) > 0)}
    assert FanBeam2D.family == "ct"
    for family, op in ops.items():
        ctx = task_context(op, None, 0.1)
        assert (ctx.family, ctx.noisy, ctx.size) == (family, True, 16)
    assert task_context(Identity(16)).family is None
    assert task_context(Identity(16), "blur").family == "blur"  # given wins
    assert not task_context(ops["ct"], None, 0.0).noisy
    assert task_context(ops["sr"]).mask is None
    with pytest.raises(MethodError, match="task_family"):
        task_context(ops["sr"], "mri")


# -- one context per ctflow.reconstruct call ------------------------------------------------

N = 16


def _problem(seed: int = 0):
    """A 16² CT problem (clean data) and a Gaussian prior."""
    op = ParallelBeam2D(image_size=N, views=8)
    x = torch.rand(1, 1, N, N, generator=torch.Generator().manual_seed(seed)) * 0.02
    return op(x), op, GaussianPrior(torch.full((N, N), 0.5), torch.full((N, N), 0.1))


@pytest.fixture
def built(monkeypatch):
    """The contexts ``task_context`` builds while the test runs (a counting wrapper)."""
    contexts: list[TaskContext] = []
    original = context_module.task_context

    def counting(*args, **kwargs):
        contexts.append(original(*args, **kwargs))
        return contexts[-1]

    monkeypatch.setattr(context_module, "task_context", counting)
    return contexts


@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("method, options", [
    ("conjugate", {"nfe": 2}), ("dps", {"nfe": 2}),
    ("msflow", {"shooting": 2, "segment_steps": 1, "iters": 1, "init": "conjugate"}),
    ("dflow", {"steps": 1, "iters": 1, "init": "conjugate"}), ("cgls", {"iters": 2}),
])
def test_reconstruct_builds_the_context_once_and_a_direct_call_matches(built, method,
                                                                       options):
    """Once per call (also through the warm start of msflow / dflow), reported in info;
    the solver called directly builds the same context itself and returns the same bytes."""
    y, op, prior = _problem()
    res = ctflow.reconstruct(y, op, method=method, prior=prior, noise_std=0.01,
                             consistency="off", seed=3, **options)
    assert len(built) == 1
    assert res.info["context"] == {"family": "ct", "noisy": True, "mask": None, "size": N}
    if not SOLVERS[method].needs_prior:
        return
    solve = get_solver(method)[0]
    out = solve(y, op, prior=prior, noise_std=0.01, seed=3, **options)
    assert built[1] == built[0] and len(built) == 2
    assert torch.equal(out.image, res.image) and out.nfe == res.nfe


@pytest.mark.usefixtures("private_cache")
def test_the_context_follows_photons_and_task_family(built):
    """Photon counts make the context noisy (the solver takes its level from them), as the
    solver's own context is; ``task_family`` sets the family and is still validated."""
    y, op, prior = _problem()
    res = ctflow.reconstruct(y, op, method="pigfm", prior=prior, nfe=2, photons=1e4,
                             consistency="off", task_family="blur")
    assert res.info["context"] == {"family": "blur", "noisy": True, "mask": None, "size": N}
    assert res.info["params"]["task_family"] == "blur"
    out = get_solver("pigfm")[0](y, op, prior=prior, nfe=2, photons=1e4, task_family="blur")
    assert built == [built[0]] * 2 and torch.equal(out.image, res.image)
    with pytest.raises(MethodError, match="task_family"):
        ctflow.reconstruct(y, op, method="pigfm", prior=prior, task_family="mri")
    with pytest.raises(MethodError, match="contradicts"):
        get_solver("pigfm")[0](y, op, prior=prior, nfe=2, task_family="sr",
                               context=built[0])
