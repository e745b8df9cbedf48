"""Flower: flow-matching restoration by denoise → proximal refinement → re-noise
(Pourya et al., 2025).

N steps, t_k = k/N, Δ = 1/N, t' = t_k + Δ, x_0 ~ N(0, I).  Each step:

    x̂1 = x + (1 − t_k) v(x, t_k)                                          (1 NFE)
    ν²  = nu_scale² · r_t²,   r_t² = (1 − t_k)² / (t_k² + (1 − t_k)²)
    x̃1 = argmin_u ‖Au − y‖²/(2σ²) + ‖u − x̂1‖²/(2ν²)
        ⇔ (AᵀA + ρ I) x̃1 = Aᵀy + ρ x̂1,   ρ = σ²/ν²      (CG from x̂1, ``cg_iters`` steps)
    x   = t' x̃1 + (1 − t') ε,   ε ~ N(0, I)

so the last step returns x̃1.  r_t² is the variance of x1 given x_t for unit-variance
data, i.e. the step treats the clean estimate as a Gaussian of that width.  σ is the
model-space noise std of y; noiseless data (``noise_std`` None or 0) use the floor
σ_min = 1e-3·‖A‖₂ (``defaults.SIGMA_FLOOR_REL``), which makes the refinement a near-exact
projection on {Au = y}.  Operators with closed-form ``solve_normal`` (masks, FFT blur)
ignore ``cg_iters``.

NFE: one forward per step; the budget ``nfe`` is the number of steps and ``res.nfe`` = N.
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
    check_positive,
    check_steps,
    effective_sigma,
    lipschitz,
    noise_stream,
    randn_like,
)

# Generic defaults (a prior's presets overlay them).
GENERIC = {"nfe": 20, "nu_scale": 2.0, "cg_iters": 20}


def flower(
    y: torch.Tensor,
    op: LinearOperator,
    *,
    prior: Prior,
    noise_std: float | None = None,
    seed: int = 0,
    progress: bool = False,
    nfe: int | None = None,
    nu_scale: float | None = None,
    cg_iters: int | None = None,
    task_family: str | None = None,
    context: TaskContext | None = None,
) -> SolverOutput:
    """Flower reconstruction (update equations in the module docstring).

    Options (None → per-family default): ``nfe`` steps N, ``nu_scale`` factor on the
    prior width ν, ``cg_iters`` CG iterations of the proximal step, ``task_family``
    ``"ct"|"inpainting"|"sr"|"blur"|None``.
    """
    ctx = call_context(context, op, task_family, noise_std)
    o = resolve_options("flower", GENERIC, prior, ctx, nfe=nfe, nu_scale=nu_scale,
                        cg_iters=cg_iters)
    steps = check_steps("flower", o["nfe"])
    check_positive("flower", nu_scale=o["nu_scale"])
    check_int("flower", "cg_iters", o["cg_iters"], 1)
    mp = model_problem(y, op, prior, noise_std)
    lip = lipschitz(op, y)
    sigma = effective_sigma(mp.noise_std, lip)
    gen = noise_stream(seed)
    nfe0 = prior.nfe

    shape = (y.shape[0], y.shape[1], *op.in_shape)
    x = randn_like(torch.empty(shape, dtype=y.dtype, device=y.device), gen)
    with torch.no_grad():
        aty = op.T(mp.y)
        for k in tqdm(range(steps), desc="flower", disable=not progress):
            t, t_next = k / steps, (k + 1) / steps
            x1 = prior.x1_hat(x, t)
            nu2 = o["nu_scale"] ** 2 * (1.0 - t) ** 2 / (t * t + (1.0 - t) ** 2)
            rho = sigma * sigma / nu2
            x1_tilde = op.solve_normal(aty + rho * x1, rho, x0=x1, tol=1e-6,
                                       maxiter=o["cg_iters"])
            if k + 1 < steps:
                x = interpolate(x1_tilde, randn_like(x, gen), t_next)
            else:
                x = x1_tilde

    info = {"steps": steps, "sigma_model": sigma, "lipschitz": lip, "options": o,
            "task_family": o["task_family"]}
    return SolverOutput(image=mp.to_physical(x), nfe=prior.nfe - nfe0, info=info)
