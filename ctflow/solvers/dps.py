"""DPS, diffusion posterior sampling (Chung et al., 2023), in flow form.

The sampling ODE dx/dt = v is guided by the gradient of the residual norm of the clean
estimate (through the network, so one VJP a step):

    x̂1(x) = x + (1 − t) v(x, t),        ρ(x) = ‖y − A x̂1(x)‖      (per image)
    dx/dt = v(x, t) − (zeta/‖A‖₂) ∇_x ρ(x),
    ∇_x ρ = −(I + (1 − t) J_v)ᵀ Aᵀ (y − A x̂1)/ρ,

integrated by Euler from x_0 ~ N(0, I) at t = 0 on t_k = k/N to t = 1.  Dividing by ‖A‖₂
makes ``zeta`` dimensionless (‖∇ρ‖/‖A‖ ≤ ‖I + (1−t)J_v‖); as in DPS the step on the
normalised gradient absorbs σ, so ``noise_std`` does not change the iteration.

NFE: each step is one forward and one VJP (2 NFE), so a budget ``nfe`` gives N = nfe // 2
steps and ``res.nfe`` = 2N.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..operators import LinearOperator
from ..paths import x1_hat
from ..priors.base import Prior
from .common import SolverOutput, model_problem
from .context import TaskContext, call_context, resolve_options
from .defaults import check_positive, check_steps, lipschitz, noise_stream, randn_like

# Generic defaults (a prior's presets overlay them).
GENERIC = {"nfe": 40, "zeta": 30.0}


def dps(
    y: torch.Tensor,
    op: LinearOperator,
    *,
    prior: Prior,
    noise_std: float | None = None,
    seed: int = 0,
    progress: bool = False,
    nfe: int | None = None,
    zeta: float | None = None,
    task_family: str | None = None,
    context: TaskContext | None = None,
) -> SolverOutput:
    """DPS reconstruction (update equations in the module docstring).

    Options (None → per-family default): ``nfe`` budget (2 per step), ``zeta`` guidance
    strength, ``task_family`` ``"ct"|"inpainting"|"sr"|"blur"|None``.
    """
    ctx = call_context(context, op, task_family, noise_std)
    o = resolve_options("dps", GENERIC, prior, ctx, nfe=nfe, zeta=zeta)
    steps = check_steps("dps", o["nfe"], per_step=2)
    check_positive("dps", zeta=o["zeta"])
    mp = model_problem(y, op, prior, noise_std)
    scale = o["zeta"] / lipschitz(op, y) ** 0.5
    gen = noise_stream(seed)
    nfe0 = prior.nfe

    shape = (y.shape[0], y.shape[1], *op.in_shape)
    x = randn_like(torch.empty(shape, dtype=y.dtype, device=y.device), gen)
    dt = 1.0 / steps
    for k in tqdm(range(steps), desc="dps", disable=not progress):
        t = k * dt
        v, grad = _velocity_and_residual_grad(prior, op, mp.y, x, t)
        x = x + dt * (v - scale * grad)

    info = {"steps": steps, "sigma_model": mp.noise_std, "options": o,
            "task_family": o["task_family"]}
    return SolverOutput(image=mp.to_physical(x), nfe=prior.nfe - nfe0, info=info)


def _velocity_and_residual_grad(
    prior: Prior, op: LinearOperator, y: torch.Tensor, x: torch.Tensor, t: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(v(x, t), ∇_x Σ_b ‖y_b − A x̂1(x_b)‖): one forward (counted by the prior) and one
    VJP by autograd, counted here."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        v = prior.velocity(xg, t)
        x1 = x1_hat(xg, t, v)
        res = (y - op(x1)).flatten(1)
        loss = res.norm(dim=1).sum()
        (grad,) = torch.autograd.grad(loss, xg)
    prior.nfe += 1  # the vector–Jacobian product through the network
    return v.detach(), grad
