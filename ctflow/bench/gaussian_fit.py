"""Exact-velocity Gaussian priors fitted to training phantoms: stand-ins for a trained network
when none is available (smoke tests of the solvers; their numbers compare integrators, not
priors).  Two model-space normalisations, one per benchmark script that offers them."""

from __future__ import annotations

import torch

from ..phantoms import PhantomDataset
from ..priors import GaussianPrior
from ..units import hu_to_mu


def fitted_gaussian_prior(size: int, count: int = 1024) -> GaussianPrior:
    """Mean and PCA covariance of ``count`` *training* phantoms in a standardised model
    space (scale 1/(2·std), zero mean; variances floored at 1e-4) — ``--prior gaussian-fit``
    of scripts/bench_conjugate.py."""
    data = PhantomDataset.split("train", size=size, length=count)
    mu = torch.stack([hu_to_mu(data[i][0].double()) for i in range(count)]).flatten(1)
    scale = float(1.0 / (2 * mu.std()))
    offset = float(-scale * mu.mean())
    xm = scale * mu + offset
    mean = xm.mean(0)
    _, svals, vt = torch.linalg.svd(xm - mean, full_matrices=True)
    var = torch.full((size * size,), 1e-4, dtype=torch.float64)
    var[: len(svals)] = torch.clamp(svals**2 / (count - 1), min=1e-4)
    prior = GaussianPrior(mean.view(size, size), var.view(size, size),
                          basis=vt.T.contiguous())
    prior.scale, prior.offset = scale, offset
    return prior


def unit_range_gaussian_prior(size: int, count: int = 512) -> GaussianPrior:
    """Mean and PCA covariance of ``count`` training phantoms in a model space with unit
    half-range (variances floored at 1e-4) — ``--prior gaussian`` of
    scripts/bench_msflow.py."""
    data = PhantomDataset.split("train", size=size, length=count)
    mu = torch.stack([hu_to_mu(data[i][0].double()).flatten() for i in range(count)])
    lo, hi = float(mu.min()), float(mu.max())
    scale = 2.0 / (hi - lo)
    offset = -1.0 - scale * lo
    xm = scale * mu + offset
    mean = xm.mean(0)
    _, s, vt = torch.linalg.svd(xm - mean, full_matrices=True)
    var = torch.full((size * size,), 1e-4, dtype=torch.float64)
    var[: len(s)] = (s**2 / (count - 1)).clamp_min(1e-4)
    prior = GaussianPrior(mean.view(size, size), var.view(size, size), basis=vt.T.contiguous())
    prior.scale, prior.offset = scale, offset
    return prior
