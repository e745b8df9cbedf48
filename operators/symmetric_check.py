"""Verification of a cached symmetric-projector entry (``symmetric.SymmetricProjector``):
the group, the space and kept rows, and per block the eigenpairs' dtypes, shapes, order and
position relative to the threshold, checked on every load (``cache.load_or_build``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .svd import TAIL_FLOOR
from .symmetric_group import Block, Symmetry, blocks, space_permutations

SPACES = ("image", "measurement")
FACTOR_NAMES = ("q", "lam", "qt", "lamt")


def factors_problem(arrays: Mapping[str, np.ndarray], symmetries: list[Symmetry],
                    sinogram_shape: tuple[int, int], threshold: float
                    ) -> tuple[str | None, list[Block] | None]:
    """(What is wrong with a cache entry or None, the blocks it was checked against): the
    group, the space, kept rows (sorted, in range, G-invariant), one (q, lam, qt, lamt) per
    block with Q of the block's dimension, finite decreasing λ > 0 on both sides of the
    threshold and above the tail floor."""
    group = np.array([s.matrix.ravel() for s in symmetries], dtype=np.int64)
    fixed = {"group", "space", "rows"}
    if not fixed <= set(arrays) or arrays["group"].shape != group.shape \
            or not np.array_equal(arrays["group"], group):
        return "the symmetry group does not match this geometry", None
    space, rows = arrays["space"], arrays["rows"]
    m = sinogram_shape[0] * sinogram_shape[1]
    if space.shape != (1,) or int(space[0]) not in (0, 1) or rows.dtype != np.int64 \
            or rows.ndim != 1 or (rows.size and (rows[0] < 0 or rows[-1] >= m
                                                 or np.any(np.diff(rows) <= 0))):
        return "space or kept rows invalid", None
    found = blocks(symmetries, space_permutations(symmetries, SPACES[int(space[0])], rows))
    names = fixed | {f"{k}{i}" for i in range(len(found)) for k in FACTOR_NAMES}
    if set(arrays) != names:
        return f"arrays {sorted(set(arrays) ^ names)} missing or unexpected", found
    factors = [{k: arrays[f"{k}{i}"] for k in FACTOR_NAMES} for i in range(len(found))]
    tops = [float(f["lam"][0]) for f in factors if f["lam"].size]
    top2 = max(tops, default=0.0)
    for block, f in zip(found, factors, strict=True):
        problem = _block_problem(block, f, top2, threshold)
        if problem:
            return f"block {block.label}: {problem}", found
    return None, found


def _block_problem(block: Block, f: dict[str, np.ndarray], top2: float,
                   threshold: float) -> str | None:
    for q, lam, label, dtype in (("q", "lam", "kept", np.float32),
                                 ("qt", "lamt", "tail", np.float64)):
        vec, val = f[q], f[lam]
        if vec.dtype != dtype or val.dtype != np.float64:
            return f"{label} factors have dtypes {vec.dtype}, {val.dtype}"
        if vec.ndim != 2 or vec.shape[0] != block.dim or val.shape != (vec.shape[1],):
            return f"{label} factors have shapes {vec.shape}, {val.shape}"
        if not (np.isfinite(vec).all() and np.isfinite(val).all()):
            return f"{label} factors contain NaN or Inf"
        if np.any(val <= 0) or np.any(np.diff(val) > 0):
            return f"{label} eigenvalues are not positive and decreasing"
    if f["lam"].size and f["lam"][-1] <= threshold**2 * top2:
        return "kept eigenvalues below the threshold"
    if f["lamt"].size and (f["lamt"][0] > threshold**2 * top2
                           or f["lamt"][-1] <= TAIL_FLOOR**2 * top2):
        return "tail eigenvalues outside (TAIL_FLOOR, threshold]·σ_max"
    if f["lam"].size + f["lamt"].size > block.dim:
        return "more eigenpairs than the block's dimension"
    return None
