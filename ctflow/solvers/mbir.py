"""Model-based iterative reconstruction (MBIR): penalised weighted least squares with a
q-GGMRF edge-preserving prior and non-negativity,

    x̂ = argmin_{x ≥ 0}  Φ(x) = ½ (A x − y)ᵀ W (A x − y) + β Σ_{j~k} w_jk ρ(x_j − x_k).

Data weights W = diag(w_i), the inverse variance of each post-log ray
(``weights.statistical_weights``, shared with the other solvers' ``photons`` option):

* ``photons`` I0 given: counts c_i = I0·e^{−y_i} and Var(y_i) ≈ (c_i + σ_e²)/c_i², so
  w_i = c_i² / (c_i + σ_e²) = 1 / (1/c_i + σ_e²/c_i²)  (σ_e = ``electronic_noise`` in counts;
  w_i = c_i without electronic noise, the classical pre-log Poisson weights);
* else ``noise_std`` σ given: W = I/σ²;  neither: W = I.

Prior: 8 neighbours, w_jk = 1 (horizontal, vertical) and 1/√2 (diagonals), each pair once,
with the q-GGMRF potential of Thibault et al. (2007) for p = 2:

    ρ(Δ) = ½ Δ² / (1 + |Δ/δ|^{2−q}),      ω(Δ) = ρ'(Δ)/Δ = (1 + (q/2)·u^{2−q}) / (1 + u^{2−q})²,
    u = |Δ|/δ.

It is quadratic (ρ ≈ ½Δ²) for |Δ| ≪ δ, so noise in flat regions is smoothed like a
Gaussian MRF, and grows like |Δ|^q for |Δ| ≫ δ, so edges are kept; it is convex for
1 ≤ q ≤ 2 and C¹, and 0 < ω ≤ 1 = ρ''(0), which gives the curvature bound used for the
preconditioner.  Chosen over Huber because its tail exponent q ≈ 1.2 keeps edges without
Huber's hard kink between the regimes, and because it is the prior svmbir's MBIR uses.

Scales (so the defaults work across sizes, units and noise levels):

* δ = ``delta`` · μ̄ with μ̄ = Σ y / Σ A𝟙 (the image's mean value, from the data);
* β = ``beta`` · d̄ · ν/ν_ref with d̄ the mean over the object of the data term's curvature
  d_j = [Aᵀ W A 𝟙]_j and ν = σ̄/RMS(y) the data's relative noise level: σ̄ = √mean(1/w_i)
  the rays' mean noise std (``NOISELESS_REL_STD``·RMS(y) when W = I without ``noise_std``);
  ν_ref = ``NOISE_REF``.  β/d̄ is the dimensionless smoothing strength; it grows like the
  noise std, as measured (the best β/d̄ on a 64² chest phantom, 60 views, was 0.001 /
  0.003 / 0.01 at 1e6 / 1e5 / 1e4 photons, a factor √10 per decade of dose), and the same
  ν also tracks the size: the best β/d̄ at 1e5 photons was 0.004 at 64² (ν = 0.0118) and
  0.002 at 256² (ν = 0.0049).

Solvers (``solver``), both starting from max(FBP, 0) for CT operators (else 0):

* ``os``: ordered subsets of views with separable quadratic surrogates and momentum
  (``mbir_os``), the default for noisy data from plain CT scans with ≥ 40 views; 18 epochs
  by default, each one A and one Aᵀ in all; ends within ≈ 1–3 % of Φ's minimum, within
  ≈ 0.2 dB of L-BFGS-B's image;
* ``lbfgs``: L-BFGS-B (scipy) on the smooth objective with the bound x ≥ 0, in the
  diagonally preconditioned variable u = D^{1/2} x with the separable-quadratic-surrogate
  curvature D_j = d_j + 2β Σ_k w_jk (the data and prior Hessians' row-sum bound); one A
  and one Aᵀ per evaluation; its line search makes Φ decrease at every accepted iterate
  (``info["objective"]``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from tqdm.auto import tqdm

from ..errors import MethodError
from ..operators import LinearOperator
from ..operators import fbp as _fbp
from . import mbir_os
from .common import SolverOutput
from .mbir_terms import (  # noqa: F401  (the objective's terms; re-exported)
    DEFAULT_Q,
    DIAGONAL,
    NEIGHBOUR_WEIGHT_SUM,
    NEIGHBOURS,
    gradient,
    objective,
    penalty,
    penalty_gradient,
    potential,
    potential_weight,
)
from .weights import statistical_weights  # noqa: F401  (W's diagonal; re-exported)

DEFAULT_BETA = 0.004  # β/d̄ at noise level ν_ref (tuned on 64² and 256² chest phantoms)
DEFAULT_DELTA = 0.03  # δ/μ̄: the q-GGMRF transition, as a fraction of the mean image value
DEFAULT_ITERS = {"lbfgs": 100, "os": 18}  # iterations (L-BFGS-B) or epochs (ordered subsets)
SOLVERS = ("auto", "os", "lbfgs")
NOISE_REF = 0.0118  # ν of the tuning problem: 64² chest, 60 views, 1e5 photons
NOISELESS_REL_STD = 0.005  # σ̄ assumed when W = I and noise_std is None: 0.5 % of RMS(y)
LBFGS_MEMORY = 10


def mean_value(y: torch.Tensor, op: LinearOperator) -> float:
    """μ̄ = Σ y / Σ A𝟙: the image's mean value as seen by the data (≥ tiny)."""
    ones = torch.ones(1, 1, *op.in_shape, dtype=y.dtype, device=y.device)
    with torch.no_grad():
        reach = float(op(ones).double().sum())
    value = float(y.detach().double().sum()) / (reach * y.shape[0] * y.shape[1])
    return max(value, 1e-12) if math.isfinite(value) else 1e-12


