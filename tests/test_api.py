"""ctflow.reconstruct argument checking and the solver registry."""

import pytest
import torch

import ctflow
from ctflow.errors import InputError, MethodError, PriorError
from ctflow.operators import LinearOperator
from ctflow.priors import GaussianPrior
from ctflow.solvers import SOLVERS


class Sub2(LinearOperator):
    """Keep every second pixel of each row (a tiny exact operator for API tests)."""

    def __init__(self, n: int):
        super().__init__((n, n), (n, n // 2))

    def _apply(self, x):
        return x[..., ::2]

    def _apply_adjoint(self, y):
        out = torch.zeros(*y.shape[:-1], self.in_shape[1], dtype=y.dtype, device=y.device)
        out[..., ::2] = y
        return out


def test_registry_names_match_design():
    expected = {"fbp", "cgls", "sirt", "tv", "pigfm", "otode", "conjugate",
                "conjugate-diffusion", "msflow", "dflow", "pnpflow", "flowdps", "dps", "flower",
                "mbir"}  # the interface contract's names, plus the model-based classical method
    assert set(SOLVERS) == expected


def test_unknown_method():
    op = Sub2(8)
    with pytest.raises(MethodError, match="unknown method"):
        ctflow.reconstruct(torch.zeros(1, 1, 8, 4), op, method="nope")


@pytest.mark.parametrize("bad", [torch.zeros(1, 1, 8, 5), torch.zeros(8, 4),
                                 torch.full((1, 1, 8, 4), float("nan"))])
def test_bad_measurements(bad):
    with pytest.raises(InputError):
        ctflow.reconstruct(bad, Sub2(8), method="cgls")


def test_prior_size_mismatch():
    prior = GaussianPrior(torch.zeros(4, 4), torch.ones(4, 4))
    with pytest.raises(PriorError, match=r"serves 4² images"):
        ctflow.reconstruct(torch.zeros(1, 1, 8, 4), Sub2(8), method="pigfm", prior=prior)


def test_posterior_mean_of_samples():
    """posterior_samples=K runs K seeded posterior samples as one batch and returns their mean and
    per-pixel spread; the mean is closer to the truth than one sample, and the same seed
    gives the same result."""
    from ctflow.metrics import psnr

    prior = GaussianPrior(torch.zeros(4, 4), torch.ones(4, 4))
    op = Sub2(4)
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = op(x)
    one = ctflow.reconstruct(y, op, method="pigfm", prior=prior, nfe=8, seed=0)
    mean = ctflow.reconstruct(y, op, method="pigfm", prior=prior, nfe=8, seed=0,
                              posterior_samples=16)
    again = ctflow.reconstruct(y, op, method="pigfm", prior=prior, nfe=8, seed=0,
                               posterior_samples=16)
    assert mean.image.shape == x.shape and mean.spread.shape == x.shape
    assert torch.equal(mean.image, again.image)
    assert mean.nfe == 16 * one.nfe and mean.info["posterior_samples"] == 16
    assert mean.info["network_calls"] == one.nfe
    assert float(mean.spread.mean()) > 0.05  # the unobserved pixels vary between samples
    assert psnr(mean.image, x) > psnr(one.image, x) + 1.0
    with pytest.raises(MethodError, match="deterministic"):
        ctflow.reconstruct(y, op, method="cgls", posterior_samples=4)
    with pytest.raises(MethodError, match="positive integer"):
        ctflow.reconstruct(y, op, method="pigfm", prior=prior, posterior_samples=0)


def test_posterior_samples_leave_pnpflows_own_samples_option_alone():
    """PnP-Flow's ``samples`` (denoiser draws per step) is its own option, not the API's
    posterior averaging."""
    prior = GaussianPrior(torch.zeros(4, 4), torch.ones(4, 4))
    op = Sub2(4)
    y = op(torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3)))
    res = ctflow.reconstruct(y, op, method="pnpflow", prior=prior, nfe=4, seed=0, samples=3)
    assert res.image.shape == (1, 1, 4, 4) and "posterior_samples" not in res.info
