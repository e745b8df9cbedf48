"""Conditional conjugate integrators: C-ΠGFM (``conjugate``) and C-ΠGDM (``conjugate-diffusion``).

C-ΠGFM (DESIGN §4).  Guided ODE, c(t) = w·t(1−t), ŷ the effective target (guidance.py):

    dx/dt = v + c·J_x̂1ᵀ(ŷ − P x̂1) = −c P x + N,
    N = v + c ŷ − c(1−t) P v + c(1−t) g,   g = J_vᵀ r,  r = ŷ − P x̂1   (g = 0 if not jacobian)

Conjugate variable x̄ = A_t x, A_t = exp(λt I + wκ(t) P) = e^{λt}[(I−P) + e^{wκ}P],
κ = t²/2 − t³/3, so dx̄/dt = λ x̄ + A_t N.  Per step [t_i, t_{i+1}] (v, g, ŷ frozen at t_i):

    x̄ ← (1 + λΔ) x̄ + E0 (I−P) v + E1 P v + Ky ŷ − Kv P v + KJ0 (I−P) g + Kv P g,
    x_{i+1} = A_{t_{i+1}}⁻¹ x̄

with the float64 integrals of conjugate_coeffs.py, applied already divided by A_{t_{i+1}}'s
scales so that no step overflows.  As w·Δκ grows the update tends to the hard projection
P x_{i+1} = ŷ − (1−t_{i+1}) P v (i.e. P x̂1 = ŷ with the frozen v): past w ≈ 10³ on the
benchmark grids a larger w changes nothing (128² validation, 5 NFE: sr4 27.92 dB and blur
34.74 dB at every w from 10³ to 10⁶).  Since A_t acts as a scalar on range(P)
and on its complement, the state is kept as the pair (x_⊥ = (I−P)x, x_∥ = P x): the update
then needs one P per vector it touches (P v, and P g with the Jacobian) and A_t⁻¹ is two
scalar divisions.  Start: x(τ) = τ ỹ + (1−τ) T z.  Cost: 1 NFE per step (jacobian=False,
J_x̂1 ≈ I as in the official code) or 2 (forward + VJP).

Order 2 (``order=2``; an extension — the derivation freezes the network output, order 1).
From the second step on, every frozen vector F ∈ {v, ŷ_t, g} (ε̂, ŷ_t, g for C-ΠGDM) is
taken linear in time through the last two steps, F(s) = F_i + (s − t_i) D,
D = (F_i − F_{i−1})/(t_i − t_{i−1}), and integrated exactly against the same integrating
factor: the update gains M0 (I−P) D + M1 P D per forcing term, with the first-moment
integrals M of conjugate_coeffs.py.  No extra NFE; second order in the step for λ = 0
(the λ ū term stays explicit Euler), the first step first order.

C-ΠGDM.  The same flow prior is a VP diffusion: α = t/n, σ = (1−t)/n, n = √(t² + (1−t)²),
x_vp = u = x/n, ε̂ = x − t v.  ΠGDM guidance with weight w_t = w r_t² α_t² on the VP
probability-flow ODE gives, in flow time,

    du/dt = (α'/α) u − ε̂/(t n) + c_d J_x̂1ᵀ(ŷ − P x̂1),   c_d = w t(1−t)/n³,
    x̂1 = (u − σ ε̂)/α  ⇒  du/dt = (α'/α) u − (w(1−t)/n²) P u + [−ε̂/(tn) + c_d ŷ
                                   + (w(1−t)²/n³) P ε̂ + c_d(1−t) g]

(in flow coordinates this is the guided flow ODE with c(t) = w t(1−t)/n²).  The linear part
(the VP drift and the stiff guidance) is integrated exactly with ε̂ frozen — the
DDIM-style choice of the diffusion view.  The time grid is uniform in VP diffusion time s
with linear β(s) = β0 + s(β1 − β0) (α(s) = exp(−s²(β1−β0)/4 − sβ0/2)), from the s of τ to 0.

Pre-log Poisson data (``photons`` I0, ``electronic_noise`` σ_e; ``weights.py``): the rays get
the inverse-variance weights W = W̃/σ̄² and both integrators use the weighted target
ŷ_t = P(AᵀW̃A + ρ_t I)⁻¹(AᵀW̃y + ρ_t P x̂1) and start (guidance.py) in every formula above;
P and hence A_t stay the unweighted ones, so the conjugate map is as exact as without
weights.  σ̄ (the noise level) is √mean(1/w) of the counts unless ``noise_std`` is given.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import MethodError
from ..operators import LinearOperator
from ..paths import vp_norm as _vp_norm
from ..priors.base import Prior
from .common import SolverOutput, model_problem
from .conjugate_coeffs import StepCoefficients, step_coefficients
from .context import TaskContext, call_context, resolve_options
from .guidance import (
    GuidanceTarget,
    check_temperature,
    check_unit_interval,
    start_state,
    steps_for_budget,
    uniform_grid,
    velocity_and_vjp,
)
from .weights import photon_noise

BETA_MIN, BETA_MAX = 0.1, 20.0

# Generic defaults of both conjugate integrators (a prior's presets overlay them).
GENERIC = {"w": 100.0, "lam": 0.0, "tau": 0.2, "jacobian": False, "rho_scale": 1.0, "order": 1,
           "temperature": 1.0}


class ConjugateMap:
    """A_t = a·(I − P) + b·P for scalars a = e^{λt}, b = e^{λt + wκ(t)} (one P per use).

    The explicit map is for checks (A_t⁻¹A_t = I); the solver never forms it.  Its scales
    leave float64 once |λt + wκ(t)| > 700 (w ≳ 4000 at t = 1), which is refused with a
    ValueError rather than an overflow."""

    MAX_EXPONENT = 700.0

    def __init__(self, projector, t: float, w: float, lam: float):
        k = t * t / 2 - t**3 / 3
        exponents = (lam * t, lam * t + w * k)
        if max(abs(e) for e in exponents) > self.MAX_EXPONENT:
            raise ValueError(
                f"A_t's scale e^{max(exponents, key=abs):.4g} is outside float64 "
                f"(t={t}, w={w}, λ={lam}); the solver's end-anchored coefficients handle this w")
        self.P = projector
        self.a = math.exp(exponents[0])
        self.b = math.exp(exponents[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x̄ = A_t x = a x + (b − a) P x."""
        return self.a * x + (self.b - self.a) * self.P(x)

    def inverse(self, xbar: torch.Tensor) -> torch.Tensor:
        """x = A_t⁻¹ x̄ = x̄/a + (1/b − 1/a) P x̄."""
        return xbar / self.a + (1 / self.b - 1 / self.a) * self.P(xbar)