def noise_level(y: torch.Tensor, weights: torch.Tensor, unweighted: bool) -> float:
    """ν = σ̄/RMS(y): the rays' mean noise std σ̄ = √mean(1/w) relative to the data's RMS
    (NOISELESS_REL_STD when W = I was not given a noise level)."""
    if unweighted:
        return NOISELESS_REL_STD
    rms = float(y.detach().double().pow(2).mean().sqrt())
    sigma = math.sqrt(float((1.0 / weights.double().clamp_min(1e-300)).mean()))
    return max(sigma / max(rms, 1e-300), 1e-12)


def data_curvature(op: LinearOperator, weights: torch.Tensor) -> torch.Tensor:
    """d = Aᵀ W A 𝟙, the SQS curvature of the data term per pixel (per item)."""
    ones = torch.ones(1, 1, *op.in_shape, dtype=weights.dtype, device=weights.device)
    with torch.no_grad():
        return op.T(weights * op(ones)).clamp_min(0.0)


def _initial_image(y: torch.Tensor, op: LinearOperator, init: str) -> torch.Tensor:
    if init == "zeros" or getattr(op, "geometry", None) is None:
        return torch.zeros(*y.shape[:2], *op.in_shape, dtype=y.dtype, device=y.device)
    with torch.no_grad():
        return _fbp(y.detach(), op).clamp_min(0.0)


