"""An exact flow prior for Gaussian data, used to test solvers against closed forms.

Data x1 ~ N(m, Σ) with Σ = U diag(s²) Uᵀ (U orthonormal, identity by default).  Along
x_t = t·x1 + (1−t)·z the posterior mean gives the exact velocity, per eigen-direction:

    v(x, t) = m + U diag(c_t) Uᵀ (x − t·m),   c_t = (t s² − (1−t)) / (t² s² + (1−t)²).
"""

from __future__ import annotations

import torch

from .base import Prior


class GaussianPrior(Prior):
    """Exact velocity of N(mean, U diag(var) Uᵀ) images of shape (1, n, n)."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, basis: torch.Tensor | None = None):
        super().__init__()
        if mean.shape != var.shape or mean.ndim != 2 or mean.shape[0] != mean.shape[1]:
            raise ValueError("mean and var must be equal square (n, n) tensors")
        if bool((var <= 0).any()):
            raise ValueError("variances must be positive")
        self.image_size = int(mean.shape[0])
        self.mean = mean.double()
        self.var = var.double()
        d = mean.numel()
        if basis is not None and basis.shape != (d, d):
            raise ValueError(f"basis must be ({d}, {d})")
        self.basis = None if basis is None else basis.double()

    def _coef(self, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, 1, 1, 1).double()
        s2 = self.var.to(t.device)
        return (t * s2 - (1 - t)) / (t * t * s2 + (1 - t) ** 2)

    def _velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = self.mean.to(x.device)
        tt = t.view(-1, 1, 1, 1).to(torch.float64)
        d = x.double() - tt * m
        if self.basis is None:
            out = m + self._coef(t) * d
        else:
            u = self.basis.to(x.device)
            coeffs = d.flatten(1) @ u  # Uᵀ d, as row vectors
            coeffs = coeffs * self._coef(t).flatten(1)
            out = m + (coeffs @ u.T).view_as(d)
        return out.to(x.dtype)

    def sample_data(self, n: int, seed: int = 0) -> torch.Tensor:
        """Exact samples of x1."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 1, self.image_size, self.image_size, generator=gen, dtype=torch.float64)
        if self.basis is None:
            return self.mean + self.var.sqrt() * z
        w = (z.flatten(1) * self.var.sqrt().flatten()) @ self.basis.T
        return self.mean + w.view_as(z)
