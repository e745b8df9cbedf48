"""Scalar coefficients of the conditional conjugate integrators, in float64, once per grid.

Both integrators solve a guided ODE whose stiff part is linear and built from I and the
projector P (P² = P):

    du/dt = a(t)·u + b(t)·P u + Σ_j φ_j(t)·F_j,

with vectors F_j frozen over a step [t_i, t_{i+1}].  With Ia' = a, Ib' = b the conjugate map
anchored at t_i (so that ū(t_i) = u(t_i); the anchor is a constant factor commuting with P,
which leaves the scheme unchanged and keeps the exponentials in range) is

    A(s) = e^{λ(s − t_i)} · e^{−(Ia(s) − Ia(t_i))} · [(I − P) + e^{−(Ib(s) − Ib(t_i))} P]
         =: e0(s)·(I − P) + e1(s)·P,

and dū/ds = λ ū + A(s) Σ φ_j F_j.  One step (λū by explicit Euler, the rest exactly):

    ū_{i+1} = (1 + λΔ) u_i + Σ_j [K0_j (I − P) F_j + K1_j P F_j],
    K0_j = ∫_{t_i}^{t_{i+1}} φ_j(s) e0(s) ds,   K1_j = ∫_{t_i}^{t_{i+1}} φ_j(s) e1(s) ds,
    u_{i+1} = A(t_{i+1})⁻¹ ū_{i+1} = (I − P) ū_{i+1} / e0(t_{i+1}) + P ū_{i+1} / e1(t_{i+1}).

For the second-order (multistep) variant the F_j vary linearly over the step,
F_j(s) = F_j(t_i) + (s − t_i) D_j, which adds M0_j (I − P) D_j + M1_j P D_j with the first
moments M0_j = ∫ φ_j(s)(s − t_i) e0(s) ds, M1_j = ∫ φ_j(s)(s − t_i) e1(s) ds.

Two parameterisations (``kind``):

* ``"flow"`` (C-ΠGFM, u = x, v frozen): a = 0, b = −c(t), c(t) = w·t(1−t), so
  −Ib = w·κ(t), κ(t) = t²/2 − t³/3.  The forcing functions give DESIGN's named integrals
  E0 = ∫e^{λs}, E1 = ∫e^{λs+wκ}, Ky = ∫c e^{λs+wκ}, Kv = ∫c(1−s) e^{λs+wκ},
  KJ0 = ∫c(1−s) e^{λs} (all anchored at t_i, see above).
* ``"vp"`` (C-ΠGDM, u = x/n(t), n = √(t² + (1−t)²), ε̂ frozen): the VP probability-flow
  ODE in flow time with α = t/n, σ = (1−t)/n: a = α'/α, Ia = log α;
  b = −w(1−t)/n², Ib = −(w/2)(arctan(2t−1) − log n).

Integrals use Gauss–Legendre quadrature on panels graded towards each step's end, where a
stiff step's integrands have a boundary layer (``_graded_nodes``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

GAUSS_NODES = 48
PANELS, GRADING = 20, 0.3  # graded quadrature panels per step (see _graded_nodes)
Fn = Callable[[np.ndarray], np.ndarray]


def kappa(t: np.ndarray | float) -> np.ndarray:
    """κ(t) = ∫_0^t s(1−s) ds = t²/2 − t³/3."""
    t = np.asarray(t, dtype=np.float64)
    return t * t / 2 - t**3 / 3


def vp_norm(t: np.ndarray | float) -> np.ndarray:
    """n(t) = √(t² + (1−t)²): x_vp = x_flow / n(t)."""
    t = np.asarray(t, dtype=np.float64)
    return np.sqrt(t * t + (1 - t) ** 2)


@dataclass(frozen=True)
class Schedule:
    """Linear part (Ia, Ib antiderivatives of a, b) and forcing functions φ of one kind."""

    ia: Fn
    ib: Fn
    forcing: dict[str, Fn]


def flow_schedule(w: float) -> Schedule:
    """C-ΠGFM: dx/dt = −c P x + v + c ỹ − c(1−t) P v + c(1−t) g,  c = w t(1−t)."""
    c = lambda s: w * s * (1 - s)  # noqa: E731
    return Schedule(
        ia=lambda s: np.zeros_like(s),
        ib=lambda s: -w * kappa(s),
        forcing={
            "one": lambda s: np.ones_like(s),  # v
            "c": c,  # ỹ
            "c1": lambda s: c(s) * (1 - s),  # P v (with a minus sign) and g
        },
    )


def vp_schedule(w: float) -> Schedule:
    """C-ΠGDM in u = x/n:  du/dt = (α'/α) u − (w(1−t)/n²) P u − ε̂/(t n) + c_d ỹ
    + (w(1−t)²/n³) P ε̂ + c_d (1−t) g,  c_d = w t(1−t)/n³."""
    n = vp_norm

    def c_d(s):
        return w * s * (1 - s) / n(s) ** 3

    return Schedule(
        ia=lambda s: np.log(s) - np.log(n(s)),
        ib=lambda s: -0.5 * w * (np.arctan(2 * s - 1) - np.log(n(s))),
        forcing={
            "eps": lambda s: -1.0 / (s * n(s)),  # ε̂
            "eps_p": lambda s: w * (1 - s) ** 2 / n(s) ** 3,  # extra P ε̂
            "c": c_d,  # ỹ
            "c1": lambda s: c_d(s) * (1 - s),  # g
        },
    )


@dataclass(frozen=True)
class StepCoefficients:
    """Per-step float64 coefficients for a grid t_0 < … < t_K (arrays of length K)."""

    grid: np.ndarray
    lam: float
    w: float
    kind: str
    s0: np.ndarray  # e0(t_{i+1}): the (I−P) scale of the anchored map at the step's end
    s1: np.ndarray  # e1(t_{i+1}): the P scale (inf for a stiff step, w Δκ > 709)
    # The integrals divided by the step's end scale, each formed as one exponential with
    # exponent ≤ 0 so that a stiff step (w·Δκ beyond float32's e^88) neither overflows nor
    # loses precision: u_{i+1} = lin·u_i + Σ r F is what the solvers apply.
    r0: dict[str, np.ndarray]  # ∫ φ e0 / e0(t_{i+1}) per forcing name, "lin" = (1+λΔ)/e0(t_{i+1})
    r1: dict[str, np.ndarray]  # ∫ φ e1 / e1(t_{i+1}) per forcing name, "lin" = (1+λΔ)/e1(t_{i+1})
    # First moments, for forcing vectors that vary linearly over the step (order 2):
    # ∫ φ(s)(s − t_i) e(s) ds / e(t_{i+1}) per forcing name.
    m0: dict[str, np.ndarray]
    m1: dict[str, np.ndarray]

    @property
    def k0(self) -> dict[str, np.ndarray]:
        """∫ φ e0 per forcing name (start-anchored) = r0 · s0."""
        return _times(self.r0, self.s0)

    @property
    def k1(self) -> dict[str, np.ndarray]:
        """∫ φ e1 per forcing name (start-anchored) = r1 · s1 (inf for a stiff step)."""
        return _times(self.r1, self.s1)

    @property
    def steps(self) -> int:
        return len(self.grid) - 1

    # DESIGN's names for the flow kind
    @property
    def E0(self) -> np.ndarray:  # noqa: N802
        return self.k0["one"]

    @property
    def E1(self) -> np.ndarray:  # noqa: N802
        return self.k1["one"]

    @property
    def Ky(self) -> np.ndarray:  # noqa: N802
        return self.k1["c"]

    @property
    def Kv(self) -> np.ndarray:  # noqa: N802
        return self.k1["c1"]

    @property
    def KJ0(self) -> np.ndarray:  # noqa: N802
        return self.k0["c1"]


def _times(ratios: dict[str, np.ndarray], scale: np.ndarray) -> dict[str, np.ndarray]:
    with np.errstate(over="ignore", invalid="ignore"):
        return {name: r * scale for name, r in ratios.items() if name != "lin"}


def _schedule(kind: str, w: float) -> Schedule:
    if kind == "flow":
        return flow_schedule(w)
    if kind == "vp":
        return vp_schedule(w)
    raise ValueError(f"unknown coefficient kind {kind!r}; use 'flow' or 'vp'")


def step_coefficients(grid: np.ndarray | list[float], w: float, lam: float,
                      kind: str = "flow") -> StepCoefficients:
    """Coefficients of every step of ``grid`` (cached per (grid, w, λ, kind))."""
    key = tuple(float(t) for t in np.asarray(grid, dtype=np.float64).ravel())
    return _cached(key, float(w), float(lam), kind)


def _graded_nodes(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on each [lo, hi], on panels that shrink
    geometrically (ratio GRADING) towards hi: with a stiff linear part (large w) the
    integrands are e^{−w(κ(hi) − κ(s))}·φ(s), a boundary layer of width ~1/(w c(hi)) at hi
    that one 48-node rule cannot resolve past w ≈ 10⁴; the panels resolve it to w ≈ 10¹⁰."""
    nodes, weights = np.polynomial.legendre.leggauss(GAUSS_NODES)
    cuts = np.concatenate([[1.0], GRADING ** np.arange(1, PANELS), [0.0]])  # distance/Δ
    a = hi - (hi - lo) * cuts[None, :-1]
    b = hi - (hi - lo) * cuts[None, 1:]  # (K, PANELS) panels [a, b]
    half = ((b - a) / 2)[..., None]
    s = (a[..., None] + half * (nodes + 1)).reshape(len(lo), -1)
    wq = (half * weights).reshape(len(lo), -1)
    return s, wq


@lru_cache(maxsize=128)
def _cached(grid: tuple[float, ...], w: float, lam: float, kind: str) -> StepCoefficients:
    t = np.asarray(grid, dtype=np.float64)
    if t.ndim != 1 or len(t) < 2 or not np.all(np.diff(t) > 0):
        raise ValueError("the time grid must be strictly increasing with at least 2 points")
    sch = _schedule(kind, w)
    lo, hi = t[:-1, None], t[1:, None]
    s, wq = _graded_nodes(lo, hi)  # (K, nodes)

    def log_e0(x, a):
        return lam * (x - a) - (sch.ia(x) - sch.ia(a))

    def log_e1(x, a):
        return log_e0(x, a) - (sch.ib(x) - sch.ib(a))

    with np.errstate(over="ignore"):  # inf for a stiff step (w Δκ > 709)
        s0 = np.exp(log_e0(t[1:], t[:-1]))
        s1 = np.exp(log_e1(t[1:], t[:-1]))
    # end-anchored: log e(s, t_i) − log e(t_{i+1}, t_i) = log e(s, t_{i+1}) (≤ 0 where the
    # linear part contracts), so the ratios never form e^{+big}
    lin = 1 + lam * np.diff(t)
    r0: dict[str, np.ndarray] = {}
    r1: dict[str, np.ndarray] = {}
    m0: dict[str, np.ndarray] = {}
    m1: dict[str, np.ndarray] = {}
    for r, m, log_e in ((r0, m0, log_e0), (r1, m1, log_e1)):
        e_end = np.exp(log_e(s, hi))
        for name, f in sch.forcing.items():
            weighted = wq * f(s) * e_end
            r[name] = np.sum(weighted, axis=1)
            m[name] = np.sum(weighted * (s - lo), axis=1)
        r["lin"] = lin * np.exp(-log_e(t[1:], t[:-1]))
    return StepCoefficients(grid=t, lam=lam, w=w, kind=kind, s0=s0, s1=s1, r0=r0, r1=r1,
                            m0=m0, m1=m1)
