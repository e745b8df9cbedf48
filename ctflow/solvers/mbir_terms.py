"""The terms of MBIR's objective (``mbir``): the q-GGMRF potential over 8 neighbours and
Φ(x) = ½‖Ax − y‖²_W + β R(x) with its gradient, shared by both of MBIR's solvers.

    ρ(Δ) = ½ Δ² / (1 + |Δ/δ|^{2−q}),      ω(Δ) = ρ'(Δ)/Δ = (1 + (q/2)·u^{2−q}) / (1 + u^{2−q})²,
    u = |Δ|/δ;   R(x) = Σ_{j~k} w_jk ρ(x_j − x_k),  w_jk = 1 (horizontal, vertical), 1/√2
    (diagonals), each pair once.
"""

from __future__ import annotations

import math

import torch

from ..operators import LinearOperator

DEFAULT_Q = 1.2
DIAGONAL = 1.0 / math.sqrt(2.0)
# (dy, dx, weight) of the four neighbour pairs each pixel starts: 8 neighbours, each pair once
NEIGHBOURS = ((0, 1, 1.0), (1, 0, 1.0), (1, 1, DIAGONAL), (1, -1, DIAGONAL))
NEIGHBOUR_WEIGHT_SUM = 2.0 * sum(w for _, _, w in NEIGHBOURS)  # Σ_k w_jk of an inner pixel


def potential(d: torch.Tensor, delta: float, q: float = DEFAULT_Q) -> torch.Tensor:
    """q-GGMRF ρ(Δ) = ½Δ²/(1 + |Δ/δ|^{2−q}) elementwise."""
    return 0.5 * d * d / (1.0 + (d.abs() / delta).pow(2.0 - q))


def potential_weight(d: torch.Tensor, delta: float, q: float = DEFAULT_Q) -> torch.Tensor:
    """ω(Δ) = ρ'(Δ)/Δ = (1 + (q/2)·u^{2−q}) / (1 + u^{2−q})², u = |Δ|/δ; 0 < ω ≤ 1."""
    ur = (d.abs() * (1.0 / delta)).pow_(2.0 - q)
    den = 1.0 + ur
    return ur.mul_(0.5 * q).add_(1.0).div_(den.mul_(den))


def _pairs(x: torch.Tensor, dy: int, dx: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Index slices (j, k) of all pixel pairs k = j + (dy, dx) inside an (H, W) image."""
    h, w = x.shape[-2:]
    rows_j, rows_k = slice(0, h - dy), slice(dy, h)
    if dx >= 0:
        cols_j, cols_k = slice(0, w - dx), slice(dx, w)
    else:
        cols_j, cols_k = slice(-dx, w), slice(0, w + dx)
    return (rows_j, cols_j), (rows_k, cols_k)


def penalty(x: torch.Tensor, delta: float, q: float = DEFAULT_Q) -> torch.Tensor:
    """R(x) = Σ_{j~k} w_jk ρ(x_j − x_k) per item, shape (B, C)."""
    total = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
    for dy, dx, weight in NEIGHBOURS:
        (rj, cj), (rk, ck) = _pairs(x, dy, dx)
        diff = x[..., rj, cj] - x[..., rk, ck]
        total = total + weight * potential(diff, delta, q).flatten(2).sum(-1)
    return total


def penalty_gradient(x: torch.Tensor, delta: float, q: float = DEFAULT_Q) -> torch.Tensor:
    """∇R(x): Σ_k w_jk ω(x_j − x_k)(x_j − x_k) at every pixel j."""
    grad = torch.zeros_like(x)
    for dy, dx, weight in NEIGHBOURS:
        (rj, cj), (rk, ck) = _pairs(x, dy, dx)
        diff = x[..., rj, cj] - x[..., rk, ck]
        flux = weight * potential_weight(diff, delta, q) * diff
        grad[..., rj, cj] += flux
        grad[..., rk, ck] -= flux
    return grad


def objective(x: torch.Tensor, y: torch.Tensor, op: LinearOperator, weights: torch.Tensor,
              beta: float, delta: float, q: float = DEFAULT_Q) -> torch.Tensor:
    """Φ(x) = ½‖A x − y‖²_W + β R(x) per item, shape (B, C)."""
    with torch.no_grad():
        r = op(x) - y
    data = 0.5 * (weights * r * r).flatten(2).sum(-1)
    return data + beta * penalty(x, delta, q)


def gradient(x: torch.Tensor, y: torch.Tensor, op: LinearOperator, weights: torch.Tensor,
             beta: float, delta: float, q: float = DEFAULT_Q) -> torch.Tensor:
    """∇Φ(x) = Aᵀ W (A x − y) + β ∇R(x)."""
    with torch.no_grad():
        return op.T(weights * (op(x) - y)) + beta * penalty_gradient(x, delta, q)


