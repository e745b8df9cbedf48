"""Pieces shared by the latent-optimisation solvers (MS-Flow, D-Flow).

* the radial Gaussian regulariser on the initial noise z ∈ R^d,

      R(z) = ‖z‖²/2 − (d−1)·log‖z‖,     ∇R(z) = z − (d−1)·z/‖z‖²,

  the negative log-density of ‖z‖ for z ~ N(0, I) (a chi distribution), minimal on the
  sphere ‖z‖ = √(d−1): it keeps z on the shell where Gaussian noise lives without pulling
  it to 0 as ‖z‖²/2 alone would;
* (re-exported from ``ctflow.integrators``) explicit Euler maps of the flow ODE between two
  per-item times (``euler_flow`` = ``integrators.euler``), their exact vector–Jacobian
  product (``euler_vjp``) and the backward run from data to noise (``invert_euler``);
* the data-term weight σ used when the measurements are noiseless;
* the C-ΠGFM warm start both can begin from.
"""

from __future__ import annotations

import torch

from ..integrators import euler as euler_flow
from ..integrators import euler_vjp, invert_euler
from ..operators import LinearOperator
from ..priors.base import Prior
from .conjugate import conjugate
from .context import TaskContext

# Model-space data std used for noiseless data, relative to the RMS of the measurements:
# σ = NOISELESS_REL_STD · RMS(y).  The data term then acts as a (strong) penalty.
NOISELESS_REL_STD = 1e-3


def radial_reg(z: torch.Tensor) -> torch.Tensor:
    """R(z) = ‖z‖²/2 − (d−1)·log‖z‖ per batch item (shape (B,))."""
    d = z[0].numel()
    n2 = z.flatten(1).pow(2).sum(1)
    return 0.5 * n2 - 0.5 * (d - 1) * torch.log(n2.clamp_min(1e-30))


def radial_reg_grad(z: torch.Tensor) -> torch.Tensor:
    """∇R(z) = z − (d−1)·z/‖z‖² per batch item."""
    d = z[0].numel()
    n2 = z.flatten(1).pow(2).sum(1).clamp_min(1e-30).view(-1, *([1] * (z.ndim - 1)))
    return z - (d - 1) * z / n2


def data_sigma(y: torch.Tensor, noise_std: float) -> float:
    """σ of the data term: the model-space noise std, or NOISELESS_REL_STD·RMS(y) if it is 0."""
    if noise_std > 0:
        return float(noise_std)
    rms = float(y.detach().double().pow(2).mean().sqrt())
    return NOISELESS_REL_STD * rms if rms > 0 else NOISELESS_REL_STD


WARM_START_NFE = 5  # C-ΠGFM evaluations of init="conjugate" (MS-Flow, D-Flow)


def warm_start(y: torch.Tensor, op: LinearOperator, prior: Prior, noise_std: float | None,
               seed: int, context: TaskContext, photons: float | None = None,
               electronic_noise: float = 0.0) -> torch.Tensor:
    """init="conjugate": the C-ΠGFM reconstruction at its tuned ``WARM_START_NFE`` defaults
    for the caller's ``context`` (with the pre-log Poisson weights of ``photons`` if given),
    in model space (its evaluations count in ``prior.nfe``).

    On noisy data the warm start is a posterior sample (temperature 1) whatever the presets'
    temperature: the latent methods invert it into z and then optimise z, which needs a
    latent of typical norm.  Measured with realct-64 (64², 4 validation slices, 30 and 60
    views at 1e5, μ from 10 to 1e5): MS-Flow from the T = 0 estimate 32.9 dB at its best μ
    (1000), from a T = 1 sample 34.7 dB (μ = 300).  On noiseless data the presets' (point)
    estimate is kept: MS-Flow then returns it unchanged (64², 30 views, 8 slices: 41.8 dB,
    against 36.7 dB from a T = 1 sample)."""
    temperature = 1.0 if context.noisy else None
    warm = conjugate(y, op, prior=prior, noise_std=noise_std, seed=seed,
                     nfe=WARM_START_NFE, context=context, photons=photons,
                     electronic_noise=electronic_noise, temperature=temperature)
    return prior.to_model(warm.image).to(y.dtype)


__all__ = ["data_sigma", "euler_flow", "euler_vjp", "invert_euler", "radial_reg",
           "radial_reg_grad", "warm_start"]
