"""The symmetric projector route (operators/symmetric*.py): the symmetrised matrix is
exactly equivariant and close to ASTRA's, its block eigendecomposition reproduces the dense
truncated SVD, the cache round-trips, and the route is chosen only where it applies."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from ctflow.noise import estimate_noise_std
from ctflow.operators import FanBeam2D, ParallelBeam2D, idempotence_error
from ctflow.operators import symmetric as sym_module
from ctflow.operators.astra_backends import system_matrix
from ctflow.operators.cache import cache_dir
from ctflow.operators.symmetric import SymmetricProjector
from ctflow.operators.symmetric_group import (
    blocks,
    group_name,
    space_permutations,
    symmetrised_matrix,
)

pytestmark = pytest.mark.usefixtures("private_cache")

THRESHOLD = 1e-3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _a_s(op) -> np.ndarray:
    return symmetrised_matrix(system_matrix(op.geometry), op.symmetries()).toarray()


@pytest.mark.parametrize("make, group", [
    (lambda: ParallelBeam2D(32, 60), "D4"),
    (lambda: ParallelBeam2D(32, 31), "D2"),
    (lambda: FanBeam2D(32, 60), "D4"),
    (lambda: FanBeam2D(32, 30), "D2"),
])
def test_symmetrised_matrix_is_equivariant_and_close_to_astra(make, group):
    """R_g A_s = A_s C_g to rounding for every g of the scan's group, and A_s is ASTRA's A
    up to its discretisation asymmetry (measured 1.0e-5–2.0e-5 at 32²)."""
    op = make()
    syms = op.symmetries()
    assert group_name(syms) == group
    a = system_matrix(op.geometry)
    a_s = symmetrised_matrix(a, syms)
    assert spla.norm(a_s - a) / spla.norm(a) < 1e-4
    x = np.random.default_rng(0).standard_normal(a.shape[1])
    ax = a_s @ x
    for s in syms:
        lhs = ax[s.sino_src]  # R_g A_s x
        rhs = a_s @ x[s.image_src]  # A_s C_g x
        assert np.abs(lhs - rhs).max() <= 1e-12 * np.abs(ax).max()
    if len(syms) > 1:  # ASTRA's own A is not exactly equivariant (why A_s exists)
        s = syms[1]
        assert np.abs((a @ x)[s.sino_src] - a @ x[s.image_src]).max() > 1e-9


@pytest.mark.parametrize("space", ["image", "measurement"])
def test_blocks_are_orthonormal_and_diagonalise_the_gram_matrix(space):
    """The bases are orthonormal and complete, the Gram matrix has no entries between
    blocks, and the two copies of D4's 2-D representation see the same block."""
    op = ParallelBeam2D(24, 16)
    a_s = symmetrised_matrix(system_matrix(op.geometry), op.symmetries())
    rows = np.flatnonzero(np.diff(a_s.indptr))
    perms = space_permutations(op.symmetries(), space, rows)
    found = blocks(op.symmetries(), perms)
    assert [b.copies for b in found] == [1, 1, 1, 1, 2]
    d = perms[0].size
    bases = [b.matrix(d, partner) for b in found for partner in (False, True)[:b.copies]]
    full = np.hstack([m.toarray() for m in bases])
    assert full.shape == (d, d)
    np.testing.assert_allclose(full.T @ full, np.eye(d), atol=1e-12)
    side = a_s[rows] if space == "image" else a_s[rows].T.tocsr()
    f = side @ full
    gram = f.T @ f
    edges = np.cumsum([0] + [m.shape[1] for m in bases])
    mask = np.ones_like(gram, dtype=bool)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask[lo:hi, lo:hi] = False
    assert np.abs(gram[mask]).max() <= 1e-12 * np.abs(gram).max()
    lo, mid, hi = edges[-3:]
    np.testing.assert_allclose(gram[lo:mid, lo:mid], gram[mid:hi, mid:hi],
                               atol=1e-12 * np.abs(gram).max())


