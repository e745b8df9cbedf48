"""Pieces shared by the latent-optimisation solvers (MS-Flow, D-Flow).

* the radial Gaussian regulariser on the initial noise z ∈ R^d,

      R(z) = ‖z‖²/2 − (d−1)·log‖z‖,     ∇R(z) = z − (d−1)·z/‖z‖²,

  the negative log-density of ‖z‖ for z ~ N(0, I) (a chi distribution), minimal on the
  sphere ‖z‖ = √(d−1): it keeps z on the shell where Gaussian noise lives without pulling
  it to 0 as ‖z‖²/2 alone would;
* explicit Euler maps of the flow ODE dx/dt = v(x, t) between two times, batched with a
  per-item start and end time, without a graph (``euler_flow``) and their exact
  vector–Jacobian product through the stored states (``euler_vjp``);
* the data-term weight σ used when the measurements are noiseless;
* the C-ΠGFM warm start both can begin from.
"""

from __future__ import annotations

import torch

from ..operators import LinearOperator
from ..priors.base import Prior
from .conjugate import conjugate

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


def _times(t0: torch.Tensor, t1: torch.Tensor, steps: int, j: int) -> torch.Tensor:
    """Time of Euler step j (of ``steps``) on the per-item interval [t0, t1]."""
    return t0 + (t1 - t0) * (j / steps)


def euler_flow(
    prior: Prior, z: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, steps: int,
    keep_states: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Φ(z): ``steps`` Euler steps u ← u + h·v(u, t) from t0 to t1 (per item, h = (t1−t0)/steps).

    One batched network call per step, no autograd graph.  Returns the end state and, if
    ``keep_states``, the states u_0 … u_{steps−1} at which v was evaluated (for ``euler_vjp``).
    """
    h = ((t1 - t0) / steps).view(-1, *([1] * (z.ndim - 1))).to(z.dtype)
    states: list[torch.Tensor] = []
    u = z
    with torch.no_grad():
        for j in range(steps):
            if keep_states:
                states.append(u)
            u = u + h * prior.velocity(u, _times(t0, t1, steps, j))
    return u, states


def euler_vjp(
    prior: Prior, states: list[torch.Tensor], t0: torch.Tensor, t1: torch.Tensor,
    cotangent: torch.Tensor,
) -> torch.Tensor:
    """J_Φᵀ·w for the Euler map Φ through the stored states, one VJP per step (reverse order):

        a ← w;  for j = M−1 … 0:  a ← a + h·J_v(u_j, t_j)ᵀ a;  return a.

    Only one step's network graph exists at a time, so memory does not grow with M.
    """
    steps = len(states)
    h = ((t1 - t0) / steps).view(-1, *([1] * (cotangent.ndim - 1))).to(cotangent.dtype)
    a = cotangent
    for j in reversed(range(steps)):
        _, g = prior.velocity_vjp(states[j], _times(t0, t1, steps, j), a)
        a = a + h * g
    return a


WARM_START_NFE = 5  # C-ΠGFM evaluations of init="conjugate" (MS-Flow, D-Flow)


def warm_start(y: torch.Tensor, op: LinearOperator, prior: Prior, noise_std: float | None,
               seed: int, family: str | None, photons: float | None = None,
               electronic_noise: float = 0.0) -> torch.Tensor:
    """init="conjugate": the C-ΠGFM reconstruction at its tuned ``WARM_START_NFE`` defaults
    (with the pre-log Poisson weights of ``photons`` if given), in model space (its
    evaluations count in ``prior.nfe``)."""
    warm = conjugate(y, op, prior=prior, noise_std=noise_std, seed=seed,
                     nfe=WARM_START_NFE, task_family=family, photons=photons,
                     electronic_noise=electronic_noise)
    return prior.to_model(warm.image).to(y.dtype)


def invert_euler(prior: Prior, x1: torch.Tensor, grid: list[float], steps: int
                 ) -> list[torch.Tensor]:
    """Run the ODE backwards from x1 at t = grid[-1] to grid[0] with ``steps`` Euler steps per
    interval (u ← u − h·v(u, t) at the interval's end time); returns the states at every
    grid time, in increasing time order."""
    out = [x1]
    u = x1
    b = x1.shape[0]
    with torch.no_grad():
        for k in reversed(range(len(grid) - 1)):
            h = (grid[k + 1] - grid[k]) / steps
            for j in range(steps):
                t = torch.full((b,), grid[k + 1] - j * h, dtype=x1.dtype, device=x1.device)
                u = u - h * prior.velocity(u, t)
            out.append(u)
    return out[::-1]
