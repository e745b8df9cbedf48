"""Pieces shared by the pseudo-inverse-guided flow samplers (ΠGFM, OT-ODE, C-ΠGFM, C-ΠGDM).

All of them integrate a guided flow ODE (model space, t = 0 noise, t = 1 data)

    dx/dt = v(x, t) + c(t) · J_x̂1ᵀ (ŷ_t − P x̂1),   x̂1 = x + (1−t) v,  J_x̂1 = I + (1−t) J_v,

where P = A⁺A and ŷ_t is the *effective target* in A's row space:

* noiseless (σ_y = 0):  ŷ = ỹ = A⁺y, so ŷ − P x̂1 = A⁺(y − A x̂1);
* noisy:  ŷ_t = P (AᵀA + ρ_t I)⁻¹ (Aᵀy + ρ_t P x̂1),  ρ_t = κ σ_y² / r_t²,
  r_t² = (1−t)² / (t² + (1−t)²).

Derivation of the noisy target: in an SVD basis A = U S Vᵀ, per singular value s_k the
ΠGDM guidance is r_t² · Aᵀ(r_t² AAᵀ + σ_y² I)⁻¹(y − A x̂1) → s_k (y_k − s_k x̂_k)/(s_k² + ρ_t),
and ŷ_k − x̂_k with ŷ_k = (s_k y_k + ρ_t x̂_k)/(s_k² + ρ_t) is exactly that.  So
c(t)(ŷ_t − P x̂1) *is* the noise-aware ΠGDM guidance (scaled by r_t²), exact for every operator,
computed with one ``op.solve_normal`` (closed form for masks / SR / blur, CG for CT).  Noise is
never amplified: directions with s_k² ≪ ρ_t follow the prior (ŷ_k ≈ x̂_k).  The solvers keep
the noiseless structure (c·ŷ is a forcing in P's range, −c·P x a stiff linear part) and freeze
ŷ_t over a step, i.e. the part c·(P − W_t) x̂1 with W_t = (AᵀA + ρ_t)⁻¹AᵀA is explicit.

Pre-log Poisson data (``photons``; ``weights.py``): the noise covariance is Σ = σ̄²W̃⁻¹
with the relative per-ray weights W̃ (mean(1/w̃) = 1) and σ̄ the white-equivalent level.  The
ΠGDM guidance r_t²·Aᵀ(r_t² AAᵀ + Σ)⁻¹(y − A x̂1) equals, by Aᵀ(r²AAᵀ + Σ)⁻¹ =
(r²AᵀΣ⁻¹A + I)⁻¹AᵀΣ⁻¹, (AᵀW̃A + ρ_t I)⁻¹AᵀW̃(y − A x̂1) with the same ρ_t = κσ̄²/r_t², and
since A P = A it is ŷ_t − P x̂1 for the *weighted* target

    ŷ_t = P (AᵀW̃A + ρ_t I)⁻¹(AᵀW̃y + ρ_t P x̂1)      (CG, warm-started at the last solve).

On a GPU the solves after the start run a fixed number of masked CG iterations on the
start's route (``weights.solve_weighted_normal_route``), so the sampling loop never waits
for a value to be read back to the host; on the CPU they stop as soon as they converge.

AᵀW̃A + ρ_t I keeps A's row space, so the solve already lies in P's range (P only removes
the CG rounding).  Only the target changes: P stays the unweighted orthogonal projector
A⁺A, which is what makes the conjugate map A_t = e^{λt}[(I−P) + e^{wκ}P] exact, and the
start ŷ_{τ} (x̂1 = 0) is the weighted Tikhonov estimate P(AᵀW̃A + ρ_τ)⁻¹AᵀW̃y.  With all
rays equal (W̃ = I) both reduce to the white formulas above.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import MethodError
from ..paths import interpolate, r2
from ..priors.base import Prior
from .common import ModelProblem, seeded_noise
from .weights import solve_weighted_normal_route

# CG of the weighted target (pre-log Poisson data): relative residual and iteration cap per
# solve, warm-started at the previous step's solution (64² ct60: 40–80 plain CG iterations
# reach 1e-5; past the cap, weights.solve_weighted_normal continues preconditioned).
WEIGHTED_CG_TOL = 1e-5
WEIGHTED_CG_ITERS = 100


def host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a value back to the host is free on ``device`` (CPU: the values are
    already there; a GPU waits for its queue to drain at every read)."""
    return device.type == "cpu"


