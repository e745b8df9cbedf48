"""Symmetries of a CT scan: the grid symmetries that map the view set onto itself, the
symmetrised system matrix A_s and the real irreducible bases that block-diagonalise its Gram
matrix.

Grid symmetries.  The eight 2×2 integer orthogonal matrices g (dihedral group D4: rotations
by multiples of 90° and the four mirrors) map the pixel-centre grid onto itself.  C_g is the
image permutation (C_g x)(p) = x(g⁻¹ p).  A line integral of C_g x along a ray L equals that
of x along g⁻¹ L; when g⁻¹ maps view i's rays onto view j's (parallel beam: detector axis
u_j = ±gᵀu_i; fan beam: source and detector centre map exactly and u_j = ±gᵀu_i), bin b of
view i becomes bin b of view j (+) or the mirrored bin n−1−b (−).  So A C_g = R_g A with the
sinogram permutation (R_g y)[i, b] = y[j, b'].  The group G of the scan is the set of g for
which every view has such a partner (found numerically from ``CTGeometry.vectors``):
parallel beam with V uniform views in [0, π) gives D4 for V even (90° ↔ view shift by V/2)
and D2 = {I, x-mirror, y-mirror, 180°} for V odd; fan beam over [0, 2π) gives D4 for V
divisible by 4 and D2 for V even; limited-angle or irregular scans keep at most {I, 180°}.

A_s = (1/|G|) Σ_g R_gᵀ A C_g is exactly equivariant (R_h A_s = A_s C_h), and equals ASTRA's A
up to the discretisation's asymmetry (≈1e-5–1e-4 relative).

Blocks.  Π_g (e_p ↦ e_{σ_g(p)}, σ_g the permutation of the space: sinogram rows or pixels)
commutes with the Gram matrix (A_s A_sᵀ or A_sᵀ A_s).  For each real one-dimensional
character ψ of G, the orbit sums v_{O,ψ} = Σ_g ψ(g) e_{σ_g(o)} (normalised; zero when ψ is
not trivial on o's stabiliser) span the ψ-isotypic component and are orthonormal.  For D4
the four 1-D characters cover half the space; the remaining 2-D irreducible representation
is reached through the Klein subgroup K of diagonal matrices (x-mirror, y-mirror, 180°): its
character χ with χ(x-mirror) = +1, χ(y-mirror) = −1 gives K-orbit sums spanning one copy,
and the diagonal mirror s_d maps that copy onto the other (χ's conjugate), where the Gram
block is the same matrix.  Only groups whose real irreducibles are covered this way (D4 and
the Klein groups) are used; the dimensions are checked to add up to the space's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .geometry import CTGeometry

# the eight integer orthogonal 2×2 matrices (x, y) ↦ g (x, y), identity first
D4 = tuple(np.array(m, dtype=np.int64).reshape(2, 2) for m in (
    (1, 0, 0, 1), (0, -1, 1, 0), (-1, 0, 0, -1), (0, 1, -1, 0),  # rotations 0, 90, 180, 270
    (-1, 0, 0, 1), (1, 0, 0, -1), (0, 1, 1, 0), (0, -1, -1, 0)))  # mirrors x, y, diag, anti
MATCH_TOL = 1e-6  # relative tolerance for matching a transformed view to a view
MIN_GROUP = 4  # smaller groups do not cut the eigendecomposition enough to be worth it


@dataclass
class Symmetry:
    """One grid symmetry g of a scan: its matrix and the permutations it induces.

    ``image_src``: C_g x = x.flat[image_src]; ``sino_src``: R_g y = y.flat[sino_src]."""

    matrix: np.ndarray
    image_src: np.ndarray
    sino_src: np.ndarray


@dataclass
class Block:
    """An orthonormal basis B (space × dim, ≤ |G| non-zeros per column) of one invariant
    subspace, as index/weight arrays (dim, L); ``partner``: the indices of the copy s_d B
    for a 2-D irreducible representation (the same Gram block), else None."""

    label: str
    index: np.ndarray
    weight: np.ndarray
    partner: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.index.shape[0])

    @property
    def copies(self) -> int:
        return 1 if self.partner is None else 2

    def matrix(self, size: int, partner: bool = False) -> sp.csr_matrix:
        """B (or s_d B) as a sparse size × dim matrix."""
        idx = self.partner if partner and self.partner is not None else self.index
        cols = np.repeat(np.arange(self.dim), idx.shape[1])
        return sp.csr_matrix((self.weight.ravel(), (idx.ravel(), cols)),
                             shape=(size, self.dim))


def _pixel_permutation(n: int, g: np.ndarray) -> np.ndarray:
    """image_src with (C_g x)[q] = x[g⁻¹ q] on the N×N grid (doubled integer coordinates)."""
    r, c = np.divmod(np.arange(n * n), n)
    xy = np.stack([2 * c - (n - 1), (n - 1) - 2 * r])
    src = g.T @ xy  # g⁻¹ = gᵀ
    cs, rs = (src[0] + n - 1) // 2, (n - 1 - src[1]) // 2
    return rs * n + cs


def _view_map(geometry: CTGeometry, g: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For each view i the view j that g⁻¹ maps it onto and the detector sign (±1), or None
    when some view has no partner."""
    vec = geometry.vectors()
    gt = g.T.astype(np.float64)
    src, det, axis = vec[:, 0:2], vec[:, 2:4], vec[:, 4:6]
    tsrc, tdet, taxis = src @ gt.T, det @ gt.T, axis @ gt.T
    scale = max(np.abs(vec).max(), 1e-12)
    parallel = geometry.type == "parallel"
    views = np.empty(len(vec), dtype=np.int64)
    signs = np.empty(len(vec), dtype=np.int64)
    for i in range(len(vec)):
        found = False
        for sign in (1, -1):
            if parallel:  # rays are lines: their direction's sign does not matter
                ok = (np.minimum(np.abs(src - tsrc[i]).max(1), np.abs(src + tsrc[i]).max(1))
                      <= MATCH_TOL * scale)
            else:
                ok = (np.abs(src - tsrc[i]).max(1) <= MATCH_TOL * scale) & \
                     (np.abs(det - tdet[i]).max(1) <= MATCH_TOL * scale)
            ok &= np.abs(axis - sign * taxis[i]).max(1) <= MATCH_TOL * scale
            hits = np.flatnonzero(ok)
            if hits.size:
                views[i], signs[i], found = hits[0], sign, True
                break
        if not found:
            return None
    return views, signs


