"""The pieces of MS-Flow (:mod:`ctflow.solvers.msflow`, whose docstring states the update
equations): the shooting problem (:class:`Stitching`: segment maps Φ_k, the objective F and
its per-block parts f_k), step (i) as one red–black half sweep (:func:`update_colour`:
Jacobian-free direction, exact local gradient with Armijo backtracking), step (ii), the
proximal data step (:func:`prox_data`, :func:`prox_step`), and the initial shooting states.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable

import torch

from ..integrators import euler, euler_vjp, invert_euler, seeded_noise
from ..operators import LinearOperator
from ..priors.base import Prior
from .latent_reg import radial_reg, radial_reg_grad
from .weights import solve_weighted_normal

ARMIJO_C = 1e-4


def sq(a: torch.Tensor) -> torch.Tensor:
    """Per-item squared norm in float64, for a (B, ...) tensor."""
    return a.double().flatten(1).pow(2).sum(1)


def data_misfit(op: LinearOperator, x: torch.Tensor, y: torch.Tensor, sigma: float,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """‖Ax − y‖²_W̃/(2σ²) per image (W̃ = I when ``weights`` is None), float64."""
    with torch.no_grad():
        r = op(x) - y
        r2 = r.double().pow(2) if weights is None else weights.double() * r.double().pow(2)
        return r2.flatten(1).sum(1) / (2 * sigma**2)


class Stitching:
    """The shooting states, the segment maps and the objective of one MS-Flow problem
    (``weights``: the relative per-ray weights W̃ of the data term, None for white noise)."""

    def __init__(self, prior: Prior, op: LinearOperator, y: torch.Tensor, sigma: float,
                 mu: float, lam: float, shooting: int, segment_steps: int,
                 weights: torch.Tensor | None = None):
        self.prior, self.op, self.y, self.weights = prior, op, y, weights
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
        out, _ = euler(self.prior, z.reshape(n * b, *z.shape[2:]), t0, t1, self.M)
        return out.reshape(z.shape)

    def flow_vjp(self, z: torch.Tensor, ks: list[int], w: torch.Tensor) -> torch.Tensor:
        """J_{Φ_k}(z[i])ᵀ w[i], through one segment each (states stored, one step's graph)."""
        n, b = z.shape[:2]
        t0, t1 = self._times(ks, b, z)
        flat = z.reshape(n * b, *z.shape[2:])
        _, states = euler(self.prior, flat, t0, t1, self.M, keep_states=True)
        g = euler_vjp(self.prior, states, t0, t1, w.reshape(flat.shape))
        return g.reshape(z.shape)

    # -- objective -----------------------------------------------------------------------
    def data_term(self, x: torch.Tensor) -> torch.Tensor:
        """‖Ax − y‖²_W̃/(2σ²) per image."""
        return data_misfit(self.op, x, self.y, self.sigma, self.weights)

    def parts(self, z: torch.Tensor, phi: torch.Tensor, x: torch.Tensor
              ) -> dict[str, torch.Tensor]:
        """Per-image data, regulariser and matching terms of F."""
        nxt = torch.cat([z[1:], x[None]], 0)
        match = functools.reduce(operator.add, [sq(nxt[k] - phi[k]) for k in range(self.K)])
        return {"data": self.data_term(x), "reg": self.lam * radial_reg(z[0].double()),
                "match": 0.5 * self.mu * match}

    def local(self, k: int, zk: torch.Tensor, phik: torch.Tensor, prev_phi: torch.Tensor | None,
              nxt: torch.Tensor) -> torch.Tensor:
        """f_k per image: the part of F that depends on z_k."""
        f = 0.5 * self.mu * sq(nxt - phik)
        if k == 0 or prev_phi is None:  # prev_phi is None exactly for k = 0
            return f + self.lam * radial_reg(zk.double())
        return f + 0.5 * self.mu * sq(zk - prev_phi)

    def base_grad(self, k: int, zk: torch.Tensor, prev_phi: torch.Tensor | None) -> torch.Tensor:
        """Gradient of the z_k-only part: λ∇R(z_0) or μ r_k."""
        if k == 0 or prev_phi is None:  # prev_phi is None exactly for k = 0
            return self.lam * radial_reg_grad(zk)
        return self.mu * (zk - prev_phi)

    def step0(self, k: int) -> float:
        """The base step α_k/η: 1/(μ + λ) for z_0, 1/(2μ) otherwise."""
        return 1.0 / (self.mu + self.lam) if k == 0 else 1.0 / (2.0 * self.mu)


def bcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` viewed with trailing singleton axes to broadcast against ``like``."""
    return mask.view(*mask.shape, *([1] * (like.ndim - mask.ndim)))


def update_colour(st: Stitching, z: torch.Tensor, phi: torch.Tensor, x: torch.Tensor,
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
        znew = zk[sel] - bcast(a[sel], direction[sel]) * direction[sel]
        phinew = st.flow(znew, [ks[i] for i in sel])
        fnew = torch.stack([st.local(ks[i], znew[j], phinew[j], prev[i], nxt[ks[i]])
                            for j, i in enumerate(sel)])
        ok = fnew <= f_old[sel] - ARMIJO_C * a[sel].double() * sq_blocks(direction[sel])
        return znew, phinew, ok

    # Jacobian-free direction for every block of this colour, one batched flow call.
    d = base - st.mu * resid
    every = list(range(len(ks)))
    znew, phinew, ok = trial(d, alpha.expand(len(ks), z.shape[1]), every)
    accepted = ok.clone()
    new_z, new_phi = torch.where(bcast(ok, zk), znew, zk), torch.where(bcast(ok, zk), phinew,
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
                new_z[i] = torch.where(bcast(take, zg[j]), zg[j], new_z[i])
                new_phi[i] = torch.where(bcast(take, zg[j]), phig[j], new_phi[i])
                accepted[i] |= take
                stats["grad_accepted"] += int(take.sum())
            a = a / 2
        stats["grad_tried"] += int((~ok).sum())
    z[ks] = new_z
    phi[ks] = new_phi


def sq_blocks(a: torch.Tensor) -> torch.Tensor:
    """Squared norm per (block, image) of a (n, B, ...) tensor, float64."""
    return a.double().flatten(2).pow(2).sum(2)


def prox_data(op: LinearOperator, y: torch.Tensor, anchor: torch.Tensor, sigma: float,
              mu: float, x0: torch.Tensor | None = None, tol: float = 1e-4,
              maxiter: int = 30, weights: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_x ‖Ax − y‖²_W̃/(2σ²) + (μ/2)‖x − anchor‖², i.e. the solution of

        (AᵀW̃A + σ²μ I) x = AᵀW̃y + σ²μ·anchor          (W̃ = I: white noise),

    solved for the correction δ = x − anchor:  (AᵀW̃A + σ²μ I) δ = AᵀW̃(y − A·anchor)  (same
    solution; the tolerance then measures the data correction, and CG started in A's row
    space never touches its null space).  White: by ``op.solve_normal``, closed form for
    masks, SR and blur, the full-spectrum SVD formula for CT (exact up to rounding), CG from
    the warm start x0 to ``tol`` otherwise.  Weighted (``weights`` W̃): CG on the weighted
    normal equations from x0 to ``tol`` (``weights.solve_weighted_normal``).  If x0 is given
    and has the lower energy it is kept."""
    rho = sigma**2 * mu

    def energy(d: torch.Tensor) -> torch.Tensor:
        return data_misfit(op, anchor + d, y, sigma, weights) + 0.5 * mu * sq(d)

    with torch.no_grad():
        d0 = None if x0 is None else x0 - anchor
        if weights is None:
            rhs = op.T(y - op(anchor))
            d = op.solve_normal(rhs, rho, x0=d0, tol=tol, maxiter=maxiter)
        else:
            rhs = op.T(weights * (y - op(anchor)))
            d = solve_weighted_normal(op, weights, rhs, rho, x0=d0, tol=tol, maxiter=maxiter)
        if d0 is not None:
            d = torch.where(bcast(energy(d0) < energy(d), d), d0, d)
    return anchor + d


def prox_step(st: Stitching, x: torch.Tensor, phi_last: torch.Tensor,
               phi_last_old: torch.Tensor, cg_tol: float, cg_iters: int) -> torch.Tensor:
    """Step (ii), warm-started at x + ΔΦ_{K−1} (the last correction moved with the anchor),
    kept only where it lowers F."""

    def energy(u: torch.Tensor) -> torch.Tensor:
        return st.data_term(u) + 0.5 * st.mu * sq(u - phi_last)

    xn = prox_data(st.op, st.y, phi_last, st.sigma, st.mu, x0=x + (phi_last - phi_last_old),
                   tol=cg_tol, maxiter=cg_iters, weights=st.weights)
    return torch.where(bcast(energy(xn) <= energy(x), x), xn, x)


def initial_states(st: Stitching, x_init: torch.Tensor, init: str, seed: int) -> torch.Tensor:
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