@pytest.mark.parametrize("make", [
    lambda: ParallelBeam2D(32, 20, projection="sym"),  # fewer rays than pixels: ray side
    lambda: ParallelBeam2D(24, 60, projection="sym"),  # more rays: image side
    lambda: FanBeam2D(32, 24, projection="sym"),
], ids=["parallel-rays", "parallel-pixels", "fan"])
def test_projector_and_pseudo_inverse_match_the_dense_truncated_svd(make):
    op = make()
    assert op.projection_method == "sym"
    a = _a_s(op)
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    keep = s > THRESHOLD * s[0]
    v = vt[keep].T
    proj = op.sym()
    assert proj.rank == keep.sum()
    np.testing.assert_allclose(proj.singular_values(), s[keep], rtol=1e-8)
    n = op.geometry.image_size
    x = torch.randn(2, 1, n, n, generator=_gen(0), dtype=torch.float64)
    px = op.projector(x)
    ref = (v @ (v.T @ x.reshape(2, -1).numpy().T)).T.reshape(px.shape)
    assert float(np.linalg.norm(px.numpy() - ref) / np.linalg.norm(ref)) < 1e-5
    assert idempotence_error(op, x) < 1e-5
    assert idempotence_error(op, x.float()) < 1e-5  # float32 images: float64 inside
    z = torch.randn_like(x)
    gap = float((op.projector(z) * x).sum() - (z * px).sum())
    assert abs(gap) < 1e-6 * float(z.norm() * x.norm())  # P is symmetric
    # A_s⁺ y: dense truncated pseudo-inverse, and the normal equations on the row space
    y = torch.randn(1, 1, *op.out_shape, generator=_gen(1), dtype=torch.float64)
    xp = op.pinv(y).reshape(-1).numpy()
    ref_p = v @ ((u[:, keep].T @ y.reshape(-1).numpy()) / s[keep])
    assert np.linalg.norm(xp - ref_p) / np.linalg.norm(ref_p) < 1e-5
    resid = v.T @ (a.T @ (a @ xp - y.reshape(-1).numpy()))  # measured 1.7e-4 at 32², 20 views
    assert np.linalg.norm(resid) < 1e-3 * s[0] * float(y.norm())
    # A_s A_s⁺ y: the orthogonal projection on the range
    fit = proj.range_project(y).reshape(-1).numpy()
    ref_fit = u[:, keep] @ (u[:, keep].T @ y.reshape(-1).numpy())
    assert np.linalg.norm(fit - ref_fit) < 1e-5 * np.linalg.norm(ref_fit)


@pytest.mark.parametrize("rho_rel", [1e-2, 1e-6, 1e-9])
def test_solve_normal_matches_a_dense_solve(rho_rel):
    """(A_sᵀA_s + ρI)⁻¹b over kept, tail and null space, down to ρ far below the discarded
    σ² (the tail's eigenvectors are float64 on the ray side for this)."""
    op = ParallelBeam2D(32, 20, projection="sym")
    a = _a_s(op)
    top2 = np.linalg.norm(a, 2) ** 2
    rho = rho_rel * top2
    b = torch.randn(1, 1, 32, 32, generator=_gen(2), dtype=torch.float64)
    got = op.solve_normal(b, rho).reshape(-1).numpy()
    ref = np.linalg.solve(a.T @ a + rho * np.eye(a.shape[1]), b.reshape(-1).numpy())
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
    one_pass = op.projected_solve_normal(b, rho)
    assert float((one_pass - op.projector(torch.from_numpy(ref).reshape(b.shape))).norm()
                 / one_pass.norm()) < 1e-5


def test_sym_route_agrees_with_the_svd_route_of_astras_matrix():
    """A_s and A differ by ~1e-5: the same rank and nearly the same projector (measured
    3e-4 at 64²) and pseudo-inverse."""
    sym, svd = ParallelBeam2D(32, 20, projection="sym"), ParallelBeam2D(32, 20, projection="svd")
    assert abs(sym.sym().rank - svd.svd().rank) <= 2
    x = torch.randn(1, 1, 32, 32, generator=_gen(3), dtype=torch.float64)
    ps, pv = sym.projector(x), svd.projector(x)
    assert float((ps - pv).norm() / pv.norm()) < 1e-2
    y = svd(x)
    assert float((sym.pinv(y) - svd.pinv(y)).norm() / svd.pinv(y).norm()) < 1e-2


def test_cache_round_trip_and_a_bad_entry_is_rebuilt(monkeypatch, caplog):
    before = set(cache_dir().glob("sym-*.npz"))
    op = FanBeam2D(24, 20, projection="sym")
    x = torch.randn(1, 1, 24, 24, generator=_gen(4), dtype=torch.float64)
    px = op.projector(x)
    files = sorted(set(cache_dir().glob("sym-*.npz")) - before)
    assert len(files) == 1 and not list(cache_dir().glob("*.tmp"))
    real = SymmetricProjector.compute
    monkeypatch.setattr(SymmetricProjector, "compute",
                        classmethod(lambda *a, **k: pytest.fail("recomputed")))
    again = FanBeam2D(24, 20, projection="sym")
    assert torch.equal(again.projector(x), px)
    # tamper: a kept eigenvalue below the cut, checksum made consistent -> "corrupt"
    from ctflow.operators.cache import read_entry, write_entry

    header, arrays = read_entry(files[0])
    arrays["lam0"] = arrays["lam0"].copy()
    arrays["lam0"][-1] = 1e-12
    write_entry(files[0], header["kind"], header["key"], header["description"],
                header["version"], arrays)
    monkeypatch.setattr(SymmetricProjector, "compute", real)
    with caplog.at_level(logging.WARNING):
        third = FanBeam2D(24, 20, projection="sym")
        assert torch.allclose(third.projector(x), px, atol=1e-12)
    assert "corrupt" in caplog.text and "below the threshold" in caplog.text


