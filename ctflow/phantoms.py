"""Procedural anatomical CT phantoms: 2D axial slices in Hounsfield units (HU).

Geometry.  An image of ``size`` × ``size`` pixels covers the fixed square field of view
[−1, 1]² in normalised coordinates (x to the image right = patient left, radiological
convention; y down = posterior).  The body (or head) outline is a randomly deformed
ellipse filling ≈ 75–90 % of the width; outside it every pixel is exactly −1000 HU.

Rendering.  Every structure is an analytic shape (a rotated ellipse whose radius is
modulated by a few harmonics, r(θ) = 1 + Σ_k a_k cos(kθ + φ_k)), painted in a fixed
order onto a supersampled grid of R = s·size pixels (s ≥ 2) and area-averaged:

    HU(pixel) = (1/s²) Σ_{sub-pixels} HU(sub-pixel centre),

so small sizes are anti-aliased and one seed gives the same anatomy at every size.
Soft-tissue texture is band-limited noise (a seeded Gaussian-smoothed lattice on the
field of view, bilinearly interpolated) scaled per tissue: a few HU in soft tissue,
tens of HU in lung and bone.

Randomness.  All variation (organ shapes, sizes, positions, lesion count/positions/
contrast, texture) is drawn from ``numpy.random.default_rng(seed)`` in an order that does
not depend on ``size``.  Data splits use disjoint seed ranges (:data:`SPLIT_SEEDS`).

Modules.  This one holds the tissue table, the public API and the dataset; the anatomy of
each kind is drawn by :mod:`ctflow.phantoms_anatomy` with the primitives of
:mod:`ctflow.phantom_shapes`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import InputError
from .io.atomic import atomic_file
from .phantom_shapes import Canvas, supersampling, texture
from .phantoms_anatomy import render_abdomen, render_chest, render_head

KINDS = ("chest", "abdomen", "head")
SPLIT_SEEDS = {"train": 0, "val": 10_000_000, "test": 20_000_000}
SPLIT_STRIDE = 10_000_000  # seeds of one split: SPLIT_SEEDS[name] + [0, SPLIT_STRIDE)
PHANTOM_VERSION = 1  # bump when the distribution changes (invalidates caches)

# Tissue labels of :func:`phantom_labels` (the label of each pixel's central sub-sample).
LABELS = {
    "background": 0, "air": 1, "skin": 2, "fat": 3, "muscle": 4, "lung": 5, "blood": 6,
    "liver": 7, "spleen": 8, "kidney": 9, "bowel": 10, "stomach": 11, "cortical_bone": 12,
    "marrow": 13, "csf": 14, "grey_matter": 15, "white_matter": 16, "lesion": 17,
    "soft_tissue": 18,
}

# Texture amplitude (HU per unit of the normalised noise field) for each label.
_TEXTURE_AMP = np.zeros(len(LABELS), np.float32)
for _name, _amp in {
    "skin": 4.0, "fat": 7.0, "muscle": 6.0, "lung": 22.0, "blood": 4.0, "liver": 6.0,
    "spleen": 5.0, "kidney": 5.0, "bowel": 6.0, "stomach": 5.0, "cortical_bone": 70.0,
    "marrow": 45.0, "csf": 1.5, "grey_matter": 2.0, "white_matter": 2.0, "lesion": 4.0,
    "soft_tissue": 5.0,
}.items():
    _TEXTURE_AMP[LABELS[_name]] = _amp


_RENDER = {"chest": render_chest, "abdomen": render_abdomen, "head": render_head}


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------


def _check(kind: str, size: int, seed: int) -> None:
    if kind not in _RENDER:
        raise InputError(f"unknown phantom kind {kind!r}; choose one of {KINDS}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise InputError(f"phantom size must be an integer >= 8, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"phantom seed must be a non-negative integer, got {seed!r}")


def phantom_labels(kind: str = "chest", size: int = 128, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """HU image (float32, area-averaged) and tissue labels (uint8, see :data:`LABELS`; the
    label of each pixel's central sub-sample) of one procedural slice."""
    _check(kind, size, seed)
    size = int(size)
    s = supersampling(size)
    rng = np.random.default_rng(int(seed))
    cv = Canvas(size * s, LABELS)
    _RENDER[kind](cv, rng)
    cv.hu += _TEXTURE_AMP[cv.lab] * rng.uniform(0.7, 1.3) * texture(rng, cv.res)
    hu = cv.hu.reshape(size, s, size, s).mean(axis=(1, 3), dtype=np.float32)
    return hu.astype(np.float32), cv.lab[s // 2::s, s // 2::s].copy()


def phantom(kind: str = "chest", size: int = 128, seed: int = 0) -> np.ndarray:
    """A procedural axial CT slice of ``kind`` ("chest", "abdomen", "head") in HU,
    float32 (size, size); deterministic in ``seed``, same anatomy at every size."""
    return phantom_labels(kind, size, seed)[0]


def kind_for_seed(seed: int, kinds: Sequence[str] = KINDS) -> str:
    """The phantom kind of ``seed``: uniform over ``kinds``, drawn from
    default_rng((seed, 1)) (independent of the anatomy stream default_rng(seed))."""
    return kinds[int(np.random.default_rng((int(seed), 1)).integers(len(kinds)))]


def random_phantom(size: int, seed: int, kinds: Sequence[str] = KINDS) -> np.ndarray:
    """``phantom(kind_for_seed(seed, kinds), size, seed)``."""
    _check(kinds[0] if kinds else "", size, seed)
    return phantom(kind_for_seed(seed, kinds), size, seed)


class PhantomDataset(Dataset):
    """Phantoms generated on the fly: item i is ``random_phantom(size, seed + i, kinds)`` as
    a (1, size, size) float32 tensor in HU.

    Splits use disjoint seed ranges: split ``name`` has seeds SPLIT_SEEDS[name] + i,
    0 ≤ i < SPLIT_STRIDE (10⁷).  With ``cache_dir`` each item is stored once as an .npy
    file (written to a temporary name, then renamed) and read back afterwards.
    """

    def __init__(self, size: int, length: int, seed: int = 0,
                 kinds: Sequence[str] = KINDS, cache_dir: str | os.PathLike | None = None):
        kinds = tuple(kinds)
        if not kinds or any(k not in _RENDER for k in kinds):
            raise InputError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
        _check(kinds[0], size, seed)
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise InputError(f"dataset length must be a non-negative integer, got {length!r}")
        self.size, self.length, self.seed, self.kinds = int(size), int(length), int(seed), kinds
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        if self.cache_dir is not None:
            os.makedirs(self.cache_dir, exist_ok=True)

    @classmethod
    def split(cls, name: str, size: int, length: int, **kw) -> PhantomDataset:
        """The dataset of split ``name`` ("train", "val", "test")."""
        if name not in SPLIT_SEEDS:
            raise InputError(f"unknown split {name!r}; choose one of {tuple(SPLIT_SEEDS)}")
        if length > SPLIT_STRIDE:
            raise InputError(f"a split holds at most {SPLIT_STRIDE} items, got {length}")
        return cls(size, length, seed=SPLIT_SEEDS[name], **kw)

    def __len__(self) -> int:
        return self.length

    def seed_of(self, index: int) -> int:
        """The phantom seed of item ``index`` (negative indices count from the end)."""
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index out of range for PhantomDataset of length {self.length}")
        return self.seed + index

    def _cache_path(self, seed: int) -> str:
        kinds = "-".join(self.kinds)
        return os.path.join(self.cache_dir or "",
                            f"phantom_v{PHANTOM_VERSION}_{kinds}_{self.size}_{seed}.npy")

    def __getitem__(self, index: int) -> torch.Tensor:
        seed = self.seed_of(int(index))
        if self.cache_dir is None:
            img = random_phantom(self.size, seed, self.kinds)
        else:
            path = self._cache_path(seed)
            if os.path.exists(path):
                img = np.load(path)
            else:
                img = random_phantom(self.size, seed, self.kinds)
                # overwrite: another worker may have stored the same item meanwhile
                with atomic_file(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, img)
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]