def conjugate(
    y: torch.Tensor,
    op: LinearOperator,
    *,
    prior: Prior,
    noise_std: float | None = None,
    seed: int = 0,
    progress: bool = False,
    nfe: int = 5,
    w: float | None = None,
    lam: float | None = None,
    tau: float | None = None,
    jacobian: bool | None = None,
    rho_scale: float | None = None,
    order: int | None = None,
    temperature: float | None = None,
    task_family: str | None = None,
    context: TaskContext | None = None,
    photons: float | None = None,
    electronic_noise: float = 0.0,
) -> SolverOutput:
    """C-ΠGFM (see module docstring).  ``nfe`` is the budget: nfe steps (jacobian=False) or
    nfe // 2 (jacobian=True).  Defaults (w, lam, tau) come from the prior's presets: the
    record tuned on the validation split for the task family (inferred from the operator
    unless ``task_family``), the jacobian setting and the largest tuned budget ≤ nfe.
    ``noise_std`` None or 0: noiseless (ŷ = A⁺y); else the noise-aware target with weight
    ``rho_scale`` (guidance.GuidanceTarget) and the records tuned on noisy data if any.
    ``order`` 1 (frozen per step, as derived) or 2 (multistep, see the module docstring);
    a tuned record may set it.
    ``temperature`` T scales the start's noise, x(τ) = τ ỹ + (1−τ) T z: 1 (the generic
    default) samples the posterior; lower values trade sample diversity for error — on
    real CT slices T = 0 (a deterministic start) scored 1.4–5 dB above T = 1 at 64² and 128²
    with the realct-64 prior, whose presets set it.
    ``photons`` I0 (and ``electronic_noise`` σ_e in counts): pre-log Poisson weights in the
    target and start (module docstring); ``noise_std`` None then means σ̄ from the counts.
    jacobian=True has its own tuned (w, τ) but is not the default: with the trained 64²
    prior at 5 NFE (2 steps) it scored −4.1 (ct60), −2.6 (inpaint-box), −0.1 (sr4) and
    −7.3 dB (blur) against jacobian=False on the validation images; at 20 NFE +0.2, 0.0,
    +0.7 and −3.8 dB, for twice the cost per step."""
    noise_std, weights = photon_noise(y, photons, electronic_noise, noise_std, "conjugate")
    ctx = call_context(context, op, task_family, noise_std)
    opts = resolve_options("conjugate", GENERIC, prior, ctx, nfe, ("jacobian",), w=w, lam=lam,
                           tau=tau, rho_scale=rho_scale, jacobian=jacobian, order=order,
                           temperature=temperature)
    _check_order(opts)
    tau = check_unit_interval("tau", opts["tau"])
    steps = steps_for_budget(nfe, 2 if opts["jacobian"] else 1)
    grid = uniform_grid(tau, steps)
    coef = step_coefficients(grid, opts["w"], opts["lam"], kind="flow")
    return _run(y, op, prior, noise_std, seed, progress, opts, coef, vp=False,
                weights=weights)


