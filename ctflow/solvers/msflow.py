"""MS-Flow: multiple shooting (trajectory stitching) with a flow prior, constant memory.

Grid 0 = s_0 < … < s_K = 1 (uniform), each segment integrated with M explicit Euler steps:
Φ_k = Euler map of v from s_k to s_{k+1}.  Unknowns: shooting states z_0 … z_{K−1} and the
image x = z_K (model space).  Objective, per image,

    F = ‖A x − y‖²/(2σ²)  +  λ R(z_0)  +  (μ/2) Σ_{k=0}^{K−1} ‖z_{k+1} − Φ_k(z_k)‖²,
    R(z) = ‖z‖²/2 − (d−1) log‖z‖                       (radial Gaussian on z_0).

With the residuals r_k = z_k − Φ_{k−1}(z_{k−1}) (k ≥ 1), one iteration alternates:

(i) shooting states, block coordinate descent.  Block k touches only
        f_k(z_k) = [k=0] λR(z_k) + [k≥1] (μ/2)‖r_k‖² + (μ/2)‖z_{k+1} − Φ_k(z_k)‖²,
    so all even k, then all odd k, are independent problems (red–black order) and each
    colour is one batched network call over its segments.  Jacobian-free direction
    (J_Φ ≈ I):
        d_k = [k=0] λ∇R(z_0) + [k≥1] μ r_k − μ r_{k+1},   z_k⁺ = z_k − α_k d_k,
        α_k = η/(2μ) (k ≥ 1),  α_0 = η/(μ + λ),
    accepted if f_k(z_k⁺) ≤ f_k(z_k) − c α_k ‖d_k‖²; otherwise the exact local gradient
        g_k = [k=0] λ∇R(z_0) + [k≥1] μ r_k − μ J_{Φ_k}(z_k)ᵀ r_{k+1}
    (one VJP per Euler step of that segment only) with Armijo backtracking
    f_k(z_k − α g_k) ≤ f_k(z_k) − c α ‖g_k‖², α = α_k, α_k/2, …; if nothing passes z_k stays.

(ii) image, proximal data step:
        x = argmin ‖Ax−y‖²/(2σ²) + (μ/2)‖x − Φ_{K−1}(z_{K−1})‖²
          ⇔ (AᵀA + σ²μ I) x = Aᵀy + σ²μ Φ_{K−1}(z_{K−1})      (op.solve_normal),
    solved for δ = x − Φ_{K−1} (see ``prox_data``), warm-started at the last correction,
    kept only where it lowers F.

Every accepted move lowers F, so the recorded objective decreases monotonically (for a
fixed μ; an optional geometric μ schedule ``mu_growth`` > 1 raises F when μ grows).
No autograd graph spans more than one Euler step, so memory does not grow with K·M.

Noise: σ is the model-space noise std; for noiseless data (``noise_std`` None/0)
σ = 1e-3·RMS(y) (``latent_reg.NOISELESS_REL_STD``) and the data term acts as a penalty.
Pre-log Poisson data (``photons`` I0, ``electronic_noise`` σ_e; ``weights.py``): the data
term is the inverse-variance one, ‖Ax − y‖²_W̃/(2σ²) with the relative per-ray weights W̃
(mean(1/w̃) = 1) and σ = σ̄ = √mean(1/w) unless ``noise_std`` is given, in F, in every
acceptance test and in step (ii), which becomes (AᵀW̃A + σ²μ I) x = AᵀW̃y + σ²μ Φ_{K−1}
(``weights.solve_weighted_normal``, warm-started as above: up to ``cg_iters`` CG
iterations to ``cg_tol``, then up to ``cg_iters`` preconditioned ones where needed); the
warm start (init "conjugate") and x_init use the same weights.  Step (ii) is still kept
only where it lowers F, so F still decreases monotonically.
Initialisation: x_init = argmin ‖Ax−y‖²/(2σ²) + (μ/2)‖x‖², the pseudo-inverse A⁺y
regularised at the noise level (A⁺y itself for σ → 0); ``init="inverse"`` runs the ODE
backwards from x_init and uses its states at s_k; ``init="noise"`` takes
z_0 ~ N(0, I) (seeded) and z_k = s_k·x_init + (1−s_k)·z_0; ``init="rollout"`` takes the
same z_0 and z_k = Φ_{k−1}(z_{k−1}), a prior trajectory with no defects but the last
(K−1)·M extra evaluations once); ``init="conjugate"`` is a warm start: x_init is the
C-ΠGFM reconstruction at its tuned 5-NFE defaults (``conjugate.py``), run backwards as for
"inverse", and the image starts there (5 + K·M extra evaluations once).  Inverting A⁺y puts
the trajectory where the pseudo-inverse's null-space content (zeros in the holes, flat 4×4
blocks for SR) leads, and the local moves rarely leave it.  On the validation split (64²,
the validation split) the warm start wins for CT (44.14 dB against 41.81 for "rollout"),
SR, blur and scattered-mask inpainting (31.99 against 29.78), "rollout" for box-like holes.

Defaults per task family (K, M, iterations, μ for noiseless / noisy data, λ, init, η) are
stored in the prior's presets (tuning commands and grid scores in docs/tuning/latent.json).
A geometric μ schedule (μ ← γμ per iteration, ``mu_growth`` γ) was measured there and is off
everywhere: validation PSNR for γ = 1 / 1.5 / 2 was 41.81 / 39.22 / 37.94 dB on CT, 34.32 /
30.07 / 26.99 on noisy CT, 45.90 / 40.48 / 37.27 on blur (those three before the init
grids) and 28.98 / 28.84 / 28.80 on SR, and for γ = 1 / 1.2 / 1.4 32.19 / 32.05 / 31.74 on
inpainting.  (Ties would go to a constant μ: a schedule makes F rise at each μ change.)
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import MethodError
from ..operators import LinearOperator
from ..priors.base import Prior
from .common import ModelProblem, SolverOutput, model_problem
from .context import TaskContext, call_context, resolve_options
from .latent_reg import WARM_START_NFE, data_sigma, warm_start
from .msflow_stitching import (  # noqa: F401  (prox_data and ARMIJO_C: re-exported)
    ARMIJO_C,
    Stitching,
    initial_states,
    prox_data,
    prox_step,
    update_colour,
)
from .weights import photon_noise

INITS = ("inverse", "noise", "rollout", "conjugate")
# Generic defaults (a prior's presets overlay them); mu_noiseless / mu_noisy: the matching
# weight μ for noiseless / noisy data (an explicit ``mu`` overrides both).
GENERIC = {"shooting": 4, "segment_steps": 2, "iters": 10, "mu_noiseless": 10.0,
           "mu_noisy": 300.0, "lam": 1.0, "init": "inverse", "eta": 1.0, "mu_growth": 1.0}


def msflow(
    y: torch.Tensor,
    op: LinearOperator,
    *,
    prior: Prior,
    noise_std: float | None = None,
    seed: int = 0,
    progress: bool = False,
    task_family: str | None = None,
    context: TaskContext | None = None,
    shooting: int | None = None,
    segment_steps: int | None = None,
    iters: int | None = None,
    mu: float | None = None,
    lam: float | None = None,
    init: str | None = None,
    eta: float | None = None,
    mu_growth: float | None = None,
    mu_max: float | None = None,
    backtracks: int = 3,
    cg_tol: float = 1e-4,
    cg_iters: int = 30,
    nfe: int | None = None,
    photons: float | None = None,
    electronic_noise: float = 0.0,
) -> SolverOutput:
    """MS-Flow reconstruction (update equations in the module docstring).

    ``shooting`` = K, ``segment_steps`` = M (K·M Euler steps in all), ``iters`` outer
    iterations, ``mu``/``lam`` the matching and radial-regulariser weights, ``init``
    "inverse" | "noise" | "rollout" | "conjugate", ``eta`` the Jacobian-free step scale,
    ``mu_growth``/``mu_max`` an optional geometric μ schedule, ``cg_tol``/``cg_iters`` the
    proximal solve where it is iterative, ``nfe`` an optional budget of network
    evaluations, never exceeded: the set-up's evaluations count, no iteration starts that
    would exceed it at the previous iteration's cost, and within an iteration a sweep,
    fallback or backtracking trial that does not fit is skipped (too small a budget for
    the set-up is an error).  Options left at None take the defaults of
    ``task_family`` ("ct" | "inpainting" | "sr" | "blur"; None: from the operator's class)
    tuned on the validation split at the image size nearest to the operator's and for its
    mask kind (scattered inpainting masks have their own) in the prior's presets;
    ``mu`` None takes the family's ``mu_noiseless`` or ``mu_noisy`` by whether a noise
    level is given.  ``photons`` I0 (``electronic_noise`` σ_e counts): the pre-log Poisson
    data term of the module docstring (a noise level, σ̄, is then always given).
    ``info["history"]`` holds F and its three parts per iteration, ``info["options"]`` the
    options used.
    """
    noise_std, weights = photon_noise(y, photons, electronic_noise, noise_std, "msflow")
    ctx = call_context(context, op, task_family, noise_std)
    prob = model_problem(y, op, prior, noise_std, weights)
    o, mu = _options(prior, ctx, prob.noise_std, mu, backtracks, shooting=shooting,
                     segment_steps=segment_steps, iters=iters, lam=lam, init=init, eta=eta,
                     mu_growth=mu_growth)
    sigma = data_sigma(prob.y, prob.noise_std)
    st = Stitching(prior, op, prob.y, sigma, float(mu), float(o["lam"]), int(o["shooting"]),
                   int(o["segment_steps"]), weights)
    budget = _Budget(prior, nfe, st, o["init"])
    x = _initial_image(st, y, prob, noise_std, seed, ctx, o["init"],
                       (photons, electronic_noise))
    z = initial_states(st, x, o["init"], seed)
    phi = st.flow(z, list(range(st.K)))
    stats = {"jf_tried": 0, "jf_accepted": 0, "grad_tried": 0, "grad_accepted": 0}
    history: dict[str, list[float]] = {"objective": [], "data": [], "reg": [], "match": [],
                                       "mu": [], "nfe": []}
    _record(history, st, z, phi, x, budget.used())
    mu_cap = float(mu_max) if mu_max is not None else float("inf")
    last_cost = 0
    for _ in tqdm(range(o["iters"]), disable=not progress, desc="msflow", leave=False):
        if last_cost > budget.room():
            break  # the next iteration, at the last one's cost, would exceed the budget
        before = prior.nfe
        if o["mu_growth"] != 1.0 and len(history["objective"]) > 1:
            st.mu = min(st.mu * o["mu_growth"], mu_cap)
        x = _iteration(st, z, phi, x, o["eta"], backtracks, stats, budget, cg_tol, cg_iters)
        _record(history, st, z, phi, x, budget.used())
        last_cost = prior.nfe - before
    info = _info(st, z, phi, x, history, stats, {**o, "mu": float(mu), "photons": photons,
                                                 "electronic_noise": electronic_noise})
    return SolverOutput(image=prob.to_physical(x), nfe=budget.used(), info=info)


def _options(prior: Prior, context: TaskContext, noise_std: float, mu: float | None,
             backtracks: int, **given: Any) -> tuple[dict[str, Any], float]:
    """The resolved options (generic defaults < presets < ``given``) and μ (the family's
    ``mu_noisy`` or ``mu_noiseless`` unless given), checked."""
    o = resolve_options("msflow", GENERIC, prior, context, **given)
    mu_noisy, mu_noiseless = o.pop("mu_noisy"), o.pop("mu_noiseless")
    if mu is None:
        mu = mu_noisy if noise_std > 0 else mu_noiseless
    _check_options(o["shooting"], o["segment_steps"], o["iters"], mu, o["lam"], o["init"],
                   o["eta"], o["mu_growth"], backtracks)
    return o, mu


class _Budget:
    """Network evaluations counted from construction, against an optional budget ``nfe``
    (MethodError if it cannot pay the set-up: M·(1 + states to build) evaluations, plus
    the warm start's for init "conjugate")."""

    def __init__(self, prior: Prior, nfe: int | None, st: Stitching, init: str):
        setup = st.M * (1 + {"inverse": st.K, "noise": 0, "rollout": st.K - 1,
                             "conjugate": st.K}[init])
        setup += WARM_START_NFE if init == "conjugate" else 0
        if nfe is not None and int(nfe) < setup:
            raise MethodError(f"msflow needs nfe >= {setup} for its set-up (K = {st.K}, "
                              f"M = {st.M}, init {init!r}), got {nfe}")
        self.prior = prior
        self.cap = float("inf") if nfe is None else float(nfe)
        self.start = prior.nfe

    def used(self) -> int:
        return self.prior.nfe - self.start

    def room(self) -> float:
        """Evaluations left."""
        return self.cap - self.used()


def _initial_image(st: Stitching, y: torch.Tensor, prob: ModelProblem,
                   noise_std: float | None, seed: int, context: TaskContext,
                   init: str, photons: tuple[float | None, float]) -> torch.Tensor:
    """x_init: the C-ΠGFM warm start (init "conjugate"; ``photons`` = (I0, σ_e) or
    (None, 0)), else the regularised pseudo-inverse argmin ‖Ax−y‖²_W̃/(2σ²) + (μ/2)‖x‖²
    (→ A⁺y as σ → 0)."""
    if init == "conjugate":
        return warm_start(y, st.op, st.prior, noise_std, seed, context, *photons
                          ).to(prob.y.dtype)
    zero = torch.zeros(*prob.y.shape[:2], *st.op.in_shape, dtype=prob.y.dtype,
                       device=prob.y.device)
    return prox_data(st.op, prob.y, zero, st.sigma, st.mu, tol=1e-6, maxiter=200,
                     weights=st.weights)


def _iteration(st: Stitching, z: torch.Tensor, phi: torch.Tensor, x: torch.Tensor,
               eta: float, backtracks: int, stats: dict[str, int], budget: _Budget,
               cg_tol: float, cg_iters: int) -> torch.Tensor:
    """One outer iteration: step (i) on the even blocks, then the odd ones (z and phi in
    place), then step (ii); returns the new image."""
    phi_last_old = phi[-1].clone()
    for colour in (0, 1):
        ks = list(range(colour, st.K, 2))
        if ks:
            update_colour(st, z, phi, x, ks, eta, backtracks, stats, budget.room)
    return prox_step(st, x, phi[-1], phi_last_old, cg_tol, cg_iters)


def _record(history: dict[str, list[float]], st: Stitching, z: torch.Tensor,
            phi: torch.Tensor, x: torch.Tensor, nfe: int) -> None:
    """Append F, its three parts (summed over images), μ and the evaluations so far."""
    p = st.parts(z, phi, x)
    for key in ("data", "reg", "match"):
        history[key].append(float(p[key].sum()))
    history["objective"].append(history["data"][-1] + history["reg"][-1]
                                + history["match"][-1])
    history["mu"].append(st.mu)
    history["nfe"].append(nfe)


def _info(st: Stitching, z: torch.Tensor, phi: torch.Tensor, x: torch.Tensor,
          history: dict[str, list[float]], stats: dict[str, int],
          options: dict[str, Any]) -> dict[str, Any]:
    """The run record returned in ``SolverOutput.info``."""
    nxt = torch.cat([z[1:], x[None]], 0)
    defects = [float((nxt[k] - phi[k]).pow(2).mean().sqrt()) for k in range(st.K)]
    info: dict[str, Any] = {
        "history": history,
        "jf_acceptance": stats["jf_accepted"] / max(stats["jf_tried"], 1),
        "steps": stats,
        "defects_rms": defects,
        "z0": z[0].clone(),
        "sigma": st.sigma,
        "euler_steps": st.K * st.M,
        "options": options,
    }
    if x.is_cuda:
        info["peak_memory_bytes"] = torch.cuda.max_memory_allocated(x.device)
    return info


def _check_options(shooting: int, segment_steps: int, iters: int, mu: float, lam: float,
                   init: str, eta: float, mu_growth: float, backtracks: int) -> None:
    numbers = (shooting, segment_steps, iters, mu, lam, eta, mu_growth, backtracks)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        raise MethodError("msflow options shooting, segment_steps, iters, mu, lam, eta, "
                          "mu_growth and backtracks must be numbers")
    if int(shooting) < 1 or int(segment_steps) < 1 or int(iters) < 0 or int(backtracks) < 0:
        raise MethodError("msflow needs shooting >= 1, segment_steps >= 1, iters >= 0, "
                          "backtracks >= 0")
    if not (mu > 0 and lam >= 0 and eta > 0 and mu_growth >= 1.0):
        raise MethodError("msflow needs mu > 0, lam >= 0, eta > 0 and mu_growth >= 1")
    if init not in INITS:
        raise MethodError(f"msflow init must be one of {', '.join(INITS)}; got {init!r}")
