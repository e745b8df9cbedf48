"""Batched Krylov solvers: every batch item gets its own step sizes.

Vectors are tensors ``(B, ...)``; inner products are taken per leading index.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Op = Callable[[torch.Tensor], torch.Tensor]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item inner product as a (B,) tensor."""
    return (a * b).flatten(1).sum(1)


def _expand(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-item coefficient (B,) to broadcast against ``like`` (B, ...)."""
    return coef.reshape(-1, *([1] * (like.ndim - 1)))


def cg(
    apply: Op,
    rhs: torch.Tensor,
    x0: torch.Tensor | None = None,
    tol: float = 1e-6,
    maxiter: int = 200,
) -> torch.Tensor:
    """Conjugate gradients for M x = rhs with M symmetric positive (semi-)definite.

    Standard recurrences  r = b − M x,  p ← r + (‖r_new‖²/‖r‖²) p,  x ← x + α p,
    α = ‖r‖² / ⟨p, M p⟩.  Stops when every item has ‖r‖ ≤ tol·‖b‖.
    """
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - apply(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rr = _dot(r, r)
    bnorm2 = _dot(rhs, rhs).clamp_min(torch.finfo(rhs.dtype).tiny)
    for _ in range(maxiter):
        if bool((rr <= tol**2 * bnorm2).all()):
            break
        mp = apply(p)
        pmp = _dot(p, mp)
        alpha = torch.where(pmp > 0, rr / pmp.clamp_min(torch.finfo(rhs.dtype).tiny), 0.0)
        x = x + _expand(alpha, p) * p
        r = r - _expand(alpha, mp) * mp
        rr_new = _dot(r, r)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(torch.finfo(rhs.dtype).tiny), 0.0)
        p = r + _expand(beta, p) * p
        rr = rr_new
    return x


def cgls(
    forward: Op,
    adjoint: Op,
    y: torch.Tensor,
    in_shape: tuple[int, ...],
    x0: torch.Tensor | None = None,
    tol: float = 1e-6,
    maxiter: int = 200,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """CGLS for min ‖A x − y‖² (from x0 = 0 it converges to the minimum-norm solution A⁺y).

    s = Aᵀ(y − A x), p = s, q = A p, α = ‖s‖²/‖q‖², x += α p, r −= α q,
    s = Aᵀ r, β = ‖s_new‖²/‖s‖², p = s + β p.  Stops when ‖Aᵀr‖ ≤ tol·‖Aᵀy‖ for all items.
    """
    x = torch.zeros(*y.shape[:2], *in_shape, dtype=y.dtype, device=y.device) if x0 is None \
        else x0.clone()
    r = y - forward(x) if x0 is not None else y.clone()
    s = adjoint(r)
    p = s.clone()
    ss = _dot(s, s)
    s0 = ss.clamp_min(torch.finfo(y.dtype).tiny)
    tiny = torch.finfo(y.dtype).tiny
    for it in range(maxiter):
        if bool((ss <= tol**2 * s0).all()):
            break
        q = forward(p)
        qq = _dot(q, q)
        alpha = torch.where(qq > 0, ss / qq.clamp_min(tiny), 0.0)
        x = x + _expand(alpha, p) * p
        r = r - _expand(alpha, q) * q
        s = adjoint(r)
        ss_new = _dot(s, s)
        beta = torch.where(ss > 0, ss_new / ss.clamp_min(tiny), 0.0)
        p = s + _expand(beta, p) * p
        ss = ss_new
        if callback is not None:
            callback(it, x)
    return x

