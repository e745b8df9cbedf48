"""Truncated SVD of a CT system matrix, for exact projectors and pseudo-inverses.

A = U Σ Vᵀ; singular values σ_i ≤ threshold·σ_max count as zero.  With V_k the kept right
singular vectors:

    P x      = V_k V_kᵀ x                                  (orthogonal projector, P² = P)
    A⁺ y     = V_k Σ_k⁻² V_kᵀ Aᵀ y                         (= V_k Σ_k⁻¹ U_kᵀ y)
    (AᵀA + ρI)⁻¹ b = V_k (Σ_k² + ρ)⁻¹ V_kᵀ b + (b − V_k V_kᵀ b)/ρ     (ρ = 0: V_k Σ_k⁻² V_kᵀ b)

The factors come from the eigendecomposition, in float64, of the smaller Gram matrix
(AᵀA, n×n, or AAᵀ, m×m, then V_k = Aᵀ U_k Σ_k⁻¹); V_k is stored as float32 in the disk
cache, keyed by geometry and threshold.  Cost O(min(m, n)³) once: seconds at 64²,
minutes at 128²; larger images use the Krylov (CG) route instead.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch

from .cache import cache_path, load_arrays, save_arrays

log = logging.getLogger(__name__)


class TruncatedSVD:
    """Kept right singular vectors V_k (n×k, float32) and singular values σ_k (float64)."""

    def __init__(self, vectors: np.ndarray, singular_values: np.ndarray, threshold: float):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.singular_values = np.ascontiguousarray(singular_values, dtype=np.float64)
        self.threshold = float(threshold)
        self._copies: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    @property
    def rank(self) -> int:
        return int(self.singular_values.size)

    @classmethod
    def compute(cls, matrix: sp.spmatrix, threshold: float) -> TruncatedSVD:
        """Eigendecomposition of the smaller Gram matrix in float64, truncated."""
        a = sp.csr_matrix(matrix, dtype=np.float64)
        m, n = a.shape
        if n <= m:
            gram = (a.T @ a).toarray()
            w, vecs = scipy.linalg.eigh(gram, overwrite_a=True, check_finite=False)
        else:
            gram = (a @ a.T).toarray()
            w, vecs = scipy.linalg.eigh(gram, overwrite_a=True, check_finite=False)
        sigma = np.sqrt(np.clip(w, 0.0, None))
        keep = sigma > threshold * sigma.max() if sigma.size and sigma.max() > 0 \
            else np.zeros_like(sigma, dtype=bool)
        sigma, vecs = sigma[keep][::-1], vecs[:, keep][:, ::-1]
        if n > m:  # vecs are left singular vectors U_k: V_k = Aᵀ U_k Σ_k⁻¹
            vecs = (a.T @ vecs) / sigma[None, :]
        return cls(vecs, sigma, threshold)

    @classmethod
    def cached(cls, key: str, matrix_fn, threshold: float) -> TruncatedSVD:
        """Load from the disk cache or compute (``matrix_fn()`` gives A) and store."""
        path = cache_path("svd", key)
        data = load_arrays(path)
        if data is not None and {"vectors", "sigma"} <= set(data):
            return cls(data["vectors"], data["sigma"], threshold)
        matrix = matrix_fn()
        log.info("building the exact projector of this geometry (truncated SVD of a %d×%d "
                 "system matrix, once; cached for later runs)", *matrix.shape)
        start = time.perf_counter()
        svd = cls.compute(matrix, threshold)
        save_arrays(path, vectors=svd.vectors, sigma=svd.singular_values)
        log.info("projector built in %.0f s (rank %d)", time.perf_counter() - start, svd.rank)
        return svd

    def _factors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        key = (like.device, dtype)
        if key not in self._copies:
            self._copies[key] = (torch.from_numpy(self.vectors).to(like.device, dtype),
                                 torch.from_numpy(self.singular_values).to(like.device, dtype))
        return self._copies[key]

    def _diag(self, x: torch.Tensor, gain) -> torch.Tensor:
        """V_k diag(gain(σ)) V_kᵀ x for x (..., H, W)."""
        v, s = self._factors(x)
        flat = x.reshape(-1, v.shape[0]).to(v.dtype)
        coef = (flat @ v) * gain(s)
        return (coef @ v.T).reshape(x.shape).to(x.dtype)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """P x = V_k V_kᵀ x."""
        return self._diag(x, lambda s: 1.0)

    def inverse_gram(self, x: torch.Tensor) -> torch.Tensor:
        """(AᵀA)⁺ x = V_k Σ_k⁻² V_kᵀ x."""
        return self._diag(x, lambda s: 1.0 / (s * s))

    def solve_normal(self, b: torch.Tensor, rho: float) -> torch.Tensor:
        """(AᵀA + ρI)⁻¹ b with the truncated spectrum (ρ = 0: the minimum-norm solution)."""
        if rho == 0:
            return self.inverse_gram(b)
        pb = self.project(b)
        return self._diag(b, lambda s: 1.0 / (s * s + rho)) + (b - pb) / rho