def mbir(y: torch.Tensor, op: LinearOperator, *, prior: Any = None,
         noise_std: float | None = None, seed: int = 0, progress: bool = False,
         photons: float | None = None, electronic_noise: float = 0.0,
         beta: float = DEFAULT_BETA, delta: float = DEFAULT_DELTA, q: float = DEFAULT_Q,
         iters: int | None = None, nonneg: bool = True, init: str = "fbp",
         tol: float = 1e-9, solver: str = "auto", subsets: int | None = None
         ) -> SolverOutput:
    """MBIR (module docstring): PWLS with the q-GGMRF prior.

    ``photons`` I0 of the scan (Poisson weights; None → W = I/σ² with ``noise_std``, or I),
    ``electronic_noise`` σ_e in counts; ``beta`` β/d̄ and ``delta`` δ/μ̄ (relative, see the
    module docstring); ``q`` ∈ [1, 2] the prior's tail exponent; ``init`` "fbp" (CT
    operators) or "zeros".  ``solver``: "os" ordered subsets with momentum (``mbir_os``;
    plain parallel- or fan-beam operators, ``subsets`` M or None for its default), "lbfgs"
    preconditioned L-BFGS-B (any operator; stops at ``tol``), "auto" os where it applies,
    the data are noisy (``photons`` or ``noise_std``) and the scan has ≥ 40 views
    (``mbir_os.preferred``), else lbfgs.
    ``iters`` L-BFGS-B iterations or OS epochs (None: DEFAULT_ITERS of the solver).  No
    randomness (``seed`` unused).  info: ``objective`` (Φ per accepted iterate or epoch,
    first item), ``beta``/``delta`` (absolute), ``iters``, ``evaluations`` (Φ evaluations,
    L-BFGS-B), ``solver``, ``subsets`` (1 for L-BFGS-B), ``restarts`` (momentum restarts).
    """
    if solver not in SOLVERS:
        raise MethodError(f"mbir: solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if solver == "os" and not mbir_os.applies(op):
        raise MethodError("mbir: solver 'os' needs a plain parallel- or fan-beam operator; "
                          "use solver 'lbfgs'")
    noisy = photons is not None or bool(noise_std)
    chosen = solver if solver != "auto" else ("os" if mbir_os.preferred(op, noisy) else "lbfgs")
    iters = DEFAULT_ITERS[chosen] if iters is None else iters
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise MethodError(f"mbir: iters must be a positive integer, got {iters!r}")
    for name, value in (("beta", beta), ("delta", delta)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise MethodError(f"mbir: {name} must be a positive number, got {value!r}")
    if not (isinstance(q, (int, float)) and 1.0 <= q <= 2.0):
        raise MethodError(f"mbir: q must be in [1, 2], got {q!r}")
    if init not in ("fbp", "zeros"):
        raise MethodError(f"mbir: init must be 'fbp' or 'zeros', got {init!r}")
    view_subsets = None
    if chosen == "os":
        views = int(op.out_shape[0])
        count = mbir_os.default_subsets(views) if subsets is None else subsets
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= views:
            raise MethodError(f"mbir: subsets must be an integer in [1, {views}], "
                              f"got {subsets!r}")
        view_subsets = mbir_os.view_subsets(op, count, y.device)
    y = y.detach()
    weights = statistical_weights(y, photons, noise_std, electronic_noise)
    delta_abs = float(delta) * mean_value(y, op)
    nu = noise_level(y, weights, unweighted=photons is None and not noise_std)
    x0 = _initial_image(y, op, init)
    images, histories, evaluations, betas, restarts = [], [], [], [], []
    items = [(b, c) for b in range(y.shape[0]) for c in range(y.shape[1])]
    for b, c in tqdm(items, desc="mbir", disable=not progress or len(items) == 1, leave=False):
        yi, wi = y[b:b + 1, c:c + 1], weights[b:b + 1, c:c + 1]
        d = data_curvature(op, wi)
        inside = d > 0.1 * float(d.max())
        d_mean = float(d[inside].double().mean()) if bool(inside.any()) else 1.0
        beta_abs = float(beta) * d_mean * nu / NOISE_REF
        if view_subsets is not None:
            image, history, restart_count = mbir_os.ordered_subsets(
                yi, op, wi, x0[b:b + 1, c:c + 1], d, beta_abs, delta_abs, float(q), iters,
                view_subsets, nonneg, progress)
            count = iters + 1
        else:
            image, history, count = _lbfgs(yi, op, wi, x0[b:b + 1, c:c + 1], d, beta_abs,
                                           delta_abs, float(q), iters, nonneg, tol, progress)
            restart_count = 0
        images.append(image)
        histories.append(history)
        evaluations.append(count)
        betas.append(beta_abs)
        restarts.append(restart_count)
    out = torch.cat(images).reshape(*y.shape[:2], *op.in_shape)
    return SolverOutput(image=out, info={
        "objective": histories[0], "beta": betas, "delta": delta_abs, "noise_level": nu,
        "iters": iters, "evaluations": evaluations, "solver": chosen,
        "subsets": 1 if view_subsets is None else len(view_subsets), "restarts": restarts})


def _lbfgs(y: torch.Tensor, op: LinearOperator, weights: torch.Tensor, x0: torch.Tensor,
           d: torch.Tensor, beta: float, delta: float, q: float, iters: int, nonneg: bool,
           tol: float, progress: bool) -> tuple[torch.Tensor, list[float], int]:
    """L-BFGS-B on u = D^{1/2} x for one item (1, 1, H, W); returns x, Φ history, #evals."""
    shape = x0.shape
    curvature = (d + 2.0 * beta * NEIGHBOUR_WEIGHT_SUM).double().flatten().cpu().numpy()
    scale = np.sqrt(curvature)
    last: dict[str, float] = {}

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.from_numpy(u / scale).to(y.device, y.dtype).reshape(shape)
        with torch.no_grad():
            r = op(x) - y
            wr = weights * r
            value = 0.5 * float((wr.double() * r.double()).sum()) \
                + beta * float(penalty(x.double(), delta, q).sum())
            grad = op.T(wr) + beta * penalty_gradient(x, delta, q)
        last["f"] = value
        return value, grad.double().flatten().cpu().numpy() / scale

    history: list[float] = []
    bar = tqdm(total=iters, desc="mbir", disable=not progress, leave=False)

    def callback(u: np.ndarray) -> None:
        history.append(last["f"])
        bar.update()

    u0 = x0.double().flatten().cpu().numpy() * scale
    history.append(fun(u0)[0])
    bounds = [(0.0, None)] * u0.size if nonneg else None
    result = minimize(fun, u0, jac=True, method="L-BFGS-B", bounds=bounds, callback=callback,
                      options={"maxiter": iters, "maxcor": LBFGS_MEMORY, "ftol": tol,
                               "gtol": 0.0, "maxls": 20})
    bar.close()
    x = torch.from_numpy(result.x / scale).to(y.device, y.dtype).reshape(shape)
    return x, history, int(result.nfev)
