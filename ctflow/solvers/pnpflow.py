"""PnP-Flow: plug-and-play proximal-gradient iterations with the flow as a time-dependent
denoiser (Martin et al., 2025).

With F(x) = ‖Ax − y‖²/(2σ²), its Lipschitz constant L_F = ‖A‖²/σ², N steps and
t_k = k/N (k = 0 … N−1):

    z   = x − γ_k ∇F(x) = x − γ_k Aᵀ(Ax − y)/σ²,     γ_k = gamma·(1 − t_k)^alpha / L_F
    x   = (1/m) Σ_j x̂1(t_k z + (1 − t_k) ε_j, t_k),   ε_j ~ N(0, I),
    x̂1(u, t) = u + (1 − t)·v(u, t).

Because the step is taken relative to L_F, σ cancels: z = x − gamma (1−t_k)^alpha
Aᵀ(Ax − y)/‖A‖², and noisy data are handled by the averaging denoiser and the decaying
step (``noise_std`` is recorded in ``info`` but does not change the iteration).  The start point
does not matter (t_0 = 0 replaces it by noise); x_0 = 0.

NFE: the m interpolations of one step go through the network as one batched call, which
the prior counts as 1.  The budget ``nfe`` is therefore the number of steps N (= network
calls); ``res.nfe`` is the prior's true count (N) and ``info["forwards_per_image"]`` = N·m.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..operators import LinearOperator
from ..paths import interpolate
from ..priors.base import Prior
from .common import SolverOutput, model_problem
from .context import TaskContext, call_context, resolve_options
from .defaults import (
    check_int,
    check_nonnegative,
    check_positive,
    check_steps,
    lipschitz,
    noise_stream,
    randn_like,
)

# Generic defaults (a prior's presets overlay them).
GENERIC = {"nfe": 20, "samples": 2, "gamma": 1.9, "alpha": 0.0}


def pnpflow(
    y: torch.Tensor,
    op: LinearOperator,
    *,
    prior: Prior,
    noise_std: float | None = None,
    seed: int = 0,
    progress: bool = False,
    nfe: int | None = None,
    samples: int | None = None,
    gamma: float | None = None,
    alpha: float | None = None,
    task_family: str | None = None,
    context: TaskContext | None = None,
) -> SolverOutput:
    """PnP-Flow reconstruction (update equations in the module docstring).

    Options (None → per-family default from the prior's presets): ``nfe`` steps N,
    ``samples`` m noise draws averaged per step, ``gamma`` relative step (stable below 2),
    ``alpha`` step decay exponent, ``task_family`` ``"ct"|"inpainting"|"sr"|"blur"|None``.
    """
    ctx = call_context(context, op, task_family, noise_std)
    o = resolve_options("pnpflow", GENERIC, prior, ctx, nfe=nfe, samples=samples, gamma=gamma,
                        alpha=alpha)
    steps = check_steps("pnpflow", o["nfe"])
    m = check_int("pnpflow", "samples", o["samples"], 1)
    check_positive("pnpflow", gamma=o["gamma"])
    check_nonnegative("pnpflow", alpha=o["alpha"])
    mp = model_problem(y, op, prior, noise_std)
    lip = lipschitz(op, y)
    gen = noise_stream(seed)
    nfe0 = prior.nfe

    x = torch.zeros(y.shape[0], y.shape[1], *op.in_shape, dtype=y.dtype, device=y.device)
    with torch.no_grad():
        for k in tqdm(range(steps), desc="pnpflow", disable=not progress):
            t = k / steps
            step = o["gamma"] * (1.0 - t) ** o["alpha"] / lip
            z = x - step * op.T(op(x) - mp.y)
            zm = z.unsqueeze(0).expand(m, *z.shape)
            u = interpolate(zm, randn_like(zm, gen), t)
            u = u.reshape(m * z.shape[0], *z.shape[1:])
            x1 = prior.x1_hat(u, t)  # one batched call for all m draws
            x = x1.reshape(m, *z.shape).mean(0)

    info = {"steps": steps, "sigma_model": mp.noise_std, "samples": m,
            "forwards_per_image": steps * m, "lipschitz": lip, "options": o,
            "task_family": o["task_family"]}
    return SolverOutput(image=mp.to_physical(x), nfe=prior.nfe - nfe0, info=info)
