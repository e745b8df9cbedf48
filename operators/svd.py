"""Truncated SVD of a CT system matrix, for exact projectors and pseudo-inverses.

A = U Σ Vᵀ; singular values σ_i ≤ threshold·σ_max count as zero.  With V_k the kept right
singular vectors:

    P x      = V_k V_kᵀ x                                  (orthogonal projector, P² = P)
    A⁺ y     = V_k Σ_k⁻² V_kᵀ Aᵀ y                         (= V_k Σ_k⁻¹ U_kᵀ y)
    (AᵀA + ρI)⁻¹ b = V_a (Σ_a² + ρ)⁻¹ V_aᵀ b + (b − V_a V_aᵀ b)/ρ     (ρ = 0: V_k Σ_k⁻² V_kᵀ b)

where V_a = [V_k, V_t] adds the *tail*: the singular pairs below the threshold but above
TAIL_FLOOR·σ_max, which the projector treats as zero but the regularised solve must not.
Without the tail the last formula divides the tail's components by ρ instead of σ² + ρ:
at the small ρ of MS-Flow's noiseless proximal step (64², 60 views) that start was so far
off that CG needed ~90 normal-operator products per solve to repair it; with the tail the
closed form is exact to float32 rounding.

The factors come from the eigendecomposition, in float64, of the smaller Gram matrix
(AᵀA, n×n, or AAᵀ, m×m, then V_k = Aᵀ U_k Σ_k⁻¹); V_k is stored as float32 in the disk
cache, keyed by geometry and threshold and verified on every load (header, checksums and
:func:`factors_problem`; a bad entry is rebuilt, see ``cache``).  Cost O(min(m, n)³)
once: seconds at 64², minutes at 128²; larger images use the Krylov (CG) route instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch

from .cache import load_or_build

log = logging.getLogger(__name__)

# Singular values at or below TAIL_FLOOR·σ_max count as exact zeros everywhere (float64
# eigenvalues of the Gram matrix resolve σ down to ~1e-8·σ_max).
TAIL_FLOOR = 1e-6
FACTOR_CHUNK = 256  # columns of V formed at a time (float64 scratch: n × FACTOR_CHUNK)
CACHE_FORMAT = 3  # 2: the tail is stored as well; 3: verified entries (cache.py header)


class TruncatedSVD:
    """Kept right singular vectors V_k (n×k, float32) and singular values σ_k (float64),
    plus the tail (V_t, σ_t) of the singular pairs in (TAIL_FLOOR·σ_max, threshold·σ_max]."""

    def __init__(self, vectors: np.ndarray, singular_values: np.ndarray, threshold: float,
                 tail_vectors: np.ndarray | None = None,
                 tail_values: np.ndarray | None = None):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.singular_values = np.ascontiguousarray(singular_values, dtype=np.float64)
        self.threshold = float(threshold)
        n = self.vectors.shape[0]
        self.tail_vectors = np.ascontiguousarray(
            np.zeros((n, 0)) if tail_vectors is None else tail_vectors, dtype=np.float32)
        self.tail_values = np.ascontiguousarray(
            np.zeros(0) if tail_values is None else tail_values, dtype=np.float64)
        self._copies: dict[tuple[torch.device, torch.dtype, bool],
                           tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def rank(self) -> int:
        return int(self.singular_values.size)

    @classmethod
    def compute(cls, matrix: sp.spmatrix, threshold: float) -> TruncatedSVD:
        """Eigendecomposition of the smaller Gram matrix in float64, truncated.

        Peak memory ≈ two float64 copies of the Gram matrix (during ``eigh``), then the
        eigenvectors plus the float32 factors: the Gram matrix is released before the
        factors are formed, and V = Aᵀ U Σ⁻¹ (wide A) is formed in column chunks straight
        into float32.  All-zero rows (rays that miss the image, 11 % at 128², 60 views) are
        dropped first: they only add zero singular values."""
        a = sp.csr_matrix(matrix, dtype=np.float64)
        a = a[np.flatnonzero(np.diff(a.indptr))]  # rays that miss the image add only σ = 0
        m, n = a.shape
        if m == 0 or a.nnz == 0:  # A = 0 (e.g. every ray masked): nothing to keep
            return cls(np.zeros((n, 0)), np.zeros(0), threshold)
        wide = n > m
        gram = (a @ a.T if wide else a.T @ a).toarray()
        # gram.T: the same symmetric matrix in Fortran order, so LAPACK works in place
        # instead of on a copy; it is overwritten, so release it before forming the factors
        w, vecs = scipy.linalg.eigh(gram.T, overwrite_a=True, check_finite=False)
        del gram
        sigma = np.sqrt(np.clip(w, 0.0, None))
        top = sigma.max() if sigma.size else 0.0
        keep = sigma > threshold * top
        tail = (sigma > TAIL_FLOOR * top) & ~keep
        out = []
        for sel in (keep, tail):
            idx = np.flatnonzero(sel)[::-1]  # decreasing σ
            s_sel = sigma[idx]
            if wide:  # vecs are left singular vectors U: V = Aᵀ U Σ⁻¹
                v_sel = _right_vectors(a, vecs, idx, s_sel)
            else:
                v_sel = vecs[:, idx].astype(np.float32)
            out += [v_sel, s_sel]
        return cls(out[0], out[1], threshold, out[2], out[3])

    @classmethod
    def cached(cls, key: str, matrix_fn: Callable[[], sp.spmatrix], threshold: float,
               description: Mapping[str, Any], shape: tuple[int, int]) -> TruncatedSVD:
        """Load from the disk cache or compute (``matrix_fn()`` gives A, of ``shape``) and
        store.  ``description`` is everything A depends on (geometry, angles, projector); the
        entry is verified against it, the threshold and :func:`factors_problem`, and rebuilt
        if it does not match."""

        def build() -> dict[str, np.ndarray]:
            matrix = matrix_fn()
            log.info("building the exact projector of this geometry (truncated SVD of a "
                     "%d×%d system matrix, once; cached for later runs)", *matrix.shape)
            start = time.perf_counter()
            svd = cls.compute(matrix, threshold)
            log.info("projector built in %.0f s (rank %d)", time.perf_counter() - start,
                     svd.rank)
            return {"vectors": svd.vectors, "sigma": svd.singular_values,
                    "tail_vectors": svd.tail_vectors, "tail_sigma": svd.tail_values}

        full = {**description, "threshold": float(threshold), "tail_floor": TAIL_FLOOR}
        data = load_or_build("svd", key, full, CACHE_FORMAT, build,
                             lambda arrays: factors_problem(arrays, shape, threshold))
        return cls(data["vectors"], data["sigma"], threshold, data["tail_vectors"],
                   data["tail_sigma"])

    def _factors(self, like: torch.Tensor, tail: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(V_k, σ_k), or with ``tail`` (V_a, σ_a) = kept and tail pairs, on like's device."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        key = (like.device, dtype, tail)
        if key not in self._copies:
            v, s = self.vectors, self.singular_values
            if tail:
                v = np.concatenate([v, self.tail_vectors], axis=1)
                s = np.concatenate([s, self.tail_values])
            self._copies[key] = (torch.from_numpy(v).to(like.device, dtype),
                                 torch.from_numpy(s).to(like.device, dtype))
        return self._copies[key]

    def _diag(self, x: torch.Tensor, gain, tail: bool = False,
              precise: bool = False) -> torch.Tensor:
        """V diag(gain(σ)) Vᵀ x for x (..., H, W); V = V_k, or V_a with ``tail``.

        ``precise``: in float64 whatever x's dtype.  Gains like σ⁻² amplify the rounding of
        Vᵀx by up to (σ_max/σ_min)² (10⁶ at the default threshold): in float32 that made
        A⁺y 1 % wrong at 64², 60 views, and cost ΠGFM 8 dB there (45.0 vs 53.5 dB)."""
        like = x.to(torch.float64) if precise else x
        v, s = self._factors(like, tail)
        flat = like.reshape(-1, v.shape[0]).to(v.dtype)
        coef = (flat @ v) * gain(s)
        return (coef @ v.T).reshape(x.shape).to(x.dtype)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """P x = V_k V_kᵀ x."""
        return self._diag(x, lambda s: 1.0)

    def inverse_gram(self, x: torch.Tensor) -> torch.Tensor:
        """(AᵀA)⁺ x = V_k Σ_k⁻² V_kᵀ x."""
        return self._diag(x, lambda s: 1.0 / (s * s), precise=True)

    def projected_solve_normal(self, b: torch.Tensor, rho: float) -> torch.Tensor:
        """P (AᵀA + ρI)⁻¹ b = V_k (Σ_k² + ρ)⁻¹ V_kᵀ b (ρ > 0): P removes the tail and null-space
        parts of the solve, so one pass over the kept factors suffices."""
        return self._diag(b, lambda s: 1.0 / (s * s + rho), precise=True)

    def solve_normal(self, b: torch.Tensor, rho: float) -> torch.Tensor:
        """(AᵀA + ρI)⁻¹ b over kept and tail spectrum (ρ = 0: the truncated minimum-norm
        solution V_k Σ_k⁻² V_kᵀ b)."""
        if rho == 0:
            return self.inverse_gram(b)
        x = self._diag(b, lambda s: 1.0 / (s * s + rho), tail=True, precise=True)
        if self.rank + self.tail_values.size >= self.vectors.shape[0]:
            return x  # V_a spans the whole image space: no null-space part
        # null-space part (b − V_a V_aᵀ b)/ρ, projected twice: one pass leaves float32
        # rounding of b in every direction, which 1/ρ would blow up
        comp = b - self._diag(b, lambda s: 1.0, tail=True)
        comp = comp - self._diag(comp, lambda s: 1.0, tail=True)
        return x + comp / rho


def _right_vectors(a: sp.csr_matrix, u: np.ndarray, idx: np.ndarray,
                   sigma: np.ndarray) -> np.ndarray:
    """V = Aᵀ U[:, idx] Σ⁻¹ as float32 (n × len(idx)), computed FACTOR_CHUNK columns at a
    time in float64, so no full float64 copy of V is ever held."""
    at = a.T.tocsr()
    chunk = FACTOR_CHUNK
    v = np.empty((a.shape[1], idx.size), dtype=np.float32)
    for start in range(0, idx.size, chunk):
        cols = idx[start:start + chunk]
        v[:, start:start + cols.size] = (at @ u[:, cols]) / sigma[start:start + cols.size]
    return v


def factors_problem(arrays: dict[str, np.ndarray], shape: tuple[int, int],
                    threshold: float) -> str | None:
    """What is wrong with cached factors of an m×n matrix (``shape``), or None: the arrays
    and their dtypes, V's n rows, one σ per column, at most min(m, n) pairs, finite values,
    σ > 0 and decreasing, kept σ above and tail σ in (TAIL_FLOOR, threshold]·σ_max."""
    names = {"vectors": np.float32, "sigma": np.float64, "tail_vectors": np.float32,
             "tail_sigma": np.float64}
    if set(arrays) != set(names):
        return f"arrays {sorted(arrays)}, expected {sorted(names)}"
    for name, dtype in names.items():
        if arrays[name].dtype != dtype:
            return f"{name} is {arrays[name].dtype}, expected {np.dtype(dtype)}"
    m, n = shape
    v, s, vt, st = (arrays[k] for k in names)
    for vec, val, label in ((v, s, "kept"), (vt, st, "tail")):
        if vec.ndim != 2 or vec.shape[0] != n or val.shape != (vec.shape[1],):
            return (f"{label} factors have shapes {vec.shape} and {val.shape}, expected "
                    f"({n}, r) and (r,)")
    if s.size == 0:  # A = 0 (e.g. every ray masked): nothing to keep, no tail either
        return "tail singular values without kept ones" if st.size else None
    if s.size + st.size > min(m, n):
        return f"{s.size + st.size} singular pairs, more than min(m, n) = {min(m, n)}"
    for name in names:
        if not np.isfinite(arrays[name]).all():
            return f"{name} contains NaN or Inf"
    for val, label in ((s, "kept"), (st, "tail")):
        if np.any(val <= 0):
            return f"{label} singular values are not all > 0"
        if np.any(np.diff(val) > 0):
            return f"{label} singular values are not in decreasing order"
    top = s[0]
    if s[-1] <= threshold * top:
        return f"kept singular values reach down to {s[-1] / top:.3g}·σ_max, below the " \
               f"threshold {threshold:g}"
    if st.size and (st[0] > threshold * top or st[-1] <= TAIL_FLOOR * top):
        return "tail singular values outside (TAIL_FLOOR, threshold]·σ_max"
    return None