def scan_symmetries(geometry: CTGeometry) -> list[Symmetry]:
    """Every g of D4 that maps the scan's view set onto itself (identity first)."""
    n, nd = geometry.image_size, geometry.det_count
    bins = np.arange(nd)
    out = []
    for g in D4:
        mapped = _view_map(geometry, g)
        if mapped is None:
            continue
        views, signs = mapped
        b = np.where(signs[:, None] > 0, bins[None, :], nd - 1 - bins[None, :])
        sino = (views[:, None] * nd + b).ravel()
        out.append(Symmetry(g, _pixel_permutation(n, g), sino))
    return out


def group_name(symmetries: list[Symmetry]) -> str:
    """``D4``, ``D2`` (axis mirrors), ``D2'`` (diagonal mirrors), or ``order k``."""
    mats = [s.matrix for s in symmetries]
    if len(mats) == 8:
        return "D4"
    if len(mats) == 4 and _characters(mats) and len(_characters(mats)) == 4:
        return "D2" if all(m[0, 1] == 0 for m in mats) else "D2'"
    return f"order {len(mats)}"


def usable(symmetries: list[Symmetry]) -> bool:
    """Whether the block route supports this group (D4 or a Klein four-group)."""
    return group_name(symmetries) in ("D4", "D2", "D2'") and len(symmetries) >= MIN_GROUP


def _index(mats: list[np.ndarray], m: np.ndarray) -> int:
    return next(k for k, a in enumerate(mats) if np.array_equal(a, m))


def _characters(mats: list[np.ndarray]) -> list[np.ndarray]:
    """All real one-dimensional characters (±1 homomorphisms) of the group of ``mats``."""
    table = np.array([[_index(mats, a @ b) for b in mats] for a in mats])
    found = []
    for signs in itertools.product((1, -1), repeat=len(mats) - 1):
        psi = np.array((1, *signs))
        if np.array_equal(psi[:, None] * psi[None, :], psi[table]):
            found.append(psi)
    return found


