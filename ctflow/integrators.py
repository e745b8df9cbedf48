"""Explicit Euler integration of the flow ODE dx/dt = v(x, t), its adjoint, its inversion,
and the seeded noise every sampler starts from.

* ``euler``: u ← u + h·v(u, t_j), t_j = t0 + (t1−t0)·(j/M), h = (t1−t0)/M, per batch item;
* ``euler_vjp``: J_Φᵀ·w through the stored states of ``euler`` (reverse order, one VJP a step);
* ``invert_euler``: the ODE run backwards from data to noise over a time grid;
* ``euler_sample``: unconditional sampling from t = 0 to 1 on the grid i·dt, dt = 1/M;
* ``seeded_noise`` / ``noise_stream`` / ``randn_like``: standard normal noise drawn on the
  CPU from a seeded generator, so the same seed gives the same noise on any device.

Network evaluations are counted by the prior (``Prior.nfe``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .errors import MethodError

if TYPE_CHECKING:
    from .priors.base import Prior


def step_times(t0: torch.Tensor | float, t1: torch.Tensor | float, steps: int, j: int
               ) -> torch.Tensor | float:
    """Time t_j = t0 + (t1−t0)·(j/M) of Euler step j of M on the (per-item) interval [t0, t1]."""
    return t0 + (t1 - t0) * (j / steps)


def _step_size(t0: torch.Tensor, t1: torch.Tensor, steps: int, like: torch.Tensor
               ) -> torch.Tensor:
    """h = (t1−t0)/M per item, shaped to broadcast over ``like`` (B, ...)."""
    return ((t1 - t0) / steps).view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def euler(
    prior: Prior, z: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, steps: int,
    keep_states: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Φ(z): ``steps`` Euler steps u ← u + h·v(u, t_j) from t0 to t1 (per item (B,) tensors).

    One batched network call per step, no autograd graph.  Returns the end state and, if
    ``keep_states``, the states u_0 … u_{M−1} at which v was evaluated (for ``euler_vjp``).
    """
    h = _step_size(t0, t1, steps, z)
    states: list[torch.Tensor] = []
    u = z
    with torch.no_grad():
        for j in range(steps):
            if keep_states:
                states.append(u)
            u = u + h * prior.velocity(u, step_times(t0, t1, steps, j))
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
    h = _step_size(t0, t1, steps, cotangent)
    a = cotangent
    for j in reversed(range(steps)):
        _, g = prior.velocity_vjp(states[j], step_times(t0, t1, steps, j), a)
        a = a + h * g
    return a


def invert_euler(prior: Prior, x1: torch.Tensor, grid: list[float], steps: int
                 ) -> list[torch.Tensor]:
    """Run the ODE backwards from x1 at t = grid[-1] to grid[0] with ``steps`` Euler steps per
    interval (u ← u − h·v(u, t) at the step's end time); returns the states at every grid
    time, in increasing time order."""
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


@torch.no_grad()
def euler_sample(prior: Prior, z: torch.Tensor, steps: int) -> torch.Tensor:
    """Euler on dx/dt = v from t = 0 (state z) to 1: x ← x + dt·v(x, i·dt), dt = 1/M."""
    x = z
    dt = 1.0 / steps
    for i in range(steps):
        x = x + dt * prior.velocity(x, i * dt)
    return x


def noise_stream(seed: int) -> torch.Generator:
    """The CPU generator a sampler draws all its noise from (same seed, same output)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MethodError(f"seed must be an integer, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def randn_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on the CPU from ``gen``."""
    return torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x.device, x.dtype)


def seeded_noise(shape: tuple[int, ...], seed: int, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise from a CPU generator (same seed, same noise on any device)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(like.device, like.dtype)
