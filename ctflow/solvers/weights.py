"""Pre-log Poisson statistics of post-log CT data: per-ray inverse-variance weights and the
weighted normal equations the data steps of the solvers solve with them.

Model.  Ray i of a scan with I0 incident photons (``photons``) detects about
c_i = I0·e^{−y_i} photons (Poisson) plus electronic noise of std σ_e counts
(``electronic_noise``, Gaussian).  To first order the post-log datum y_i = −log(counts/I0)
then has

    Var(y_i) ≈ (c_i + σ_e²)/c_i²,   so   w_i = 1/Var(y_i) = c_i²/(c_i + σ_e²)

(w_i = c_i without electronic noise, the classical pre-log Poisson weights), with c_i
computed from the measured y_i (plug-in; :func:`statistical_weights`).

Normalisation.  σ̄² = mean_i 1/w_i (over every ray of the batch) is the rays' mean variance,
the white-equivalent noise level (what ``ctflow.simulate.noise_std`` gives for simulated
data, up to the plug-in).  The *relative* weights w̃_i = σ̄²·w_i have mean(1/w̃) = 1 and
W = W̃/σ̄² exactly, so a data term written for white noise of std σ,
‖Ax − y‖²/(2σ²), becomes the inverse-variance one as ‖Ax − y‖²_W̃/(2σ²) with the same σ
(= σ̄), and is unchanged when all rays have equal counts (then W̃ = I).  When the caller also
gives ``noise_std`` σ, σ sets the level and W̃ only the shape (W = W̃/σ²).  A flow prior's
model space (x_m = a·μ + b, ``common.py``) scales σ by |a| and leaves W̃ as it is.

Weighted normal equations.  The regularised weighted least-squares steps of the solvers
(MS-Flow's proximal data step, the noise-aware target of the guided samplers) solve

    (AᵀW̃A + ρI) x = rhs

by conjugate gradients (:func:`solve_weighted_normal`).  AᵀW̃A maps A's row space into
itself and vanishes on its null space, so for rhs in the row space the solution is too.
Plain CG is cheap per iteration (one A, one Aᵀ) and converges in 40–80 iterations for the
ρ of the solvers at 64² (to 1e-5), but small ρ makes the system as ill-conditioned as AᵀA.
So if plain CG has not converged within its budget and the operator solves the *white*
system (AᵀA + ρI)x = b in closed form (masks, SR, blur; CT on its SVD or symmetric route),
it continues preconditioned with M = ω̄AᵀA + ρI, ω̄ = mean(w̃): the Rayleigh quotients of
M⁻¹(AᵀW̃A + ρI) lie in [min(w̃_min/ω̄, 1), max(w̃_max/ω̄, 1)], so its condition number is at
most w̃_max/w̃_min whatever ρ (~10 iterations to 1e-6 on 64² CT at 1e4 photons, each
costing one white solve, ≈ 70 A·Aᵀ pairs there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import MethodError
from ..operators import LinearOperator


def _finite(value: object) -> float | None:
    """value as a float if it is a finite real number (not a bool), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def check_photons(photons: object, electronic_noise: object, method: str) -> None:
    """MethodError unless ``photons`` is a finite number > 0 and ``electronic_noise`` a finite
    number >= 0."""
    i0, sigma_e = _finite(photons), _finite(electronic_noise)
    if i0 is None or i0 <= 0:
        raise MethodError(f"{method}: photons must be a positive number, got {photons!r}")
    if sigma_e is None or sigma_e < 0:
        raise MethodError(f"{method}: electronic_noise must be a number >= 0, "
                          f"got {electronic_noise!r}")


