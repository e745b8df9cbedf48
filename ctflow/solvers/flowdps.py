"""FlowDPS: flow-driven posterior sampling with decoupled clean and noise estimates
(Kim et al., 2025), on the pixel-space flow.

N steps, t_k = k/N, Δ = 1/N, t' = t_k + Δ, x_0 ~ N(0, I).  Each step:

    v    = v(x, t_k),   x̂1 = x + (1 − t_k) v,   ε̂ = x − t_k v             (1 NFE)
    u_0  = x̂1,   u_{j+1} = u_j − (eta/‖A‖²) Aᵀ(A u_j − y),  j < dc_steps    (x̂1_y = u_J)
    x̄1  = t_k x̂1 + (1 − t_k) x̂1_y
    ε̃   = √(1 − t') ε̂ + √t' ε,   ε ~ N(0, I)
    x    = t' x̄1 + (1 − t') ε̃

so the data step acts on the clean estimate only (no Jacobian of the network, no VJP) and
the re-noising mixes the estimated noise with fresh noise.  The gradient steps are on
½‖A u − y‖² with a step relative to its Lipschitz constant ‖A‖²; σ enters only through
that choice (``noise_std`` does not change the iteration: stop early via small
``dc_steps``·``eta`` for noisy data, as tuned per family).

NFE: one forward per step, so the budget ``nfe`` is the number of steps and
``res.nfe`` = N.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from ..operators import LinearOperator
from ..paths import interpolate, x1_hat
from ..priors.base import Prior
from .common import SolverOutput, model_problem
from .context import TaskContext, call_context, resolve_options
from .defaults import (
    check_int,
    check_positive,
    check_steps,
    lipschitz,
    noise_stream,
    randn_like,
)

# Generic defaults (a prior's presets overlay them).
GENERIC = {"nfe": 20, "dc_steps": 30, "eta": 1.9}


def flowdps(
    y: torch.Tensor,
    op: LinearOperator,
    *,
    prior: Prior,
    noise_std: float | None = None,
    seed: int = 0,
    progress: bool = False,
    nfe: int | None = None,
    dc_steps: int | None = None,
    eta: float | None = None,
    task_family: str | None = None,
    context: TaskContext | None = None,
) -> SolverOutput:
    """FlowDPS reconstruction (update equations in the module docstring).

    Options (None → per-family default): ``nfe`` steps N, ``dc_steps`` gradient steps on
    the clean estimate per flow step, ``eta`` their step relative to 1/‖A‖² (stable below
    2), ``task_family`` ``"ct"|"inpainting"|"sr"|"blur"|None``.
    """
    ctx = call_context(context, op, task_family, noise_std)
    o = resolve_options("flowdps", GENERIC, prior, ctx, nfe=nfe, dc_steps=dc_steps, eta=eta)
    steps = check_steps("flowdps", o["nfe"])
    check_positive("flowdps", eta=o["eta"])
    check_int("flowdps", "dc_steps", o["dc_steps"], 0)
    mp = model_problem(y, op, prior, noise_std)
    lip = lipschitz(op, y)
    gen = noise_stream(seed)
    nfe0 = prior.nfe

    shape = (y.shape[0], y.shape[1], *op.in_shape)
    x = randn_like(torch.empty(shape, dtype=y.dtype, device=y.device), gen)
    with torch.no_grad():
        for k in tqdm(range(steps), desc="flowdps", disable=not progress):
            t, t_next = k / steps, (k + 1) / steps
            v = prior.velocity(x, t)
            x1 = x1_hat(x, t, v)
            eps = x - t * v
            x1_y = x1
            for _ in range(o["dc_steps"]):
                x1_y = x1_y - (o["eta"] / lip) * op.T(op(x1_y) - mp.y)
            x1_bar = interpolate(x1, x1_y, t)
            eps_mix = math.sqrt(1.0 - t_next) * eps + math.sqrt(t_next) * randn_like(x, gen)
            x = interpolate(x1_bar, eps_mix, t_next)

    info = {"steps": steps, "sigma_model": mp.noise_std, "lipschitz": lip, "options": o,
            "task_family": o["task_family"]}
    return SolverOutput(image=mp.to_physical(x), nfe=prior.nfe - nfe0, info=info)
