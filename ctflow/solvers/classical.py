"""Classical reconstruction: FBP, CGLS, SIRT and total variation (Chambolle–Pock).

All four work on batches y (B, C, *op.out_shape) and return images in the operator's input
units; CGLS, SIRT and TV work with any LinearOperator, FBP needs a CT operator.
``info`` carries the iteration histories.  No prior and no randomness is involved (``seed``
only seeds the Frobenius-norm estimate of TV's default weight).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import MethodError
from ..operators import LinearOperator
from ..operators import fbp as _fbp
from ..operators.fbp import FILTERS
from .common import SolverOutput
from .tv_data import TvDataBlock
from .weights import photon_noise

TV_LAM_SCALE = 0.5  # λ = TV_LAM_SCALE · σ · (mean column norm of A), see :func:`tv`
TV_STEP_RATIO = 10.0  # τ/σ with the plain metric on CT (precondition="none"), and ρ:
TV_RELAXATION = 1.8  # of ω ∈ {10, 20, 40} × ρ ∈ {1, 1.5, 1.8} on real 256² validation slices
# (60 views, 1e5 photons), (10, 1.8) led at 100 and 300 iterations: 35.69 dB after 300
# against 34.67 for the earlier (10, 1) (docs/tuning/tv_steps.md)
TV_RAMP_STEP_RATIO = 2.0  # τ/σ with the ramp metric, and its relaxation ρ: of ω ∈ {2, 3, 5}
TV_RAMP_RELAXATION = 1.5  # × ρ ∈ {1, 1.5, 1.8} on real validation slices (128², 256²; 60
# views at 1e5 photons and 30 noiseless), (2, 1.5) was within 0.4 dB of the best after 20
# iterations and 0.25 dB after 40, 60, 100 and at the default stop, which it reached in 111
# (128²) and 156 (256²) iterations against 159 and 220 for the earlier (5, 1); 256² after 40
# iterations: 33.38 against 32.62 dB.  With photon weights (256², 60 views, 1e5) it also led
# after 25 and 100 iterations: 35.12 and 35.81 dB (docs/tuning/tv_steps.md)
TV_IMAGE_STEP_RATIO = 100.0  # τ/σ and ρ with the plain metric on non-CT operators (masks,
TV_IMAGE_RELAXATION = 1.5  # super-resolution, blur): of ω ∈ {10, 30, 100, 300} × ρ ∈ {1,
# 1.5, 1.8} on real validation slices (64², 128²; inpaint-box, inpaint-random, sr4, blur,
# noiseless), (100, 1.5) was within 0.02 dB of the best after 300 iterations at both sizes:
# 28.69 and 29.43 dB, against 25.19 and 24.96 for the CT plain metric's (10, 1.8), which left
# the holes half filled (docs/tuning/tv_steps.md)
TV_TOL = 5e-4  # relative change per iteration at which TV stops (within 0.1 dB of its limit
# on 64²–256² chest phantoms, 60 views, 1e5 photons: 100–200 iterations)
TV_PRECONDITIONERS = ("auto", "ramp", "none")
NOISELESS_REL_STD = 0.005  # σ assumed by TV when noise_std is None: 0.5 % of RMS(y)


def _item_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item inner products as a (B·C,) tensor (items = leading two dims)."""
    return (a * b).flatten(2).sum(-1).flatten()