def conjugate_diffusion(
    y: torch.Tensor,
    op: LinearOperator,
    *,
    prior: Prior,
    noise_std: float | None = None,
    seed: int = 0,
    progress: bool = False,
    nfe: int = 5,
    w: float | None = None,
    lam: float | None = None,
    tau: float | None = None,
    jacobian: bool | None = None,
    rho_scale: float | None = None,
    order: int | None = None,
    temperature: float | None = None,
    task_family: str | None = None,
    context: TaskContext | None = None,
    photons: float | None = None,
    electronic_noise: float = 0.0,
) -> SolverOutput:
    """C-ΠGDM (see module docstring): conjugate integration of the ΠGDM-guided VP
    probability-flow ODE of the flow prior, ε̂ frozen per step, VP grid (linear β).
    ``tau`` (flow time of the start, > 0) and the other options (``photons`` too) as in
    :func:`conjugate`."""
    noise_std, weights = photon_noise(y, photons, electronic_noise, noise_std,
                                      "conjugate-diffusion")
    ctx = call_context(context, op, task_family, noise_std)
    opts = resolve_options("conjugate-diffusion", GENERIC, prior, ctx, nfe, ("jacobian",),
                           w=w, lam=lam, tau=tau, rho_scale=rho_scale, jacobian=jacobian,
                           order=order, temperature=temperature)
    _check_order(opts)
    tau = check_unit_interval("tau", opts["tau"], low_open=True)
    steps = steps_for_budget(nfe, 2 if opts["jacobian"] else 1)
    grid = vp_grid(tau, steps)
    coef = step_coefficients(grid, opts["w"], opts["lam"], kind="vp")
    return _run(y, op, prior, noise_std, seed, progress, opts, coef, vp=True,
                weights=weights)