def symmetrised_matrix(matrix: sp.spmatrix, symmetries: list[Symmetry]) -> sp.csr_matrix:
    """A_s = (1/|G|) Σ_g R_gᵀ A C_g in float64 (CSR)."""
    a = sp.csr_matrix(matrix, dtype=np.float64)
    total = _permute(a, symmetries[0].sino_src, symmetries[0].image_src)
    for s in symmetries[1:]:
        total = total + _permute(a, s.sino_src, s.image_src)
    total = total.tocsr() * (1.0 / len(symmetries))
    total.sum_duplicates()
    return total


def _permute(a: sp.csr_matrix, sino_src: np.ndarray, image_src: np.ndarray) -> sp.csr_matrix:
    """R_gᵀ A C_g: entry A[r, q] moves to row sino_src[r], column image_src[q]."""
    coo = a.tocoo()
    return sp.csr_matrix((coo.data, (sino_src[coo.row], image_src[coo.col])), shape=a.shape)


def space_permutations(symmetries: list[Symmetry], space: str,
                       rows: np.ndarray | None = None) -> list[np.ndarray]:
    """σ_g on the space: pixels (``image``) or the kept sinogram rows ``rows``
    (``measurement``; ``rows`` must be a G-invariant set)."""
    if space == "image":
        return [s.image_src for s in symmetries]
    if rows is None:
        raise ValueError("the measurement space needs the kept sinogram rows")
    local = np.full(symmetries[0].sino_src.size, -1, dtype=np.int64)
    local[rows] = np.arange(rows.size)
    perms = [local[s.sino_src[rows]] for s in symmetries]
    if any(np.any(p < 0) for p in perms):
        raise ValueError("the kept rows are not invariant under the scan's symmetries")
    return perms


def _orbit_basis(perms: list[np.ndarray], psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal orbit sums Σ_g ψ(g) e_{σ_g(o)} of a character ψ, as (index, weight)."""
    targets = np.stack(perms, 1)  # (d, |G|): σ_g(p)
    reps = np.unique(targets.min(1))  # one representative per orbit
    t = targets[reps]
    rows = np.repeat(np.arange(reps.size), len(perms))
    mat = sp.csr_matrix((np.tile(psi.astype(np.float64), reps.size), (rows, t.ravel())),
                        shape=(reps.size, len(perms[0])))
    mat.sum_duplicates()
    mat.eliminate_zeros()
    lengths = np.diff(mat.indptr)
    mat = mat[np.flatnonzero(lengths)]
    norms = np.sqrt(np.asarray(mat.multiply(mat).sum(1)).ravel())
    mat = sp.csr_matrix(sp.diags(1.0 / norms) @ mat)
    width = max(int(np.diff(mat.indptr).max(initial=0)), 1)
    index = np.zeros((mat.shape[0], width), dtype=np.int64)
    weight = np.zeros((mat.shape[0], width))
    counts = np.diff(mat.indptr)
    slot = np.arange(mat.nnz) - np.repeat(mat.indptr[:-1], counts)
    row = np.repeat(np.arange(mat.shape[0]), counts)
    index[row, slot] = mat.indices
    weight[row, slot] = mat.data
    return index, weight


def blocks(symmetries: list[Symmetry], perms: list[np.ndarray]) -> list[Block]:
    """The invariant subspaces of a usable group on a space of permutations ``perms``
    (one per symmetry, same order); their dimensions (2-D copies counted twice) add up to
    the space's."""
    mats = [s.matrix for s in symmetries]
    out = []
    for psi in _characters(mats):
        index, weight = _orbit_basis(perms, psi)
        label = "ψ(" + ",".join("+" if v > 0 else "−" for v in psi) + ")"
        out.append(Block(label, index, weight))
    if len(mats) == 8:  # D4: the 2-D irreducible representation through K and s_d
        k = [i for i, m in enumerate(mats) if m[0, 1] == 0]
        kmats = [mats[i] for i in k]
        mx = _index(kmats, np.array([[-1, 0], [0, 1]]))
        my = _index(kmats, np.array([[1, 0], [0, -1]]))
        chi = next(c for c in _characters(kmats) if c[mx] == 1 and c[my] == -1)
        index, weight = _orbit_basis([perms[i] for i in k], chi)
        sd = perms[_index(mats, np.array([[0, 1], [1, 0]]))]
        out.append(Block("2-D", index, weight, partner=sd[index]))
    size = perms[0].size
    total = sum(b.dim * b.copies for b in out)
    if total != size:
        raise ValueError(f"symmetry blocks span {total} of {size} dimensions")
    return out
