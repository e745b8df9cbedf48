"""The CondOT flow path and its variance-preserving (VP) view, as pure functions.

Flow time (DESIGN §2): t = 0 is noise, t = 1 is data, and the path is

    x_t = t·x1 + (1−t)·z,   z ~ N(0, I),

with velocity v(x, t) ≈ E[x1 − z | x_t].  Given v at (x, t):

    x̂1 = x + (1−t)·v          (clean estimate)
    ε̂  = x − t·v              (noise estimate),   so x = t·x̂1 + (1−t)·ε̂.

Under a unit data prior the variance of x1 given x_t is r_t² = (1−t)²/(t² + (1−t)²).
The VP view rescales the state by n_t = √(t² + (1−t)²): x_vp = x/n_t = α·x1 + σ·z with
α = t/n_t, σ = (1−t)/n_t (α² + σ² = 1), so α/σ = t/(1−t).

Every function takes t as a Python float or a tensor broadcastable to x; the arithmetic is
written in one fixed order so callers get bit-identical floats wherever they used to inline
it.  No ctflow imports.
"""

from __future__ import annotations

import math

import torch


def interpolate(x1: torch.Tensor, z: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """x_t = t·x1 + (1−t)·z, the CondOT path between noise z and data x1."""
    return t * x1 + (1 - t) * z


def x1_hat(x: torch.Tensor, t: float | torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x̂1 = x + (1−t)·v, the clean estimate from the velocity v at (x, t)."""
    return x + (1 - t) * v


def eps_hat(x: torch.Tensor, t: float | torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ε̂ = x − t·v, the noise estimate from the velocity v at (x, t)."""
    return x - t * v


def r2(t: float) -> float:
    """r_t² = (1−t)² / (t² + (1−t)²), the variance of x1 given x_t under a unit data prior."""
    return (1 - t) ** 2 / (t * t + (1 - t) ** 2)


def vp_norm(t: float) -> float:
    """n_t = √(t² + (1−t)²), the norm that maps the flow state to the VP state (x = n_t·x_vp)."""
    return math.sqrt(t * t + (1 - t) ** 2)


def vp_time(alpha: float) -> float:
    """Flow time t of the VP state with signal level α (σ = √(1−α²)): t/(1−t) = α/σ."""
    sigma = math.sqrt(max(1.0 - alpha * alpha, 0.0))
    return alpha / (alpha + sigma)


def from_vp(x_vp: torch.Tensor, t: float) -> torch.Tensor:
    """The flow state x = n_t·x_vp of the VP state x_vp at flow time t."""
    return x_vp * vp_norm(t)


def to_vp(x: torch.Tensor, t: float) -> torch.Tensor:
    """The VP state x_vp = x/n_t of the flow state x at flow time t."""
    return x / vp_norm(t)


def snr(t: float) -> float:
    """α/σ = t/(1−t), the VP signal-to-noise ratio at flow time t < 1."""
    return t / (1 - t)