def _check_order(opts: dict[str, Any]) -> None:
    if opts.get("order", 1) not in (1, 2):
        raise MethodError(f"order must be 1 (frozen per step) or 2 (multistep), "
                          f"got {opts['order']!r}")


def vp_alpha(s: np.ndarray) -> np.ndarray:
    """α(s) of the VP SDE with linear β: exp(−s²(β1−β0)/4 − s β0/2)."""
    return np.exp(-0.25 * s * s * (BETA_MAX - BETA_MIN) - 0.5 * s * BETA_MIN)


def vp_grid(tau: float, steps: int) -> np.ndarray:
    """Flow times of a grid uniform in VP diffusion time s, from s(τ) down to s = 0 (t = 1).

    s(τ) solves α(s)/σ(s) = τ/(1−τ), i.e. (β1−β0)s²/4 + β0 s/2 + log α_τ = 0,
    α_τ = τ/√(τ² + (1−τ)²); the flow time of s is α/(α + σ).
    """
    a_tau = tau / math.hypot(tau, 1 - tau)
    qa, qb, qc = 0.25 * (BETA_MAX - BETA_MIN), 0.5 * BETA_MIN, math.log(a_tau)
    s_tau = (-qb + math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
    s = np.linspace(s_tau, 0.0, int(steps) + 1)
    alpha = vp_alpha(s)
    sigma = np.sqrt(np.clip(1 - alpha**2, 0.0, None))
    t = alpha / (alpha + sigma)
    t[0], t[-1] = tau, 1.0
    return t


def _run(y: torch.Tensor, op: LinearOperator, prior: Prior, noise_std: float | None,
         seed: int, progress: bool, opts: dict[str, Any], coef: StepCoefficients,
         vp: bool, weights: torch.Tensor | None = None) -> SolverOutput:
    if prior is None:
        raise MethodError("the conjugate integrators need a prior")
    nfe0 = prior.nfe
    problem = model_problem(y, op, prior, noise_std, weights)
    P = op.projector
    data = GuidanceTarget(problem, float(opts["rho_scale"]))
    x = start_state(data.start(float(coef.grid[0])), float(coef.grid[0]), seed,
                    check_temperature(opts["temperature"]))
    jac = bool(opts["jacobian"])
    # state u = x (flow) or x/n (vp), split into u_par = P u and u_perp = (I − P) u
    scale = _vp_norm(coef.grid[0]) if vp else 1.0
    u = x / scale
    u_par = P(u)
    u_perp = u - u_par
    order = int(opts.get("order", 1))
    prev: dict[str, torch.Tensor] = {}  # the previous step's frozen vectors (order 2)
    stats: list[torch.Tensor] = []  # per step: relative residual, ‖x‖, finite (1/0)
    it = range(coef.steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="conjugate-diffusion" if vp else "conjugate", leave=False)
    with torch.no_grad():
        for i in it:
            t = float(coef.grid[i])
            n = _vp_norm(t) if vp else 1.0
            x = n * (u_par + u_perp)
            if jac:
                v, vjp = velocity_and_vjp(prior, x, t)
            else:
                v, vjp = prior.velocity(x, t), None
            pv = P(v)
            px1 = n * u_par + (1 - t) * pv  # P x̂1 = P x + (1−t) P v
            target = data.at(px1, t)
            resid = target - px1
            if vp:  # ε̂ = x − t v, P ε̂
                frozen = {"f": x - t * v, "pf": n * u_par - t * pv, "target": target}
            else:
                frozen = {"f": v, "pf": pv, "target": target}
            if vjp is not None:  # jacobian=True
                g = vjp(resid)
                frozen.update(g=g, pg=P(g))
            # coefficients already divided by the step's end scale of A_t (see
            # conjugate_coeffs.StepCoefficients.r0/r1): u_{i+1} = A_{t_{i+1}}⁻¹ ū_{i+1}
            r0, r1 = _at(coef.r0, i), _at(coef.r1, i)
            new_perp, new_par = _add_forcing(r0["lin"] * u_perp, r1["lin"] * u_par, r0, r1,
                                             frozen, vp)
            if order == 2 and prev:  # F(s) = F_i + (s − t_i) D: the first-moment terms
                slope = _slopes(frozen, prev, t - float(coef.grid[i - 1]))
                new_perp, new_par = _add_forcing(new_perp, new_par, _at(coef.m0, i),
                                                 _at(coef.m1, i), slope, vp)
            prev = frozen
            u_perp, u_par = new_perp, new_par
            # per-step figures stay on the device: nothing is read on the host in the loop
            stats.append(torch.stack([resid.norm() / target.norm().clamp_min(1e-12),
                                      x.norm(), _finite(u_par) * _finite(u_perp)]))
        x = u_par + u_perp  # n(1) = 1
    steps = _step_records(coef.grid, stats)
    info = {
        "grid": [float(t) for t in coef.grid],
        "params": {k: opts.get(k) for k in ("w", "lam", "tau", "jacobian", "rho_scale", "order",
                                         "temperature", "task_family", "tuned_at_nfe",
                                         "tuned_at_size", "presets")},
        "steps": steps,
        "noise_std_model": problem.noise_std,
        "weighted": weights is not None,
    }
    return SolverOutput(image=problem.to_physical(x), nfe=prior.nfe - nfe0, info=info)


def _finite(v: torch.Tensor) -> torch.Tensor:
    """1.0 where every entry of v is finite, else 0.0 (a device tensor, not a bool)."""
    return torch.isfinite(v).all().to(v.dtype)


def _step_records(grid: np.ndarray, stats: list[torch.Tensor]) -> list[dict[str, float]]:
    """The per-step info records, read from the device once after the loop; MethodError
    naming the first step whose state was not finite."""
    values = torch.stack(stats).double().cpu().numpy() if stats else np.zeros((0, 3))
    for finite, t in zip(values[:, 2], grid, strict=False):
        if finite != 1.0:
            raise MethodError(f"conjugate integrator diverged at t = {float(t):.3f}; "
                              "lower w or raise nfe")
    return [{"t": float(t), "residual": float(r), "x_norm": float(n)}
            for (r, n, _), t in zip(values, grid, strict=False)]


def _slopes(now: dict[str, torch.Tensor], before: dict[str, torch.Tensor],
            dt: float) -> dict[str, torch.Tensor]:
    """D = (F(t_i) − F(t_{i−1}))/(t_i − t_{i−1}) for each frozen vector F."""
    return {k: (now[k] - before[k]) / dt for k in now}


def _at(coefficients: dict[str, np.ndarray], i: int) -> dict[str, float]:
    """Step i's value of each named coefficient."""
    return {k: float(val[i]) for k, val in coefficients.items()}


def _add_forcing(perp: torch.Tensor, par: torch.Tensor, k0: dict[str, float],
                 k1: dict[str, float], f: dict[str, torch.Tensor], vp: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """perp + Σ_j K0_j (I−P) F_j and par + Σ_j K1_j P F_j over the forcing terms, for one
    set of per-step coefficients: the integrals r (F frozen) or the first moments m (F its
    slope D, order 2).  f holds F = v (ε̂ for vp) and P F as "f", "pf", the target ŷ_t, and
    g, P g with the Jacobian."""
    if vp:
        perp = perp + k0["eps"] * (f["f"] - f["pf"])
        par = par + (k1["eps"] + k1["eps_p"]) * f["pf"] + k1["c"] * f["target"]
    else:
        perp = perp + k0["one"] * (f["f"] - f["pf"])
        par = par + (k1["one"] - k1["c1"]) * f["pf"] + k1["c"] * f["target"]
    if "g" in f:
        perp = perp + k0["c1"] * (f["g"] - f["pg"])
        par = par + k1["c1"] * f["pg"]
    return perp, par