def statistical_weights(y: torch.Tensor, photons: float | None = None,
                        noise_std: float | None = None, electronic_noise: float = 0.0,
                        method: str = "mbir") -> torch.Tensor:
    """The inverse variances w_i of post-log data y (module docstring): c²/(c + σ_e²) with
    c = I0·e^{−y} when ``photons`` is given, else 1/σ² with ``noise_std`` σ (or 1)."""
    if photons is not None:
        check_photons(photons, electronic_noise, method)
        counts = float(photons) * torch.exp(-y.detach().double())
        return (counts.pow(2) / (counts + float(electronic_noise) ** 2)).to(y.dtype)
    scale = 1.0 / float(noise_std) ** 2 if noise_std else 1.0
    return torch.full_like(y.detach(), scale)


@dataclass(frozen=True)
class DataWeights:
    """Relative weights W̃ (mean(1/w̃) = 1 over the batch), σ̄ = √mean(1/w) from the counts,
    and ``noise_std``: the level the solver uses (the caller's σ if given, else σ̄)."""

    relative: torch.Tensor
    sigma: float
    noise_std: float


def poisson_weights(y: torch.Tensor, photons: float | None, electronic_noise: float = 0.0,
                    noise_std: float | None = None, method: str = "solver"
                    ) -> DataWeights | None:
    """W̃, σ̄ and the noise level of post-log data y with ``photons`` I0 (None: no weights,
    returns None).  ``noise_std`` given (> 0): it is the level; else σ̄."""
    if photons is None:
        if electronic_noise:
            raise MethodError(f"{method}: electronic_noise needs photons")
        return None
    w = statistical_weights(y, photons, None, electronic_noise, method).double()
    variance = float((1.0 / w.clamp_min(1e-300)).mean())
    if not (math.isfinite(variance) and variance > 0):
        raise MethodError(f"{method}: the photon weights of these data are not finite "
                          f"(photons {photons!r})")
    sigma = math.sqrt(variance)
    level = float(noise_std) if noise_std else sigma
    return DataWeights(relative=(w * variance).to(y.dtype), sigma=sigma, noise_std=level)


def weighted_normal(op: LinearOperator, weights: torch.Tensor, x: torch.Tensor,
                    rho: float) -> torch.Tensor:
    """(AᵀW̃A + ρI) x."""
    return op.T(weights * op(x)) + rho * x


def closed_form_white_solve(op: LinearOperator) -> bool:
    """Whether ``op.solve_normal`` is a closed form (else it runs CG itself): CT operators
    on the SVD or symmetric route, and operators that override the generic CG version."""
    route = getattr(op, "projection_method", None)
    if route is not None:
        return route != "cg"
    return type(op).solve_normal is not LinearOperator.solve_normal


def solve_weighted_normal(op: LinearOperator, weights: torch.Tensor, rhs: torch.Tensor,
                          rho: float, x0: torch.Tensor | None = None, tol: float = 1e-6,
                          maxiter: int = 200) -> torch.Tensor:
    """(AᵀW̃A + ρI) x = rhs per batch item from x0 (else 0) to ‖residual‖ ≤ tol·‖rhs‖: plain
    CG for up to ``maxiter`` iterations, then, where that did not converge and a closed-form
    white solve exists, up to ``maxiter`` preconditioned ones (module docstring)."""
    return solve_weighted_normal_route(op, weights, rhs, rho, x0, tol, maxiter)[0]


def solve_weighted_normal_route(op: LinearOperator, weights: torch.Tensor, rhs: torch.Tensor,
                                rho: float, x0: torch.Tensor | None = None,
                                tol: float = 1e-6, maxiter: int = 200, *,
                                route: bool | None = None, mean_weight: float | None = None
                                ) -> tuple[torch.Tensor, bool]:
    """:func:`solve_weighted_normal` and whether it went on preconditioned.

    ``route`` None: CG stops once every item converged (a host read per iteration) and
    continues preconditioned only where it did not.  ``route`` given (the route an earlier
    solve returned; for loops on a GPU, where every read waits for the device): nothing is
    read on the host, ``maxiter`` plain iterations run, then ``maxiter`` preconditioned ones
    if ``route``, items that reached ``tol`` frozen in place (α = 0) — the same result, at
    the price of the iterations skipped otherwise; ``mean_weight`` = mean(w̃), read
    beforehand by the caller."""
    _check_rho(rho)
    adaptive = route is None
    apply = _weighted_apply(op, weights, rho)
    with torch.no_grad():
        x, done = pcg(apply, rhs, None, x0, tol, maxiter, early_exit=adaptive)
        go_on = (not bool(done)) if adaptive else bool(route)
        if not (go_on and rho > 0 and closed_form_white_solve(op)):
            return x, False
        omega = float(weights.double().mean()) if mean_weight is None else mean_weight
        x = pcg(apply, rhs, _white_preconditioner(op, omega, rho), x, tol, maxiter,
                early_exit=adaptive)[0]
        return x, True


