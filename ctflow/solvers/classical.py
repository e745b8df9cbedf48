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
from .weights import photon_noise

TV_LAM_SCALE = 0.5  # λ = TV_LAM_SCALE · σ · (mean column norm of A), see :func:`tv`
TV_STEP_RATIO = 10.0  # τ/σ of Chambolle–Pock on the rescaled problem (tuned on phantoms)
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
       electronic_noise: float = 0.0) -> SolverOutput:
    """Total-variation reconstruction  min_x ½‖A x − y‖² + λ TV(x)  (+ x ≥ 0 if nonneg)
    by Chambolle–Pock on K = [A/L_A; ∇] with the data rescaled by 1/L_A and the image by
    1/s (L_A = ‖A‖ by power iteration, s = RMS of Aᵀy/L_A²) so both blocks are O(1):

        p ← (p + σ(K₁x̄ − ŷ)) / (1 + σ)                (prox of the data term's conjugate)
        q ← clip_λ̂(q + σ ∇x̄)                          (projection on {‖q_i‖₂ ≤ λ̂})
        x' ← max(x − τ(K₁ᵀp + ∇ᵀq), 0),  x̄ ← 2x' − x,  x ← x'
    with ŷ = y/(L_A s), λ̂ = λ/(L_A² s), K₁ = A/L_A and τ = ω/3, σ = 1/(3ω), so
    τσ‖K‖² ≤ 1 since ‖K‖² ≤ 1 + ‖∇‖² ≤ 9; ω = TV_STEP_RATIO.

    ``lam`` None: :func:`default_tv_lam` (uses noise_std when given).  info: ``lam``,
    ``op_norm``, ``objective`` (the unscaled objective every ``log_every`` iterations).

    ``photons`` I0 (Poisson data; ``electronic_noise`` σ_e in counts): the data term becomes
    ½‖A x − y‖²_W̃ with the relative inverse-variance weights W̃ of ``weights.py``
    (w̃_i ∝ c_i²/(c_i + σ_e²), c_i = I0·e^{−y_i}, mean(1/w̃) = 1 over the batch) so that λ
    keeps its meaning (noise_std None then means σ̄ = √mean(1/w)); its dual prox is closed
    form per ray, p ← (p + σ(K₁x̄ − ŷ)) / (1 + σ/w̃_i).
    """
    _check_iters(iters)
    weights = _tv_weights(y, photons, electronic_noise)
    if photons is not None and noise_std is None:  # σ̄² = mean variance of the rays
        noise_std = photon_noise(y, photons, electronic_noise, None, "tv")[0]
    if lam is None:
        lam = default_tv_lam(y, op, noise_std, seed=seed)
    if not (math.isfinite(lam) and lam >= 0):
        raise MethodError(f"tv: lam must be a finite number >= 0, got {lam}")
    la = op.norm(iters=30, seed=seed, device=y.device)
    if la == 0:
        raise MethodError("tv: the operator is zero")
    with torch.no_grad():
        yn = y.detach() / la
        back = op.T(yn) / la
        s = float(back.double().pow(2).mean().sqrt()) or 1.0
        yh = yn / s
        lam_h = lam / (la * la * s)
        tau, sig = TV_STEP_RATIO / 3.0, 1.0 / (3.0 * TV_STEP_RATIO)  # τσ‖K‖² ≤ 1
        x = torch.zeros(*y.shape[:2], *op.in_shape, dtype=y.dtype, device=y.device)
        xbar = x.clone()
        ax = torch.zeros_like(y)  # K₁x·L_A = A x, kept so each iteration needs one A and one Aᵀ
        axbar = ax.clone()  # A x̄ = 2 A x' − A x by linearity
        p = torch.zeros_like(y)
        q = torch.zeros(*x.shape[:2], 2, *x.shape[2:], dtype=y.dtype, device=y.device)
        objective: list[float] = []
        for k in tqdm(range(iters), desc="tv", disable=not progress, leave=False):
            p = (p + sig * (axbar / la - yh)) / (1.0 + sig / weights)
            q = q + sig * _grad(xbar)
            q = q / (q.pow(2).sum(2, keepdim=True).sqrt() / max(lam_h, 1e-30)).clamp_min(1.0)
            x_new = x - tau * (op.T(p) / la + _grad_adjoint(q))
            if nonneg:
                x_new = x_new.clamp_min(0.0)
            xbar = 2 * x_new - x
            x = x_new
            ax_new = op(x)
            axbar = 2 * ax_new - ax
            ax = ax_new
            if log_every and (k % log_every == log_every - 1 or k == iters - 1):
                img = x * s
                data = 0.5 * (weights * (ax * s - y).pow(2)).flatten(2).sum(-1)
                objective.append(float((data + lam * tv_seminorm(img)).mean()))
    return SolverOutput(image=x * s, info={"iters": iters, "lam": lam, "op_norm": la,
                                           "objective": objective})


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