def test_route_selection(caplog):
    """auto: sym wherever the views have D4 or a Klein group (any size: nothing above 128²
    lacks an exact projector); limited-angle scans fall back (svd ≤ 128², else cg) and an
    explicit 'sym' says so; masked-detector operators keep their own svd."""
    from ctflow.consistency import MaskedParallelBeam2D

    assert ParallelBeam2D(256, 60).projection_method == "sym"
    assert ParallelBeam2D(512, 60).projection_method == "sym"
    assert FanBeam2D(256, 60).projection_method == "sym"
    assert ParallelBeam2D(256, 60, projection="svd").projection_method == "svd"
    limited = np.linspace(0, 2 * np.pi / 3, 40, endpoint=False)
    assert group_name(ParallelBeam2D(32, limited).symmetries()) == "order 2"
    assert ParallelBeam2D(32, limited).projection_method == "svd"
    assert ParallelBeam2D(256, limited).projection_method == "cg"
    with caplog.at_level(logging.WARNING):
        assert ParallelBeam2D(32, limited, projection="sym").projection_method == "svd"
    assert "no usable grid symmetry" in caplog.text
    assert group_name(FanBeam2D(32, 31).symmetries()) == "order 2"  # odd fan: mirror only
    masked = MaskedParallelBeam2D.from_geometry(ParallelBeam2D(32, 20).geometry)
    masked.keep_detectors = np.ones(masked.geometry.det_count, dtype=bool)
    assert masked.projection_method == "svd"


def test_noise_estimate_uses_the_range_residual_on_the_sym_route():
    """The range-residual estimator (rank from the symmetric blocks) reads noiseless data as
    noiseless and recovers white noise of known σ within 10 %."""
    op = ParallelBeam2D(32, 60, projection="sym")
    x = torch.rand(1, 1, 32, 32, generator=_gen(5), dtype=torch.float64) * 0.02
    y = op(x)
    est = estimate_noise_std(y, op)
    assert est.method == "range residual" and est.sigma == 0.0
    sigma = 1e-2
    noisy = y + sigma * torch.randn(y.shape, generator=_gen(6), dtype=torch.float64)
    est = estimate_noise_std(noisy, op)
    assert est.method == "range residual"
    assert abs(est.sigma / sigma - 1) < 0.1


def test_float32_factors_converted_in_chunks_give_the_same_result(monkeypatch):
    """Large factors are converted to float64 per call, COLUMN_CHUNK columns at a time;
    small ones once: the results agree."""
    x = torch.randn(1, 1, 32, 32, generator=_gen(7), dtype=torch.float64)
    whole = ParallelBeam2D(32, 20, projection="sym")
    assert whole.projector(x) is not None
    assert whole.sym()._copies[torch.device("cpu")]["factors"][0]["q"].dtype == torch.float64
    monkeypatch.setattr(sym_module, "COLUMN_CHUNK", 7)
    monkeypatch.setattr(sym_module, "FLOAT64_COPY_MAX_BYTES", 0)
    chunked = ParallelBeam2D(32, 20, projection="sym")
    got = chunked.projector(x)
    assert chunked.sym()._copies[torch.device("cpu")]["factors"][0]["q"].dtype == torch.float32
    assert torch.allclose(got, whole.projector(x), atol=1e-12)


def test_warm_projector_leaves_nothing_to_build_for_the_sym_route():
    """bench.warm_projector builds the factors and their device copies: P, A⁺ and the
    normal-equation solve afterwards add none (nothing of the set-up is timed)."""
    from ctflow.bench import warm_projector

    op = ParallelBeam2D(16, 12)
    assert op.projection_method == "sym"
    warm_projector(op)
    copies = set(op.sym()._copies)
    assert copies == {torch.device("cpu")}
    x = torch.rand(2, 1, 16, 16)
    y = op(x)
    op.projector(x), op.pinv(y), op.solve_normal(op.adjoint(y), 0.1)
    assert set(op.sym()._copies) == copies and op._svd is None


def test_eigh_on_a_torch_device_gives_the_same_projector():
    """The build's dense blocks through torch.linalg.eigh (what a GPU runs; here on the CPU)
    give the projector and pseudo-inverse of scipy's eigh up to the float32 factors."""
    op = ParallelBeam2D(32, 20)
    g = op.geometry
    args = (system_matrix(g), op.symmetries(), op.svd_threshold, g.sinogram_shape,
            op._apply, op._apply_adjoint)
    host = SymmetricProjector.compute(*args)
    device = SymmetricProjector.compute(*args, eigh_device="cpu")
    assert device.rank == host.rank
    x = torch.randn(2, 1, 32, 32, generator=_gen(7), dtype=torch.float64)
    px, pd = host.project(x), device.project(x)
    assert float((px - pd).norm() / px.norm()) < 1e-6
    y = op(x)
    ax, ad = host.pinv(y), device.pinv(y)
    assert float((ax - ad).norm() / ax.norm()) < 1e-5