def _check_rho(rho: float) -> None:
    if not rho >= 0:
        raise MethodError(f"the weighted normal equations need rho >= 0, got {rho}")


def _weighted_apply(op: LinearOperator, weights: torch.Tensor, rho: float
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda v: weighted_normal(op, weights, v, rho)


def _white_preconditioner(op: LinearOperator, omega: float, rho: float
                          ) -> Callable[[torch.Tensor], torch.Tensor]:
    """r ↦ (ω̄AᵀA + ρI)⁻¹ r = op.solve_normal(r, ρ/ω̄)/ω̄, ω̄ = ``omega`` = mean(w̃)."""
    return lambda r: op.solve_normal(r, rho / omega) / omega


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item inner products, float64, shaped to broadcast against (B, ...)."""
    return (a.double() * b.double()).flatten(1).sum(1).view(-1, *([1] * (a.ndim - 1)))


def pcg(apply: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor,
        precondition: Callable[[torch.Tensor], torch.Tensor] | None,
        x0: torch.Tensor | None, tol: float, maxiter: int, early_exit: bool = True
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Preconditioned CG for M x = rhs (M symmetric positive definite), per batch item:
    z = P⁻¹r, α = ⟨r, z⟩/⟨p, Mp⟩, x += αp, r −= αMp, β = ⟨r', z'⟩/⟨r, z⟩, p = z' + βp;
    items stop (α = 0) once ‖r‖ ≤ tol·‖rhs‖.  Returns x and whether every item stopped (a
    0-dim bool tensor on rhs's device).  ``early_exit`` ends the loop once all have stopped
    (one host read per iteration); without it all ``maxiter`` iterations run, read-free."""
    def prec(r: torch.Tensor) -> torch.Tensor:
        return r if precondition is None else precondition(r)

    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - apply(x) if x0 is not None else rhs.clone()
    stop = tol**2 * _dot(rhs, rhs)
    z = prec(r)
    p = z.clone()
    rz = _dot(r, z)
    for _ in range(maxiter):
        active = _dot(r, r) > stop
        if early_exit and not bool(active.any()):
            return x, ~active.any()
        mp = apply(p)
        pmp = _dot(p, mp)
        alpha = torch.where(active & (pmp > 0), rz / pmp.clamp_min(1e-300), 0.0)
        x = x + alpha.to(x.dtype) * p
        r = r - alpha.to(r.dtype) * mp
        z = prec(r)
        rz_new = _dot(r, z)
        beta = torch.where(active & (rz > 0), rz_new / rz.clamp_min(1e-300), 0.0)
        p = z + beta.to(p.dtype) * p
        rz = rz_new
    return x, ~(_dot(r, r) > stop).any()


def photon_noise(y: torch.Tensor, photons: float | None, electronic_noise: float,
                 noise_std: float | None, method: str
                 ) -> tuple[float | None, torch.Tensor | None]:
    """A solver's noise level and relative weights W̃: (``noise_std``, None) without
    ``photons``, else (the caller's σ if given, else σ̄; W̃) — :func:`poisson_weights`."""
    dw = poisson_weights(y, photons, electronic_noise, noise_std, method)
    if dw is None:
        return noise_std, None
    return dw.noise_std, dw.relative
