"""Plain Euler baselines with pseudo-inverse guidance: ΠGFM (``pigfm``) and OT-ODE (``otode``).

Both start at t0 from x = t0·ỹ + (1−t0)·z (ỹ = A⁺y, z seeded) and take K uniform Euler steps

    x ← x + Δ·[v + c(t)·J_x̂1ᵀ (ŷ_t − P x̂1)],   J_x̂1ᵀ r = r + (1−t)·J_vᵀ r,

with ŷ_t the effective target of guidance.py (ỹ when noiseless; the noise-aware ΠGDM target
P(AᵀA + ρ_t)⁻¹(Aᵀy + ρ_t P x̂1), ρ_t = σ_y²/r_t², otherwise).  They differ only in c(t):

* ``pigfm``: c(t) = w·t(1−t) — exactly the guided ODE that C-ΠGFM (``conjugate``) integrates,
  so ``pigfm`` vs ``conjugate`` at equal (w, τ) isolates the integrator.
* ``otode`` (Pokle et al., OT path): c(t) = γ·(1−t)/(t·r_t²), i.e. the DESIGN formula
  v + ((1−t)/t)·γ·J_x̂1ᵀ Aᵀ(r_t² AAᵀ + σ_y² I)⁻¹(y − A x̂1), since
  Aᵀ(r_t² AAᵀ + σ_y²)⁻¹(y − A x̂1) = (ŷ_t − P x̂1)/r_t².

Defaults: each method has its *own* records in the prior's presets, chosen on the
validation split per task family and NFE budget on a grid of the same size as conjugate's
(``scripts/bench_conjugate.py --tune``): plain Euler at large w diverges at 5–10 steps, so it
must not inherit conjugate's w.  Tuned and default: jacobian=False (J_x̂1 ≈ I).

Cost per step: 1 NFE (jacobian=False, J_x̂1 ≈ I) or 2 NFE (forward + VJP); the budget ``nfe``
gives K = nfe or nfe // 2 steps.

Pre-log Poisson data (``photons`` I0, ``electronic_noise`` σ_e; ``weights.py``): ŷ_t and the
start become the weighted ones of guidance.py, P(AᵀW̃A + ρ_t)⁻¹(AᵀW̃y + ρ_t P x̂1) with the
relative inverse-variance weights W̃ (CG); σ̄ = √mean(1/w) unless ``noise_std`` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import MethodError
from ..operators import LinearOperator
from ..paths import x1_hat
from ..priors.base import Prior
from .common import SolverOutput, model_problem
from .context import TaskContext, call_context, resolve_options
from .guidance import (
    GuidanceTarget,
    check_temperature,
    check_unit_interval,
    r2,
    start_state,
    steps_for_budget,
    uniform_grid,
    velocity_and_vjp,
)
from .weights import photon_noise

# Generic defaults (a prior's presets overlay them).
GENERIC_PIGFM = {"w": 100.0, "tau": 0.2, "jacobian": False, "rho_scale": 1.0, "temperature": 1.0}
GENERIC_OTODE = {"t0": 0.2, "gamma": 1.0, "jacobian": False, "rho_scale": 1.0,
                 "temperature": 1.0}


def pigfm(
    y: torch.Tensor,
    op: LinearOperator,
    *,
    prior: Prior,
    noise_std: float | None = None,
    seed: int = 0,
    progress: bool = False,
    nfe: int = 5,
    w: float | None = None,
    tau: float | None = None,
    jacobian: bool | None = None,
    rho_scale: float | None = None,
    temperature: float | None = None,
    task_family: str | None = None,
    context: TaskContext | None = None,
    photons: float | None = None,
    electronic_noise: float = 0.0,
) -> SolverOutput:
    """ΠGFM: Euler on dx/dt = v + w t(1−t) J_x̂1ᵀ(ŷ − P x̂1) from τ (module docstring);
    (w, τ, jacobian) default to the record tuned for the family at the largest budget ≤ nfe;
    ``temperature`` T scales the start's noise as in conjugate.conjugate.
    ``photons``: pre-log Poisson weights in ŷ_t (module docstring)."""
    noise_std, weights = photon_noise(y, photons, electronic_noise, noise_std, "pigfm")
    ctx = call_context(context, op, task_family, noise_std)
    opts = resolve_options("pigfm", GENERIC_PIGFM, prior, ctx, nfe, ("jacobian",), w=w, tau=tau,
                           jacobian=jacobian, rho_scale=rho_scale, temperature=temperature)
    weight = float(opts["w"])
    opts = {k: opts[k] for k in ("w", "tau", "jacobian", "rho_scale", "temperature",
                                 "task_family", "tuned_at_nfe", "tuned_at_size", "presets")}
    return _euler(y, op, prior, noise_std, seed, progress, nfe, opts, opts["tau"],
                  lambda t: weight * t * (1 - t), "pigfm", weights)


def otode(
    y: torch.Tensor,
    op: LinearOperator,
    *,
    prior: Prior,
    noise_std: float | None = None,
    seed: int = 0,
    progress: bool = False,
    nfe: int = 10,
    t0: float | None = None,
    gamma: float | None = None,
    jacobian: bool | None = None,
    rho_scale: float | None = None,
    temperature: float | None = None,
    task_family: str | None = None,
    context: TaskContext | None = None,
    photons: float | None = None,
    electronic_noise: float = 0.0,
) -> SolverOutput:
    """OT-ODE: Euler on dx/dt = v + γ (1−t)/(t r_t²) J_x̂1ᵀ(ŷ − P x̂1) from t0 > 0;
    ``photons``: pre-log Poisson weights in ŷ_t (module docstring)."""
    noise_std, weights = photon_noise(y, photons, electronic_noise, noise_std, "otode")
    ctx = call_context(context, op, task_family, noise_std)
    opts = resolve_options("otode", GENERIC_OTODE, prior, ctx, nfe, ("jacobian",), t0=t0,
                           gamma=gamma, jacobian=jacobian, rho_scale=rho_scale,
                           temperature=temperature)
    gam = float(opts["gamma"])
    start = check_unit_interval("t0", opts["t0"], low_open=True)
    return _euler(y, op, prior, noise_std, seed, progress, nfe, opts, start,
                  lambda t: gam * (1 - t) / (t * r2(t)), "otode", weights)


def _euler(y: torch.Tensor, op: LinearOperator, prior: Prior, noise_std: float | None,
           seed: int, progress: bool, nfe: int, opts: dict[str, Any], t0: float,
           weight: Callable[[float], float], name: str,
           weights: torch.Tensor | None = None) -> SolverOutput:
    if prior is None:
        raise MethodError(f"{name} needs a prior")
    t0 = check_unit_interval("start time", t0)
    jac = bool(opts["jacobian"])
    grid = uniform_grid(t0, steps_for_budget(nfe, 2 if jac else 1))
    nfe0 = prior.nfe
    problem = model_problem(y, op, prior, noise_std, weights)
    P = op.projector
    data = GuidanceTarget(problem, float(opts["rho_scale"]))
    x = start_state(data.start(t0), t0, seed, check_temperature(opts["temperature"]))
    steps: list[dict[str, float]] = []
    it = range(len(grid) - 1)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=name, leave=False)
    with torch.no_grad():
        for i in it:
            t, dt = float(grid[i]), float(grid[i + 1] - grid[i])
            if jac:
                v, vjp = velocity_and_vjp(prior, x, t)
            else:
                v, vjp = prior.velocity(x, t), None
            x1 = x1_hat(x, t, v)
            px1 = P(x1)
            target = data.at(px1, t)
            resid = target - px1
            guide = resid + (1 - t) * vjp(resid) if vjp is not None else resid
            x = x + dt * (v + weight(t) * guide)
            steps.append({"t": t, "weight": weight(t),
                          "residual": float(resid.norm() / target.norm().clamp_min(1e-12))})
            if not bool(torch.isfinite(x).all()):
                raise MethodError(f"{name} diverged at t = {t:.3f}; raise nfe or lower w")
    params = dict(opts, start=t0)
    info = {"grid": [float(t) for t in grid], "params": params, "steps": steps,
            "noise_std_model": problem.noise_std, "weighted": weights is not None}
    return SolverOutput(image=problem.to_physical(x), nfe=prior.nfe - nfe0, info=info)