def _per_item(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(*like.shape[:2], *([1] * (like.ndim - 2)))


def _stop_level(y: torch.Tensor, noise_std: float | None, discrepancy: float) -> float:
    """Discrepancy principle: stop once ‖A x − y‖ ≤ τ σ √m (0 when noiseless)."""
    if noise_std is None or noise_std <= 0:
        return 0.0
    m = y[0, 0].numel()
    return discrepancy * float(noise_std) * math.sqrt(m)


def fbp(y: torch.Tensor, op: LinearOperator, *, prior: Any = None,
        noise_std: float | None = None, seed: int = 0, progress: bool = False,
        filter: str = "ram-lak") -> SolverOutput:
    """Filtered back-projection (see ``ctflow.operators.fbp``); ``filter`` one of
    ram-lak, shepp-logan, cosine, hamming, hann."""
    if getattr(op, "geometry", None) is None:
        raise MethodError(f"method 'fbp' needs a CT operator, got {type(op).__name__}")
    if filter not in FILTERS:
        raise MethodError(f"unknown FBP filter {filter!r}; choose one of {', '.join(FILTERS)}")
    return SolverOutput(image=_fbp(y, op, filter=filter), info={"filter": filter})


def cgls(y: torch.Tensor, op: LinearOperator, *, prior: Any = None,
         noise_std: float | None = None, seed: int = 0, progress: bool = False,
         iters: int = 30, tol: float = 1e-8, discrepancy: float = 1.0) -> SolverOutput:
    """CGLS on min ‖A x − y‖², x₀ = 0 (per batch item):

        r₀ = y, s₀ = Aᵀr₀, p₀ = s₀
        q = A p,  α = ‖s‖²/‖q‖²,  x ← x + α p,  r ← r − α q
        s' = Aᵀ r,  β = ‖s'‖²/‖s‖²,  p ← s' + β p

    Stops after ``iters`` iterations, when ‖s‖ ≤ tol·‖s₀‖, or (noise_std given) by the
    discrepancy principle ‖r‖ ≤ discrepancy·σ·√m, which is CGLS's regularisation.
    info: ``residual_norms`` ‖y − A x_k‖ (mean over items), ``iters``.
    """
    _check_iters(iters)
    x = torch.zeros(*y.shape[:2], *op.in_shape, dtype=y.dtype, device=y.device)
    r = y.detach().clone()
    s = op.T(r)
    p = s.clone()
    ss = _item_dot(s, s)
    s0 = ss.clone()
    tiny = torch.finfo(y.dtype).tiny
    stop = _stop_level(y, noise_std, discrepancy)
    history = [float(_item_dot(r, r).sqrt().mean())]
    done = 0
    with torch.no_grad():
        for _ in tqdm(range(iters), desc="cgls", disable=not progress, leave=False):
            active = (ss > tol**2 * s0) & (_item_dot(r, r).sqrt() > stop)
            if not bool(active.any()):
                break
            q = op(p)
            alpha = torch.where(active, ss / _item_dot(q, q).clamp_min(tiny), 0.0)
            x = x + _per_item(alpha, x) * p
            r = r - _per_item(alpha, r) * q
            s = op.T(r)
            ss_new = _item_dot(s, s)
            beta = torch.where(active, ss_new / ss.clamp_min(tiny), 0.0)
            p = torch.where(_per_item(active, p), s + _per_item(beta, p) * p, p)
            ss = torch.where(active, ss_new, ss)
            history.append(float(_item_dot(r, r).sqrt().mean()))
            done += 1
    return SolverOutput(image=x, info={"iters": done, "residual_norms": history})


def sirt(y: torch.Tensor, op: LinearOperator, *, prior: Any = None,
         noise_std: float | None = None, seed: int = 0, progress: bool = False,
         iters: int = 100, nonneg: bool = True, discrepancy: float = 1.0) -> SolverOutput:
    """SIRT (simultaneous iterative reconstruction), for operators with non-negative entries:

        R = diag(1/(A 𝟙)),  C = diag(1/(Aᵀ 𝟙))      (zero sums → 0)
        x_{k+1} = C Aᵀ R (y − A x_k) + x_k,  then x ← max(x, 0) if ``nonneg``

    Stops after ``iters`` or (noise_std given) once ‖y − A x‖ ≤ discrepancy·σ·√m.
    info: ``residual_norms`` ‖y − A x_k‖ (mean over items), ``iters``.
    """
    _check_iters(iters)
    with torch.no_grad():
        ones_in = torch.ones(1, 1, *op.in_shape, dtype=y.dtype, device=y.device)
        ones_out = torch.ones(1, 1, *op.out_shape, dtype=y.dtype, device=y.device)
        row = op(ones_in)
        col = op.T(ones_out)
        rinv = torch.where(row > 1e-12 * row.abs().max(), 1.0 / row, torch.zeros_like(row))
        cinv = torch.where(col > 1e-12 * col.abs().max(), 1.0 / col, torch.zeros_like(col))
        x = torch.zeros(*y.shape[:2], *op.in_shape, dtype=y.dtype, device=y.device)
        stop = _stop_level(y, noise_std, discrepancy)
        res = y.detach().clone()
        history = [float(_item_dot(res, res).sqrt().mean())]
        done = 0
        for _ in tqdm(range(iters), desc="sirt", disable=not progress, leave=False):
            if float(_item_dot(res, res).sqrt().max()) <= stop:
                break
            x = x + cinv * op.T(rinv * res)
            if nonneg:
                x = x.clamp_min(0.0)
            res = y - op(x)
            history.append(float(_item_dot(res, res).sqrt().mean()))
            done += 1
    return SolverOutput(image=x, info={"iters": done, "residual_norms": history})


def _grad(x: torch.Tensor) -> torch.Tensor:
    """Forward differences with Neumann boundary: (B, C, 2, H, W)."""
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    dy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return torch.stack([dy, dx], dim=2)


def _grad_adjoint(g: torch.Tensor) -> torch.Tensor:
    """∇ᵀ g = −div g, the exact adjoint of :func:`_grad`."""
    dy, dx = g[:, :, 0], g[:, :, 1]
    out = torch.zeros_like(dx)
    out[..., :, :-1] -= dx[..., :, :-1]
    out[..., :, 1:] += dx[..., :, :-1]
    out[..., :-1, :] -= dy[..., :-1, :]
    out[..., 1:, :] += dy[..., :-1, :]
    return out


def tv_seminorm(x: torch.Tensor) -> torch.Tensor:
    """Isotropic TV(x) = Σ_pixels ‖(∇x)_pixel‖₂, per item (B, C)."""
    return _grad(x).pow(2).sum(2).sqrt().flatten(2).sum(-1)


def default_tv_lam(y: torch.Tensor, op: LinearOperator, noise_std: float | None,
                   seed: int = 0, probes: int = 4) -> float:
    """λ = TV_LAM_SCALE · σ · ‖A‖_F/√n: the size of the noise in Aᵀη per pixel, with σ the
    noise std (or NOISELESS_REL_STD·RMS(y) when unknown); ‖A‖_F by Hutchinson probes."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(probes, 1, *op.in_shape, generator=gen).to(y.device, y.dtype)
    with torch.no_grad():
        fro = float(op(z).pow(2).sum() / probes) ** 0.5
    n = math.prod(op.in_shape)
    sigma = float(noise_std) if noise_std else \
        NOISELESS_REL_STD * float(y.detach().double().pow(2).mean().sqrt())
    return TV_LAM_SCALE * sigma * fro / math.sqrt(n)


def tv(y: torch.Tensor, op: LinearOperator, *, prior: Any = None,
       noise_std: float | None = None, seed: int = 0, progress: bool = False,
       iters: int = 300, lam: float | None = None, nonneg: bool = True,
       log_every: int = 10, photons: float | None = None,
       electronic_noise: float = 0.0, precondition: str = "auto", init: str = "auto",
       tol: float | None = None, step_ratio: float | None = None,
       relaxation: float | None = None) -> SolverOutput:
    """Total-variation reconstruction  min_x ½‖A x − y‖²_W̃ + λ TV(x)  (+ x ≥ 0 if nonneg)
    by the relaxed primal–dual method of Chambolle & Pock on K = [K₁; ∇], with the data
    block K₁ normalised by L (both below) and the image scaled by 1/s (s = RMS of the
    normalised back-projection of the data), so both blocks are O(1):

        x̃ = max(x − τ(K₁ᵀu + ∇ᵀq), 0),  x̄ = 2x̃ − x
        ũ = prox of the data term's conjugate at u + Σ₁(K₁x̄ − ŷ)
        q̃ = clip_λ̂(q + σ ∇x̄)                         (projection on {‖q_i‖₂ ≤ λ̂})
        (x, u, q) ← (x, u, q) + ρ((x̃, ũ, q̃) − (x, u, q))

    with λ̂ = λ/(L² s), τ = ω/3, σ = 1/(3ω), τσ‖Σ^{1/2}K‖² ≤ 1 because ‖∇‖² ≤ 8, and the
    relaxation ρ ∈ (0, 2) (ρ = 1: the plain method).  K₁x and Kᵀ(u, q) are carried along
    with x and (u, q), so an iteration costs one A and one Aᵀ.  ω (``step_ratio``) and ρ
    (``relaxation``) default to the values tuned per metric on real validation slices
    (``scripts/tune_tv_steps.py``).  The data block's dual metric Σ₁ (``precondition``):

    * ``"ramp"`` (CT operators; ``ramp_metric``): K₁ = A/L on a padded detector,
      Σ₁ = σF with F a ramp filter along the detector, L = ‖F^{1/2}A‖, ŷ = y/(L s) and the
      weights W̃ (1 on the padding) in the prox: (I + σFW̃⁻¹)u = u + σF(K₁x̄ − ŷ), in closed
      form without weights, else by a few inner CG iterations.  It whitens AᵀA's 1/|k|
      spectrum (k the spatial frequency): on a 256² chest phantom, 60 views, 1e5 photons,
      it reached 38.8 dB in 100 iterations where the plain metric from zero was at 29.7 dB
      (39.7 dB is the limit of both; both unrelaxed).  Weights inside K₁ = W̃^{1/2}A/L
      instead failed where they span 1e5, as on a real 512² slice at 1e5 photons: 21.9 dB,
      the plain metric 32.1.  (ω, ρ) = TV_RAMP_STEP_RATIO, TV_RAMP_RELAXATION;
    * ``"none"``: K₁ = A/L, Σ₁ = σI, L = ‖A‖, u ← (u + σ(K₁x̄ − ŷ))/(1 + σ/w̃), ŷ = y/(L s);
      (ω, ρ) = TV_STEP_RATIO, TV_RELAXATION on CT, else TV_IMAGE_STEP_RATIO, ..._RELAXATION;
    * ``"auto"``: ramp for CT operators, else none.

    ``init`` "fbp" starts CT operators from max(FBP(y), 0), "zeros" from 0, "auto" fbp with
    the ramp metric and zeros without.  Stops after ``iters`` iterations or once
    ‖x_{k+1} − x_k‖ ≤ ``tol``·‖x_{k+1}‖ for every item (None: TV_TOL with the ramp metric, 0
    without, i.e. all ``iters``: non-CT operators run them all from zero).  ``lam`` None:
    :func:`default_tv_lam` (uses noise_std when given).  info: ``lam``, ``op_norm`` (L),
    ``iters`` (run), ``objective`` (the unscaled objective every ``log_every``
    iterations), ``precondition`` (the metric used), ``step_ratio`` and ``relaxation``
    (ω and ρ used).

    ``photons`` I0 (``electronic_noise`` σ_e in counts): W̃ = the relative inverse-variance
    weights of ``weights.py`` (mean(1/w̃) = 1, so λ keeps its meaning; noise_std None then
    means σ̄ = √mean(1/w)); without ``photons`` W̃ = I.
    """
    _check_tv_options(iters, precondition, init, tol, step_ratio, relaxation)
    weights = _tv_weights(y, photons, electronic_noise)
    if photons is not None and noise_std is None:  # σ̄² = mean variance of the rays
        noise_std = photon_noise(y, photons, electronic_noise, None, "tv")[0]
    if lam is None:
        lam = default_tv_lam(y, op, noise_std, seed=seed)
    if not (math.isfinite(lam) and lam >= 0):
        raise MethodError(f"tv: lam must be a finite number >= 0, got {lam}")
    is_ct = getattr(op, "geometry", None) is not None
    ramp = is_ct and precondition in ("ramp", "auto")
    tol = (TV_TOL if ramp else 0.0) if tol is None else tol
    start = ("fbp" if ramp else "zeros") if init == "auto" else init
    data = TvDataBlock(op, y.detach(), weights, ramp, seed)
    with torch.no_grad():
        back = data.back_projection()
        s = float(back.double().pow(2).mean().sqrt()) or 1.0
        yh = data.target / s
        lam_h = lam / (data.norm * data.norm * s)
        steps = _tv_steps("ramp" if ramp else "plain" if is_ct else "image", step_ratio, relaxation)
        if start == "fbp" and is_ct:
            x, kx = data.start(nonneg)
            x, kx = x / s, kx / s
        else:
            x = torch.zeros(*y.shape[:2], *op.in_shape, dtype=y.dtype, device=y.device)
            kx = torch.zeros_like(data.target)  # K₁x (kept: one A and one Aᵀ per iteration)
        x, done, objective = _primal_dual(data, x, kx, yh, lam, lam_h, s, steps, iters, tol,
                                          nonneg, log_every, progress)
    return SolverOutput(image=x * s, info={"iters": done, "lam": lam, "op_norm": data.norm,
                                           "objective": objective,
                                           "precondition": "ramp" if ramp else "none",
                                           "step_ratio": steps[0], "relaxation": steps[1]})


def _tv_steps(kind: str, step_ratio: float | None, relaxation: float | None
              ) -> tuple[float, float]:
    """(ω, ρ): the given values, else the tuned ones of ``kind``: "ramp" (CT, ramp metric),
    "plain" (CT, plain metric) or "image" (non-CT operators, plain metric)."""
    omega, rho = {"ramp": (TV_RAMP_STEP_RATIO, TV_RAMP_RELAXATION),
                  "plain": (TV_STEP_RATIO, TV_RELAXATION),
                  "image": (TV_IMAGE_STEP_RATIO, TV_IMAGE_RELAXATION)}[kind]
    return (omega if step_ratio is None else float(step_ratio),
            rho if relaxation is None else float(relaxation))


def _check_tv_options(iters: int, precondition: str, init: str, tol: float | None,
                      step_ratio: float | None, relaxation: float | None) -> None:
    _check_iters(iters)
    if precondition not in TV_PRECONDITIONERS:
        raise MethodError(f"tv: precondition must be one of {', '.join(TV_PRECONDITIONERS)}, "
                          f"got {precondition!r}")
    if init not in ("auto", "fbp", "zeros"):
        raise MethodError(f"tv: init must be 'auto', 'fbp' or 'zeros', got {init!r}")
    if tol is not None and not (math.isfinite(tol) and tol >= 0):
        raise MethodError(f"tv: tol must be a finite number >= 0, got {tol}")
    if step_ratio is not None and not (math.isfinite(step_ratio) and step_ratio > 0):
        raise MethodError(f"tv: step_ratio must be a finite number > 0, got {step_ratio}")
    if relaxation is not None and not 0 < relaxation < 2:
        raise MethodError(f"tv: relaxation must lie in (0, 2), got {relaxation}")


def _primal_dual(data: TvDataBlock, x: torch.Tensor, kx: torch.Tensor, yh: torch.Tensor,
                 lam: float, lam_h: float, s: float, steps: tuple[float, float], iters: int,
                 tol: float, nonneg: bool, log_every: int, progress: bool
                 ) -> tuple[torch.Tensor, int, list[float]]:
    """The relaxed iterations of :func:`tv` from x̂ = ``x`` (K₁x̂ = ``kx``) with
    ``steps`` = (ω, ρ): τ = ω/3, σ = 1/(3ω); returns x̂, the iterations run and the logged
    objective.  K₁x and Kᵀ(u, q) are carried along as the same combinations as x and (u, q),
    so an iteration costs one A and one Aᵀ."""
    omega, rho = steps
    tau, sig = omega / 3.0, 1.0 / (3.0 * omega)  # τσ‖K‖² ≤ 1
    u = torch.zeros_like(yh)
    q = torch.zeros(*x.shape[:2], 2, *x.shape[2:], dtype=x.dtype, device=x.device)
    kt = torch.zeros_like(x)  # K₁ᵀu + ∇ᵀq
    tiny = torch.finfo(x.dtype).tiny
    objective: list[float] = []
    done = 0
    for k in tqdm(range(iters), desc="tv", disable=not progress, leave=False):
        xh = x - tau * kt
        if nonneg:
            xh = xh.clamp_min(0.0)
        kxh = data.forward(xh)
        xbar = 2 * xh - x
        uh = data.dual_step(u, 2 * kxh - kx - yh, sig)
        qh = q + sig * _grad(xbar)
        qh = qh / (qh.pow(2).sum(2, keepdim=True).sqrt() / max(lam_h, 1e-30)).clamp_min(1.0)
        kth = data.adjoint(uh) + _grad_adjoint(qh)
        step = rho * (xh - x)
        x = x + step
        kx = kx + rho * (kxh - kx)
        u = u + rho * (uh - u)
        q = q + rho * (qh - q)
        kt = kt + rho * (kth - kt)
        change = _item_dot(step, step).sqrt() / _item_dot(x, x).sqrt().clamp_min(tiny)
        done = k + 1
        # (the first step leaves x where it is: u = q = 0 until then)
        last = k == iters - 1 or (k > 0 and bool((change <= tol).all()))
        if log_every and (k % log_every == log_every - 1 or last):
            objective.append(float((data.misfit(kx, s) + lam * tv_seminorm(x * s)).mean()))
        if last:
            break
    return x, done, objective


def _tv_weights(y: torch.Tensor, photons: float | None,
                electronic_noise: float = 0.0) -> torch.Tensor | float:
    """TV's data weights: 1 without ``photons``, else the relative inverse variances W̃ of
    ``weights.poisson_weights`` (c_i·mean(1/c) with c_i = I0·e^{−y_i} when σ_e = 0: scaled
    so the weighted noise keeps the mean variance)."""
    weights = photon_noise(y, photons, electronic_noise, None, "tv")[1]
    return 1.0 if weights is None else weights


def _check_iters(iters: int) -> None:
    if not isinstance(iters, int) or iters < 1:
        raise MethodError(f"iters must be a positive integer, got {iters!r}")
