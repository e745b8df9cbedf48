"""Dense linear algebra of the symmetric projector's build (``symmetric.py``): the largest
singular value of the sparse matrix, a block's Gram matrix and its eigendecomposition."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

GRAM_CHUNK = 1024  # columns of a Gram block formed at a time (sparse product, then dense)


def largest_singular_value(a: sp.csr_matrix) -> float:
    """σ_max of a sparse matrix (Lanczos on the smaller Gram matrix)."""
    small = min(a.shape)
    if small <= 64:
        return float(np.linalg.norm(a.toarray(), 2))
    at = a.T.tocsr()
    op = spla.LinearOperator((small, small), dtype=np.float64,
                             matvec=(lambda v: a @ (at @ v)) if a.shape[0] == small
                             else (lambda v: at @ (a @ v)))
    lam = spla.eigsh(op, k=1, which="LA", tol=1e-10, return_eigenvectors=False,
                     v0=np.ones(small))
    return float(np.sqrt(lam[0]))


def gram(f: sp.csc_matrix) -> np.ndarray:
    """FᵀF as a dense float64 array, GRAM_CHUNK columns at a time (sparse products)."""
    ft = f.T  # a CSR view of the same arrays
    d = f.shape[1]
    out = np.empty((d, d), order="F")
    for start in range(0, d, GRAM_CHUNK):
        out[:, start:start + GRAM_CHUNK] = (ft @ f[:, start:start + GRAM_CHUNK]).toarray()
    return out


def eigh(gram: np.ndarray, device: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric float64 matrix: scipy's
    ``eigh`` on the host (overwrites ``gram``), or ``torch.linalg.eigh`` on ``device`` (a
    GPU's dense solver; the factors come back to the host)."""
    if device is None:
        return scipy.linalg.eigh(gram, overwrite_a=True, check_finite=False)
    g = torch.from_numpy(gram).to(device)
    lam, vecs = torch.linalg.eigh(g)
    del g
    return lam.cpu().numpy(), vecs.cpu().numpy()
