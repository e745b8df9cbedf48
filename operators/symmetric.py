"""Exact projector and pseudo-inverse of a CT system matrix through its grid symmetries.

Let G be the scan's symmetry group (``symmetric_group``: D4 or a Klein four-group) and
A_s = (1/|G|) Σ_g R_gᵀ A C_g the symmetrised system matrix, exactly equivariant and equal
to ASTRA's A up to ≈1e-5–1e-4 (relative, Frobenius).  The Gram matrix of the smaller side
(M = A_s A_sᵀ over the non-zero rays, or A_sᵀ A_s over the pixels) commutes with G's
permutations, so in the real irreducible bases B_b of ``symmetric_group.blocks`` it is
block-diagonal: M = Σ_b B_b (F_bᵀ F_b) B_bᵀ with F_b = A_s B_b (image side) or A_sᵀ B_b
(ray side); for D4 four blocks of ≈ d/8 and one of ≈ d/4 (the 2-D representation, whose
second copy s_d B_b has the same block).  Each block is eigendecomposed in float64,
F_bᵀ F_b = Q_b Λ_b Q_bᵀ, and λ ≤ (threshold·σ_max)² count as zero exactly like
``TruncatedSVD`` (σ² = λ; the *tail* (TAIL_FLOOR·σ_max, threshold·σ_max] is kept for the
regularised solve).  With Q = [Q_b], B = [B_b] and g(λ) a spectral gain:

* image side: V = B Q and V g(Λ) Vᵀ x = Σ_b B_b Q_b g(Λ_b) Q_bᵀ B_bᵀ x;
* ray side: V = A_sᵀ B Q Λ^{-1/2}, so V g(Λ) Vᵀ x = A_sᵀ Σ_b B_b Q_b (g(Λ_b)/Λ_b) Q_bᵀ B_bᵀ A_s x
  and A_s⁺ y = A_sᵀ Σ_b B_b Q_b Λ_b⁻¹ Q_bᵀ B_bᵀ y.

P x = V Vᵀ x (g = 1), (AᵀA)⁺ = V Λ⁻¹ Vᵀ, P (AᵀA + ρ)⁻¹ = V (Λ + ρ)⁻¹ Vᵀ and the full
regularised solve adds the tail and (b − V_a V_aᵀ b)/ρ, as in ``svd``.  The cost of the
eigendecompositions is Σ_b d_b³ ≈ d³/43 for D4 (d³/16 for a Klein group: four blocks of
≈ d/4) instead of d³, and the stored factors
Σ_b d_b k_b floats instead of n·k (never forming V on the ray side: 512², 60 views keeps
≈ 0.8 GB of float32 Q instead of ≈ 40 GB of V).

A_s is applied without being stored: A_s x = (1/|G|) Σ_g R_gᵀ A (C_g x) is one batched
forward projection of the |G| permuted images through the operator's own backend (and
likewise A_sᵀ).  The operator's forward and adjoint stay ASTRA's A: making them A_s too
changed C-ΠGFM's PSNR by 0.01 dB at 64² (``docs/bench_projector_sym.md``).  All spectral
work is in float64, with the kept Q (stored as float32) converted COLUMN_CHUNK columns at a
time: on the ray side the gain 1/λ multiplies rounding errors by up to σ_max/σ_cut = 10³.
The tail's Q is stored in float64 (few columns): there the factor reaches σ_max/σ = 10⁶,
and in float32 it made the regularised solve 2e-4 wrong at 48², 31 views (now 8e-7).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from .cache import load_or_build
from .svd import TAIL_FLOOR
from .symmetric_check import FACTOR_NAMES, SPACES, factors_problem
from .symmetric_group import Block, Symmetry, blocks, space_permutations, symmetrised_matrix
from .symmetric_linalg import eigh, gram, largest_singular_value

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
COLUMN_CHUNK = 2048  # columns of Q converted to float64 at a time when applying
FLOAT64_COPY_MAX_BYTES = 512e6  # up to this size a float64 copy of Q is kept per device
# instead (128², 60 views: 100 MB; 256²: 390 MB; 512²: 1.6 GB, converted per call)
Apply = Callable[[torch.Tensor], torch.Tensor]


class SymmetricProjector:
    """Per-block eigenpairs (Q_b float32, λ_b float64, kept and tail) of a symmetrised CT
    matrix.  ``forward``/``adjoint`` apply ASTRA's A to images (k, N, N) / sinograms
    (k, V, D) and are used to apply A_s; ``sinogram_shape`` is (V, D)."""

    def __init__(self, symmetries: list[Symmetry], space: str, rows: np.ndarray,
                 factors: list[dict[str, np.ndarray]], threshold: float,
                 sinogram_shape: tuple[int, int], forward: Apply | None = None,
                 adjoint: Apply | None = None, block_list: list[Block] | None = None):
        self.symmetries = symmetries
        self.space = space
        self.rows = np.asarray(rows, dtype=np.int64)
        self.threshold = float(threshold)
        self.sinogram_shape = tuple(sinogram_shape)
        self.image_size = int(round(symmetries[0].image_src.size ** 0.5))
        self.blocks = block_list if block_list is not None else blocks(
            symmetries, space_permutations(symmetries, space, self.rows))
        self.factors = factors
        self.forward_fn, self.adjoint_fn = forward, adjoint
        self._copies: dict[torch.device, dict[str, Any]] = {}

    # -- facts ---------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        pairs = zip(self.factors, self.blocks, strict=True)
        return int(sum(f["lam"].size * b.copies for f, b in pairs))

    @property
    def stored_bytes(self) -> int:
        """Bytes of the stored factors (kept and tail Q)."""
        return int(sum(f["q"].nbytes + f["qt"].nbytes for f in self.factors))

    def singular_values(self) -> np.ndarray:
        """The kept σ (a 2-D block's twice), decreasing."""
        lam = np.concatenate([np.repeat(f["lam"], b.copies)
                              for f, b in zip(self.factors, self.blocks, strict=True)])
        return np.sqrt(np.sort(lam)[::-1])

    # -- build ---------------------------------------------------------------------------
    @classmethod
    def compute(cls, matrix: sp.spmatrix | Callable[[], sp.spmatrix],
                symmetries: list[Symmetry], threshold: float,
                sinogram_shape: tuple[int, int], forward: Apply | None = None,
                adjoint: Apply | None = None, eigh_device: str | None = None
                ) -> SymmetricProjector:
        """Symmetrise A, split the smaller Gram matrix into blocks and eigendecompose each
        (float64 ``eigh``: scipy's, or torch's on ``eigh_device``, e.g. "cuda"), keeping the
        pairs above TAIL_FLOOR·σ_max.

        Memory: A (given as a function, it is released once A_s is formed) and A_s's rows
        (or its transpose) stay; the largest block goes first, before any factors are held,
        and its sparse F_b is released before ``eigh`` (peak ≈ two d_b² float64 arrays)."""
        a_s = symmetrised_matrix(matrix() if callable(matrix) else matrix, symmetries)
        rows = np.flatnonzero(np.diff(a_s.indptr))  # rays that miss the image: only λ = 0
        space = "measurement" if rows.size <= a_s.shape[1] else "image"
        a_s = a_s[rows]
        side = a_s if space == "image" else a_s.T.tocsr()  # F_b = side @ B_b
        top = largest_singular_value(a_s)
        del a_s
        block_list = blocks(symmetries, space_permutations(symmetries, space, rows))
        factors: list[dict[str, np.ndarray]] = [{} for _ in block_list]
        order = sorted(range(len(block_list)), key=lambda i: -block_list[i].dim)
        bar = tqdm(order, desc="projector blocks", unit="block", leave=False,
                   disable=None)  # shown on a terminal
        for i in bar:
            bar.set_postfix_str(f"{block_list[i].dim}×{block_list[i].dim}")
            factors[i] = _block_factors(side, block_list[i], top, threshold, eigh_device)
        bar.close()
        del side
        _retruncate(factors, threshold)
        return cls(symmetries, space, rows, factors, threshold, sinogram_shape, forward,
                   adjoint, block_list)

    @classmethod
    def cached(cls, key: str, matrix_fn: Callable[[], sp.spmatrix],
               symmetries: list[Symmetry], threshold: float, description: Mapping[str, Any],
               sinogram_shape: tuple[int, int], forward: Apply | None = None,
               adjoint: Apply | None = None, eigh_device: str | None = None
               ) -> SymmetricProjector:
        """Load from the verified disk cache or compute and store (see ``TruncatedSVD``):
        ``description`` is everything A depends on; the entry is checked against it, the
        threshold, the group and :func:`factors_problem`, and rebuilt if it does not match."""
        memo: dict[str, Any] = {}

        def build() -> dict[str, np.ndarray]:
            log.info("building the exact projector of this geometry (%d grid symmetries, "
                     "blocks of a %d×%d system matrix, once; cached for later runs)",
                     len(symmetries), sinogram_shape[0] * sinogram_shape[1],
                     symmetries[0].image_src.size)
            start = time.perf_counter()
            proj = cls.compute(matrix_fn, symmetries, threshold, sinogram_shape,
                               eigh_device=eigh_device)
            log.info("projector built in %.0f s (rank %d, %d blocks, eigh on %s)",
                     time.perf_counter() - start, proj.rank, len(proj.blocks),
                     eigh_device or "cpu")
            memo["blocks"] = proj.blocks
            return proj.to_arrays()

        def check(arrays: dict[str, np.ndarray]) -> str | None:
            problem, found = factors_problem(arrays, symmetries, sinogram_shape, threshold)
            memo["blocks"] = found
            return problem

        full = {**description, "threshold": float(threshold), "tail_floor": TAIL_FLOOR,
                "group": [s.matrix.ravel().tolist() for s in symmetries]}
        data = load_or_build("sym", key, full, CACHE_FORMAT, build, check)
        return cls.from_arrays(data, symmetries, threshold, sinogram_shape, forward, adjoint,
                               memo.get("blocks"))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The cache entry's arrays: group, space, kept rows, per block q/lam/qt/lamt."""
        out = {"group": np.array([s.matrix.ravel() for s in self.symmetries], dtype=np.int64),
               "space": np.array([SPACES.index(self.space)], dtype=np.int64),
               "rows": self.rows}
        for i, f in enumerate(self.factors):
            out.update({f"{name}{i}": f[name] for name in FACTOR_NAMES})
        return out

    @classmethod
    def from_arrays(cls, data: Mapping[str, np.ndarray], symmetries: list[Symmetry],
                    threshold: float, sinogram_shape: tuple[int, int],
                    forward: Apply | None = None, adjoint: Apply | None = None,
                    block_list: list[Block] | None = None) -> SymmetricProjector:
        count = sum(1 for k in data if k.startswith("lamt"))
        factors = [{name: data[f"{name}{i}"] for name in FACTOR_NAMES} for i in range(count)]
        return cls(symmetries, SPACES[int(data["space"][0])], data["rows"], factors,
                   threshold, sinogram_shape, forward, adjoint, block_list)

    # -- A_s without storing it ----------------------------------------------------------
    def _device(self, device: torch.device) -> dict[str, Any]:
        """Index, weight and factor tensors on ``device`` (made once per device)."""
        if device not in self._copies:
            def t(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.ascontiguousarray(a)).to(device)

            self._copies[device] = {
                "img": [t(s.image_src) for s in self.symmetries],
                "inv_img": [t(np.argsort(s.image_src)) for s in self.symmetries],
                "sino": [t(s.sino_src) for s in self.symmetries],
                "inv_sino": [t(np.argsort(s.sino_src)) for s in self.symmetries],
                "rows": t(self.rows),
                "blocks": [(t(b.index), t(b.weight), None if b.partner is None
                            else t(b.partner)) for b in self.blocks],
                "factors": [{k: t(v) for k, v in f.items()} for f in self.factors]}
            if 2 * self.stored_bytes <= FLOAT64_COPY_MAX_BYTES:  # convert once, not per call
                for f in self._copies[device]["factors"]:
                    f["q"] = f["q"].to(torch.float64)
        return self._copies[device]

    def sym_forward(self, x: torch.Tensor) -> torch.Tensor:
        """A_s x for flat images (B, n) → all rays (B, m): one batched projection of the
        |G| permuted images, R_gᵀ applied to each and averaged."""
        dev = self._device(x.device)
        size, batch = self.image_size, x.shape[0]
        stack = torch.cat([x[:, p] for p in dev["img"]]).reshape(-1, size, size)
        if self.forward_fn is None:
            raise RuntimeError("this projector was built without the operator's forward map")
        y = self.forward_fn(stack).reshape(len(dev["img"]), batch, -1)
        total = torch.stack([y[k][:, p] for k, p in enumerate(dev["inv_sino"])]).sum(0)
        return total / len(dev["img"])

    def sym_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A_sᵀ y for flat sinograms (B, m) → images (B, n)."""
        dev = self._device(y.device)
        batch = y.shape[0]
        stack = torch.cat([y[:, p] for p in dev["sino"]]).reshape(-1, *self.sinogram_shape)
        if self.adjoint_fn is None:
            raise RuntimeError("this projector was built without the operator's adjoint map")
        x = self.adjoint_fn(stack).reshape(len(dev["sino"]), batch, -1)
        total = torch.stack([x[k][:, p] for k, p in enumerate(dev["inv_img"])]).sum(0)
        return total / len(dev["sino"])

    # -- spectral functions --------------------------------------------------------------
    def _blockwise(self, z: torch.Tensor, gain: Gain, tail: bool) -> torch.Tensor:
        """Σ_b B_b Q_b diag(gain(λ_b)) Q_bᵀ B_bᵀ z (both copies of a 2-D block) for z (B, d)
        in float64; with ``tail`` the tail pairs are included."""
        dev = self._device(z.device)
        out = torch.zeros_like(z)
        for (index, weight, partner), f in zip(dev["blocks"], dev["factors"], strict=True):
            pairs = [(f["q"], f["lam"])] + ([(f["qt"], f["lamt"])] if tail else [])
            for idx in (index, partner):
                if idx is None:
                    continue
                coords = (z[:, idx] * weight).sum(-1)  # B_bᵀ z
                res = torch.zeros_like(coords)
                for q, lam in pairs:
                    res += _spectral(coords, q, gain(lam))
                out.index_add_(1, idx.reshape(-1), (res[:, :, None] * weight).reshape(
                    z.shape[0], -1))
        return out

    def _image_diag(self, x: torch.Tensor, gain: Gain, tail: bool = False) -> torch.Tensor:
        """V diag(gain(λ)) Vᵀ x for images x (..., N, N), computed in float64."""
        flat = x.reshape(-1, self.image_size**2).to(torch.float64)
        if self.space == "image":
            out = self._blockwise(flat, gain, tail)
        else:
            rows = self._device(flat.device)["rows"]
            z = self.sym_forward(flat)[:, rows]
            w = self._blockwise(z, lambda lam: gain(lam) / lam, tail)
            full = torch.zeros(flat.shape[0], self.sinogram_shape[0] * self.sinogram_shape[1],
                               dtype=torch.float64, device=flat.device)
            full[:, rows] = w
            out = self.sym_adjoint(full)
        return out.reshape(x.shape).to(x.dtype)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """P x = V_k V_kᵀ x (orthogonal projector on A_s's row space)."""
        return self._image_diag(x, _ones)

    def inverse_gram(self, x: torch.Tensor) -> torch.Tensor:
        """(A_sᵀA_s)⁺ x = V_k Λ_k⁻¹ V_kᵀ x."""
        return self._image_diag(x, lambda lam: 1.0 / lam)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A_s⁺ y for sinograms y (..., V, D): ray side A_sᵀ B Q Λ⁻¹ Qᵀ Bᵀ y, image side
        (A_sᵀA_s)⁺ A_sᵀ y; float64 inside, y's dtype out."""
        m = self.sinogram_shape[0] * self.sinogram_shape[1]
        flat = y.reshape(-1, m).to(torch.float64)
        n = self.image_size
        if self.space == "image":
            x = self.sym_adjoint(flat).reshape(-1, n, n)
            out = self._image_diag(x, lambda lam: 1.0 / lam)
        else:
            rows = self._device(flat.device)["rows"]
            w = torch.zeros_like(flat)
            w[:, rows] = self._blockwise(flat[:, rows], lambda lam: 1.0 / lam, False)
            out = self.sym_adjoint(w)
        return out.reshape(*y.shape[:-2], n, n).to(y.dtype)

    def range_project(self, y: torch.Tensor) -> torch.Tensor:
        """A_s A_s⁺ y: the orthogonal projection of sinograms y (..., V, D) on A_s's range
        (ray side: B Q Qᵀ Bᵀ y, no projection needed), float64 inside."""
        m = self.sinogram_shape[0] * self.sinogram_shape[1]
        flat = y.reshape(-1, m).to(torch.float64)
        if self.space == "image":
            out = self.sym_forward(self.pinv(flat.reshape(-1, *self.sinogram_shape))
                                   .reshape(flat.shape[0], -1))
        else:
            rows = self._device(flat.device)["rows"]
            out = torch.zeros_like(flat)
            out[:, rows] = self._blockwise(flat[:, rows], _ones, False)
        return out.reshape(y.shape).to(y.dtype)

    def projected_solve_normal(self, b: torch.Tensor, rho: float) -> torch.Tensor:
        """P (A_sᵀA_s + ρI)⁻¹ b = V_k (Λ_k + ρ)⁻¹ V_kᵀ b (ρ > 0)."""
        return self._image_diag(b, lambda lam: 1.0 / (lam + rho))

    def solve_normal(self, b: torch.Tensor, rho: float) -> torch.Tensor:
        """(A_sᵀA_s + ρI)⁻¹ b over kept and tail pairs, plus the null-space part
        (b − V_a V_aᵀ b)/ρ projected twice (ρ = 0: V_k Λ_k⁻¹ V_kᵀ b), as ``TruncatedSVD``."""
        if rho == 0:
            return self.inverse_gram(b)
        x = self._image_diag(b, lambda lam: 1.0 / (lam + rho), tail=True)
        one = _ones
        b64 = b.to(torch.float64)
        comp = b64 - self._image_diag(b64, one, tail=True)
        comp = comp - self._image_diag(comp, one, tail=True)
        return (x.to(torch.float64) + comp / rho).to(b.dtype)


Gain = Callable[[torch.Tensor], torch.Tensor]


def _ones(lam: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(lam)


def _spectral(coords: torch.Tensor, q: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Q diag(gain) Qᵀ c for c (B, d) in float64, Q (d, k) float32 converted in chunks."""
    out = torch.zeros_like(coords)
    for start in range(0, q.shape[1], COLUMN_CHUNK):
        qc = q[:, start:start + COLUMN_CHUNK].to(torch.float64)
        out += ((coords @ qc) * gain[start:start + COLUMN_CHUNK]) @ qc.T
    return out


def _block_factors(side: sp.csr_matrix, block: Block, top: float, threshold: float,
                   eigh_device: str | None = None) -> dict[str, np.ndarray]:
    """Eigenpairs of one block FᵀF: kept (λ > (threshold·top)²; eigenvectors float32) and
    tail (above (TAIL_FLOOR·top)²; float64, as on the ray side their rounding would be
    amplified by up to σ_max/σ = 10⁶), columns in decreasing λ."""
    if block.dim == 0:
        return _empty(0)
    f = (side @ block.matrix(side.shape[1])).tocsc()  # F_b = A_s B_b or A_sᵀ B_b
    gram_matrix = gram(f)
    del f
    lam, vecs = eigh(gram_matrix, eigh_device)
    del gram_matrix
    keep = lam > (threshold * top) ** 2
    tail = (lam > (TAIL_FLOOR * top) ** 2) & ~keep
    out = {}
    for sel, q, lm, dtype in ((keep, "q", "lam", np.float32), (tail, "qt", "lamt", np.float64)):
        idx = np.flatnonzero(sel)[::-1]
        out[q] = np.ascontiguousarray(vecs[:, idx], dtype=dtype)
        out[lm] = np.ascontiguousarray(lam[idx])
    return out


def _empty(d: int) -> dict[str, np.ndarray]:
    return {"q": np.zeros((d, 0), np.float32), "lam": np.zeros(0),
            "qt": np.zeros((d, 0)), "lamt": np.zeros(0)}


def _retruncate(factors: list[dict[str, np.ndarray]], threshold: float) -> None:
    """Re-apply the cut with the largest λ actually found (Lanczos' σ_max may fall short
    by rounding): kept pairs below it move to the tail, tail pairs below the floor go."""
    top2 = max((float(f["lam"][0]) for f in factors if f["lam"].size), default=0.0)
    for f in factors:
        q = np.concatenate([f["q"].astype(np.float64), f["qt"]], axis=1)
        lam = np.concatenate([f["lam"], f["lamt"]])
        keep = lam > threshold**2 * top2
        tail = (lam > TAIL_FLOOR**2 * top2) & ~keep
        f.update(q=np.ascontiguousarray(q[:, keep], dtype=np.float32), lam=lam[keep],
                 qt=np.ascontiguousarray(q[:, tail], dtype=np.float64), lamt=lam[tail])
