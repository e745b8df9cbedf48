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

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import MethodError
from ..operators import LinearOperator
from ..priors.base import Prior
from .common import SolverOutput, model_problem, seeded_noise
from .context import resolve_options, task_context
from .latent_reg import (
    WARM_START_NFE,
    data_sigma,
    euler_flow,
    euler_vjp,
    invert_euler,
    radial_reg,
    radial_reg_grad,
    warm_start,
)

ARMIJO_C = 1e-4
INITS = ("inverse", "noise", "rollout", "conjugate")
# Generic defaults (a prior's presets overlay them); mu_noiseless / mu_noisy: the matching
# weight μ for noiseless / noisy data (an explicit ``mu`` overrides both).
GENERIC = {"shooting": 4, "segment_steps": 2, "iters": 10, "mu_noiseless": 10.0,
           "mu_noisy": 300.0, "lam": 1.0, "init": "inverse", "eta": 1.0, "mu_growth": 1.0}


def _sq(a: torch.Tensor) -> torch.Tensor:
    """Per-item squared norm in float64, for a (B, ...) tensor."""
    return a.double().flatten(1).pow(2).sum(1)


class _Stitching:
    """The shooting states, the segment maps and the objective of one MS-Flow problem."""

    def __init__(self, prior: Prior, op: LinearOperator, y: torch.Tensor, sigma: float,
                 mu: float, lam: float, shooting: int, segment_steps: int):
        self.prior, self.op, self.y = prior, op, y
        self.sigma, self.mu, self.lam = sigma, mu, lam
        self.K, self.M = shooting, segment_steps
        self.grid = [k / shooting for k in range(shooting + 1)]

    # -- segment maps, batched over (segments × images) ---------------------------------
    def _times(self, ks: list[int], b: int, ref: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = torch.tensor(self.grid, dtype=torch.float64)
        t0 = s[ks].repeat_interleave(b).to(ref.device, ref.dtype)
        t1 = s[[k + 1 for k in ks]].repeat_interleave(b).to(ref.device, ref.dtype)
        return t0, t1

    def flow(self, z: torch.Tensor, ks: list[int]) -> torch.Tensor:
        """Φ_k(z[i]) for k = ks[i]; z is (len(ks), B, C, H, W); one batched call per step."""
        n, b = z.shape[:2]
        t0, t1 = self._times(ks, b, z)
        out, _ = euler_flow(self.prior, z.reshape(n * b, *z.shape[2:]), t0, t1, self.M)
        return out.reshape(z.shape)

    def flow_vjp(self, z: torch.Tensor, ks: list[int], w: torch.Tensor) -> torch.Tensor:
        """J_{Φ_k}(z[i])ᵀ w[i], through one segment each (states stored, one step's graph)."""
        n, b = z.shape[:2]
        t0, t1 = self._times(ks, b, z)
        flat = z.reshape(n * b, *z.shape[2:])
        _, states = euler_flow(self.prior, flat, t0, t1, self.M, keep_states=True)
        g = euler_vjp(self.prior, states, t0, t1, w.reshape(flat.shape))
        return g.reshape(z.shape)

    # -- objective -----------------------------------------------------------------------
    def data_term(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _sq(self.op(x) - self.y) / (2 * self.sigma**2)

    def parts(self, z: torch.Tensor, phi: torch.Tensor, x: torch.Tensor
              ) -> dict[str, torch.Tensor]:
        """Per-image data, regulariser and matching terms of F."""
        nxt = torch.cat([z[1:], x[None]], 0)
        match = sum(_sq(nxt[k] - phi[k]) for k in range(self.K))
        return {"data": self.data_term(x), "reg": self.lam * radial_reg(z[0].double()),
                "match": 0.5 * self.mu * match}

    def local(self, k: int, zk: torch.Tensor, phik: torch.Tensor, prev_phi: torch.Tensor | None,
              nxt: torch.Tensor) -> torch.Tensor:
        """f_k per image: the part of F that depends on z_k."""
        f = 0.5 * self.mu * _sq(nxt - phik)
        if k == 0:
            return f + self.lam * radial_reg(zk.double())
        return f + 0.5 * self.mu * _sq(zk - prev_phi)

    def base_grad(self, k: int, zk: torch.Tensor, prev_phi: torch.Tensor | None) -> torch.Tensor:
        """Gradient of the z_k-only part: λ∇R(z_0) or μ r_k."""
        if k == 0:
            return self.lam * radial_reg_grad(zk)
        return self.mu * (zk - prev_phi)

    def step0(self, k: int) -> float:
        return 1.0 / (self.mu + self.lam) if k == 0 else 1.0 / (2.0 * self.mu)


def _bcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(*mask.shape, *([1] * (like.ndim - mask.ndim)))


def _update_colour(st: _Stitching, z: torch.Tensor, phi: torch.Tensor, x: torch.Tensor,
                   ks: list[int], eta: float, backtracks: int, stats: dict[str, int],
                   room: Callable[[], float]) -> None:
    """One red–black half sweep over the blocks ks (in place on z and phi).  ``room()`` is
    the NFE budget left: a trial (M evaluations) or the exact-gradient fallback (3M for the
    VJP through the segment, plus a trial) that does not fit is skipped."""
    m = st.M
    if room() < m:
        return
    nxt = torch.cat([z[1:], x[None]], 0)
    prev = [phi[k - 1] if k > 0 else None for k in ks]
    zk = z[ks]
    f_old = torch.stack([st.local(k, zk[i], phi[k], prev[i], nxt[k]) for i, k in enumerate(ks)])
    base = torch.stack([st.base_grad(k, zk[i], prev[i]) for i, k in enumerate(ks)])
    resid = nxt[ks] - phi[ks]
    alpha = torch.tensor([eta * st.step0(k) for k in ks], dtype=z.dtype, device=z.device)
    alpha = alpha.view(-1, 1)  # (n, 1) → broadcast over images

    def trial(direction: torch.Tensor, a: torch.Tensor, sel: list[int]) -> tuple[torch.Tensor, ...]:
        znew = zk[sel] - _bcast(a[sel], direction[sel]) * direction[sel]
        phinew = st.flow(znew, [ks[i] for i in sel])
        fnew = torch.stack([st.local(ks[i], znew[j], phinew[j], prev[i], nxt[ks[i]])
                            for j, i in enumerate(sel)])
        ok = fnew <= f_old[sel] - ARMIJO_C * a[sel].double() * _sq_blocks(direction[sel])
        return znew, phinew, ok

    # Jacobian-free direction for every block of this colour, one batched flow call.
    d = base - st.mu * resid
    every = list(range(len(ks)))
    znew, phinew, ok = trial(d, alpha.expand(len(ks), z.shape[1]), every)
    accepted = ok.clone()
    new_z, new_phi = torch.where(_bcast(ok, zk), znew, zk), torch.where(_bcast(ok, zk), phinew,
                                                                        phi[ks])
    stats["jf_tried"] += ok.numel()
    stats["jf_accepted"] += int(ok.sum())

    # Exact local gradient through one segment for the blocks (images) that failed.
    rows = [i for i in every if not bool(ok[i].all())]
    if rows and room() >= 4 * m:
        g = base[rows] - st.mu * st.flow_vjp(zk[rows], [ks[i] for i in rows], resid[rows])
        grad = torch.zeros_like(d)
        grad[rows] = g
        a = alpha.expand(len(ks), z.shape[1]).clone()
        for _ in range(backtracks + 1):
            rows = [i for i in rows if not bool(accepted[i].all())]
            if not rows or room() < m:
                break
            zg, phig, okg = trial(grad, a, rows)
            for j, i in enumerate(rows):
                take = okg[j] & ~accepted[i]
                new_z[i] = torch.where(_bcast(take, zg[j]), zg[j], new_z[i])
                new_phi[i] = torch.where(_bcast(take, zg[j]), phig[j], new_phi[i])
                accepted[i] |= take
                stats["grad_accepted"] += int(take.sum())
            a = a / 2
        stats["grad_tried"] += int((~ok).sum())
    z[ks] = new_z
    phi[ks] = new_phi


def _sq_blocks(a: torch.Tensor) -> torch.Tensor:
    """Squared norm per (block, image) of a (n, B, ...) tensor, float64."""
    return a.double().flatten(2).pow(2).sum(2)


def prox_data(op: LinearOperator, y: torch.Tensor, anchor: torch.Tensor, sigma: float,
              mu: float, x0: torch.Tensor | None = None, tol: float = 1e-4,
              maxiter: int = 30) -> torch.Tensor:
    """argmin_x ‖Ax − y‖²/(2σ²) + (μ/2)‖x − anchor‖², i.e. the solution of

        (AᵀA + σ²μ I) x = Aᵀy + σ²μ·anchor,

    solved for the correction δ = x − anchor:  (AᵀA + σ²μ I) δ = Aᵀ(y − A·anchor)  (same
    solution; the tolerance then measures the data correction, and CG started in A's row
    space never touches its null space) by ``op.solve_normal``: closed form for masks, SR
    and blur, the full-spectrum SVD formula for CT (exact up to rounding), CG from the warm
    start x0 to ``tol`` otherwise.  If x0 is given and has the lower energy it is kept."""
    rho = sigma**2 * mu

    def energy(d: torch.Tensor) -> torch.Tensor:
        return _sq(op(anchor + d) - y) / (2 * sigma**2) + 0.5 * mu * _sq(d)

    with torch.no_grad():
        rhs = op.T(y - op(anchor))
        d0 = None if x0 is None else x0 - anchor
        d = op.solve_normal(rhs, rho, x0=d0, tol=tol, maxiter=maxiter)
        if d0 is not None:
            d = torch.where(_bcast(energy(d0) < energy(d), d), d0, d)
    return anchor + d


def _prox_step(st: _Stitching, x: torch.Tensor, phi_last: torch.Tensor,
               phi_last_old: torch.Tensor, cg_tol: float, cg_iters: int) -> torch.Tensor:
    """Step (ii), warm-started at x + ΔΦ_{K−1} (the last correction moved with the anchor),
    kept only where it lowers F."""

    def energy(u: torch.Tensor) -> torch.Tensor:
        return st.data_term(u) + 0.5 * st.mu * _sq(u - phi_last)

    xn = prox_data(st.op, st.y, phi_last, st.sigma, st.mu, x0=x + (phi_last - phi_last_old),
                   tol=cg_tol, maxiter=cg_iters)
    return torch.where(_bcast(energy(xn) <= energy(x), x), xn, x)


def _initial_states(st: _Stitching, x_init: torch.Tensor, init: str, seed: int) -> torch.Tensor:
    """Shooting states (K, B, C, H, W) from x_init (see the module docstring)."""
    if init in ("inverse", "conjugate"):
        states = invert_euler(st.prior, x_init, st.grid, st.M)
        return torch.stack(states[: st.K])
    z0 = seeded_noise(tuple(x_init.shape), seed, x_init)
    if init == "rollout":
        states = [z0]
        for k in range(st.K - 1):
            states.append(st.flow(states[-1][None], [k])[0])
        return torch.stack(states)
    return torch.stack([s * x_init + (1 - s) * z0 for s in st.grid[: st.K]])


def msflow(
    y: torch.Tensor,
    op: LinearOperator,
    *,
    prior: Prior,
    noise_std: float | None = None,
    seed: int = 0,
    progress: bool = False,
    task_family: str | None = None,
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
    level is given.
    ``info["history"]`` holds F and its three parts per iteration, ``info["options"]`` the
    options used.
    """
    context = task_context(op, task_family, noise_std)
    family = context.family
    prob = model_problem(y, op, prior, noise_std)
    o = resolve_options("msflow", GENERIC, prior, context, shooting=shooting,
                        segment_steps=segment_steps, iters=iters, lam=lam, init=init, eta=eta,
                        mu_growth=mu_growth)
    mu_noisy, mu_noiseless = o.pop("mu_noisy"), o.pop("mu_noiseless")
    if mu is None:
        mu = mu_noisy if prob.noise_std > 0 else mu_noiseless
    shooting, segment_steps, iters = o["shooting"], o["segment_steps"], o["iters"]
    lam, init, eta, mu_growth = o["lam"], o["init"], o["eta"], o["mu_growth"]
    _check_options(shooting, segment_steps, iters, mu, lam, init, eta, mu_growth, backtracks)
    sigma = data_sigma(prob.y, prob.noise_std)
    st = _Stitching(prior, op, prob.y, sigma, float(mu), float(lam), int(shooting),
                    int(segment_steps))
    mu_cap = float(mu_max) if mu_max is not None else float("inf")
    stats = {"jf_tried": 0, "jf_accepted": 0, "grad_tried": 0, "grad_accepted": 0}
    history: dict[str, list[float]] = {"objective": [], "data": [], "reg": [], "match": [],
                                       "mu": [], "nfe": []}
    # x_init: the regularised pseudo-inverse argmin ‖Ax−y‖²/(2σ²) + (μ/2)‖x‖² (→ A⁺y as σ → 0)
    zero = torch.zeros(*prob.y.shape[:2], *op.in_shape, dtype=prob.y.dtype, device=prob.y.device)
    setup = st.M * (1 + {"inverse": st.K, "noise": 0, "rollout": st.K - 1,
                         "conjugate": st.K}[init])
    setup += WARM_START_NFE if init == "conjugate" else 0
    if nfe is not None and int(nfe) < setup:
        raise MethodError(f"msflow needs nfe >= {setup} for its set-up (K = {st.K}, "
                          f"M = {st.M}, init {init!r}), got {nfe}")
    cap = float("inf") if nfe is None else float(nfe)
    nfe0 = prior.nfe  # evaluations are counted from here

    def room() -> float:
        return cap - (prior.nfe - nfe0)

    if init == "conjugate":
        x = warm_start(y, op, prior, noise_std, seed, family).to(prob.y.dtype)
    else:
        x = prox_data(op, prob.y, zero, sigma, st.mu, tol=1e-6, maxiter=200)
    z = _initial_states(st, x, init, seed)
    phi = st.flow(z, list(range(st.K)))

    def record() -> None:
        p = st.parts(z, phi, x)
        for key in ("data", "reg", "match"):
            history[key].append(float(p[key].sum()))
        history["objective"].append(history["data"][-1] + history["reg"][-1]
                                    + history["match"][-1])
        history["mu"].append(st.mu)
        history["nfe"].append(prior.nfe - nfe0)

    record()
    last_cost = 0
    for _ in tqdm(range(iters), disable=not progress, desc="msflow", leave=False):
        if last_cost > room():
            break  # the next iteration, at the last one's cost, would exceed the budget
        before = prior.nfe
        if mu_growth != 1.0 and len(history["objective"]) > 1:
            st.mu = min(st.mu * mu_growth, mu_cap)
        phi_last_old = phi[-1].clone()
        for colour in (0, 1):
            ks = list(range(colour, st.K, 2))
            if ks:
                _update_colour(st, z, phi, x, ks, eta, backtracks, stats, room)
        x = _prox_step(st, x, phi[-1], phi_last_old, cg_tol, cg_iters)
        record()
        last_cost = prior.nfe - before

    nxt = torch.cat([z[1:], x[None]], 0)
    defects = [float((nxt[k] - phi[k]).pow(2).mean().sqrt()) for k in range(st.K)]
    info: dict[str, Any] = {
        "history": history,
        "jf_acceptance": stats["jf_accepted"] / max(stats["jf_tried"], 1),
        "steps": stats,
        "defects_rms": defects,
        "z0": z[0].clone(),
        "sigma": sigma,
        "euler_steps": st.K * st.M,
        "options": {**o, "mu": float(mu)},
    }
    if x.is_cuda:
        info["peak_memory_bytes"] = torch.cuda.max_memory_allocated(x.device)
    return SolverOutput(image=prob.to_physical(x), nfe=prior.nfe - nfe0, info=info)


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