# -- network calls -----------------------------------------------------------------------
def velocity_and_vjp(
    prior: Prior, x: torch.Tensor, t: float
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """v(x, t) (1 NFE) and cot ↦ J_vᵀ cot (1 NFE per call): ``Prior.velocity_with_vjp``.

    The cotangent r = ŷ − P x̂1 depends on v itself, so the forward keeps its graph and the
    VJP follows; both are counted in ``prior.nfe``.
    """
    return prior.velocity_with_vjp(x, t)


# -- data terms --------------------------------------------------------------------------
class GuidanceTarget:
    """The effective target ŷ_t of the module docstring, for one model-space problem.

    Noiseless: ŷ = ỹ = A⁺y.  Noisy: ŷ_t = P(AᵀA + ρ_t I)⁻¹(Aᵀy + ρ_t P x̂1) with
    ρ_t = κ σ_y² / r_t².  κ (``rho_scale``) corrects the unit-variance data prior behind r_t²:
    real images have far less variance than 1 in the directions where A is weak, so κ = 1
    follows the noise there.  Measured on 64² ct60-1e5 (model space σ_y ≈ 0.18): the
    Tikhonov solutions (AᵀA + ρ)⁻¹Aᵀy score 12.7 (ρ = 0, i.e. A⁺y), 25.0 (ρ = 0.1) and 31.6 dB
    (ρ = 3 ≈ 90 σ_y²), so κ is tuned per task family on the validation split.

    With the problem's relative weights W̃ (pre-log Poisson data) the target is the weighted
    one of the module docstring, ŷ_t = P(AᵀW̃A + ρ_t I)⁻¹(AᵀW̃y + ρ_t P x̂1), by CG.
    """

    def __init__(self, problem: ModelProblem, rho_scale: float = 1.0):
        if not rho_scale > 0:
            raise MethodError(f"rho_scale must be > 0, got {rho_scale}")
        self.problem = problem
        self.weights = problem.weights
        self.noisy = problem.noise_std > 0
        if self.weights is not None and not self.noisy:
            raise MethodError("weighted (photon) data need a noise level > 0")
        self.rho_scale = float(rho_scale)
        self.y_tilde: torch.Tensor | None = None  # ỹ = A⁺y (noiseless)
        self.aty: torch.Tensor | None = None  # Aᵀy, or AᵀW̃y with weights (noisy)
        self._last: torch.Tensor | None = None  # the last weighted solve (CG warm start)
        self._route: bool | None = None  # whether the first weighted solve needed the
        # preconditioned continuation (the route later read-free solves take)
        self._mean_weight = 1.0 if self.weights is None else \
            float(self.weights.double().mean())
        with torch.no_grad():
            if self.weights is not None:
                self.aty = problem.op.T(self.weights * problem.y)
            elif self.noisy:
                self.aty = problem.op.T(problem.y)
            else:
                self.y_tilde = problem.op.pinv(problem.y)

    def rho(self, t: float) -> float:
        """ρ_t = κ σ_y² / r_t² (0 when noiseless)."""
        if not self.noisy:
            return 0.0
        return self.rho_scale * self.problem.noise_std**2 / max(r2(t), 1e-12)

    def at(self, p_x1: torch.Tensor, t: float) -> torch.Tensor:
        """ŷ_t for the current P x̂1."""
        if self.aty is None:  # noiseless
            return self._y_tilde()
        rho = self.rho(t)
        with torch.no_grad():
            if self.weights is None:
                return self.problem.op.projected_solve_normal(self.aty + rho * p_x1, rho)
            op = self.problem.op
            rhs = self.aty + rho * p_x1
            # on a GPU, after the start: the start's route, no host reads
            fixed = None if host_reads_are_free(rhs.device) else self._route
            self._last, route = solve_weighted_normal_route(
                op, self.weights, rhs, rho, x0=self._last, tol=WEIGHTED_CG_TOL,
                maxiter=WEIGHTED_CG_ITERS, route=fixed, mean_weight=self._mean_weight)
            self._route = route if self._route is None else self._route
            return op.projector(self._last)

    def start(self, t0: float) -> torch.Tensor:
        """The data estimate a run starts from: ỹ, or when noisy ŷ_{t0} with x̂1 = 0, i.e. the
        Tikhonov solution P(AᵀA + ρ_{t0})⁻¹Aᵀy (A⁺y would amplify the noise without bound;
        P(AᵀW̃A + ρ_{t0})⁻¹AᵀW̃y with weights)."""
        if self.aty is None:  # noiseless
            return self._y_tilde()
        return self.at(torch.zeros_like(self.aty), t0)

    def _y_tilde(self) -> torch.Tensor:
        """ỹ, set at construction for noiseless data."""
        if self.y_tilde is None:
            raise MethodError("ỹ = A⁺y is only formed for noiseless data")
        return self.y_tilde


# -- start and grid ----------------------------------------------------------------------
def start_state(y_tilde: torch.Tensor, tau: float, seed: int,
                temperature: float = 1.0) -> torch.Tensor:
    """x(τ) = τ·ỹ + (1−τ)·T·z with z = seeded_noise(ỹ.shape, seed) (ỹ: GuidanceTarget.start)
    and T the temperature of the start: 1 samples the posterior, 0 starts deterministically
    from the noise distribution's mean (a point estimate; see conjugate.py)."""
    z = seeded_noise(tuple(y_tilde.shape), seed, y_tilde)
    if temperature != 1.0:
        z = z * float(temperature)
    return interpolate(y_tilde, z, tau)


def uniform_grid(t0: float, steps: int) -> np.ndarray:
    """t_i = t0 + i (1 − t0)/K, i = 0 … K."""
    return np.linspace(float(t0), 1.0, int(steps) + 1)


def steps_for_budget(nfe: int, per_step: int) -> int:
    """Number of steps that fit an NFE budget; MethodError if not even one."""
    if int(nfe) != nfe or nfe < per_step:
        raise MethodError(f"nfe must be an integer >= {per_step} here, got {nfe}")
    return int(nfe) // per_step


def check_temperature(value: object) -> float:
    """The start's temperature T as a float ≥ 0 (MethodError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not np.isfinite(value) or value < 0:
        raise MethodError(f"temperature must be a finite number >= 0, got {value!r}")
    return float(value)


def check_unit_interval(name: str, value: float, low_open: bool = False) -> float:
    value = float(value)
    ok = (0.0 < value < 1.0) if low_open else (0.0 <= value < 1.0)
    if not ok:
        interval = "(0, 1)" if low_open else "[0, 1)"
        raise MethodError(f"{name} must lie in {interval}, got {value}")
    return value
