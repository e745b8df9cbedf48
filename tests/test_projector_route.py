"""The exact (truncated-SVD) projector route: its one-off build stays within memory bounds
and its factors are right."""

from __future__ import annotations

import tracemalloc

import numpy as np
import scipy.sparse as sp

from ctflow.operators import svd as svd_module


def _wide_matrix(m: int = 200, n: int = 4000, seed: int = 0) -> sp.csr_matrix:
    """A sparse m×n matrix (m < n, as a CT system matrix beyond 128² with 60 views)."""
    rng = np.random.default_rng(seed)
    a = sp.random(m, n, density=0.02, random_state=rng, format="csr", dtype=np.float64)
    scale = np.geomspace(1.0, 1e-4, m)  # a spread of singular values across the threshold
    return sp.csr_matrix(sp.diags(scale) @ a)


def test_wide_build_is_exact_and_memory_bounded(monkeypatch):
    """Building V = Aᵀ U Σ⁻¹ for a wide A must not hold float64 copies of V: the traced peak
    stays below the float32 factors plus the two Gram-sized arrays of eigh, plus 50 %; and
    the chunked factors (chunks that do not divide k) equal numpy's SVD."""
    monkeypatch.setattr(svd_module, "FACTOR_CHUNK", 7, raising=False)
    a = _wide_matrix()
    m, _ = a.shape
    tracemalloc.start()
    try:
        result = svd_module.TruncatedSVD.compute(a, 1e-3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    factors = result.vectors.nbytes + result.tail_vectors.nbytes
    bound = 1.5 * (factors + 2 * m * m * 8)
    assert peak <= bound, f"peak {peak / 1e6:.1f} MB > bound {bound / 1e6:.1f} MB"

    _, s, vt = np.linalg.svd(a.toarray(), full_matrices=False)
    keep = s > 1e-3 * s[0]
    tail = (s > svd_module.TAIL_FLOOR * s[0]) & ~keep
    np.testing.assert_allclose(result.singular_values, s[keep], rtol=1e-9)
    np.testing.assert_allclose(result.tail_values, s[tail], rtol=1e-9)
    v = result.vectors.astype(np.float64)
    ref = vt[keep].T
    np.testing.assert_allclose(v @ v.T, ref @ ref.T, atol=1e-5)
