"""Where ``ctflow bench`` gets its problems: procedural phantoms, a DICOM series, an HDF5
sinogram file, or real patients' slices of the licensed real-CT pool (one source per run).

The measurement noise of image i under seed s is drawn with seed ``NOISE_SEED_STRIDE·s + i``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputError
from .tasks import SOLVER_BENCH_TASKS, Problem, get_task, heldout_images

if TYPE_CHECKING:
    from .config import BenchConfig

NOISE_SEED_STRIDE = 100_003


@dataclass(frozen=True)
class BenchTask:
    """A task as the harness sees it: a name, a family and how to build its problems."""

    name: str
    family: str
    description: str


class _Source:
    """Where the ground truths come from; builds the problem of (task, size, image, seed)."""

    kind = "phantoms"

    def __init__(self, config: BenchConfig, sizes: list[int]):
        self.split = config.split
        self.count = config.images
        self.sizes = sizes
        self._images: dict[int, list[np.ndarray]] = {}

    def tasks(self, names: Sequence[str] | None) -> list[BenchTask]:
        names = list(SOLVER_BENCH_TASKS) if names is None else list(names)
        out = []
        for name in names:
            task = get_task(name)
            out.append(BenchTask(task.name, task.family, task.description))
        return out

    def image_count(self, size: int) -> int:
        return len(self.ground_truths(size))

    def ground_truths(self, size: int) -> list[np.ndarray]:
        if size not in self._images:
            self._images[size] = self._load(size)
        return self._images[size]

    def _load(self, size: int) -> list[np.ndarray]:
        return heldout_images(size, self.count, split=self.split)

    def problem(self, task: str, size: int, image: int, seed: int) -> Problem:
        gt = self.ground_truths(size)[image]
        return get_task(task).problem(gt, seed=NOISE_SEED_STRIDE * seed + image)

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "split": self.split}


class _DicomSource(_Source):
    """A DICOM series: its slices (HU, clipped below at −1000 = air) are the ground truths."""

    kind = "dicom"

    def __init__(self, config: BenchConfig, sizes: list[int]):
        super().__init__(config, sizes)
        from ..io.dicom import read_series

        self.path = Path(config.data)
        hu = np.asarray(read_series(self.path).hu, dtype=np.float64)
        if hu.ndim == 2:
            hu = hu[None]
        if hu.ndim != 3 or hu.shape[0] == 0:
            raise InputError(f"{self.path}: expected a series of 2-D slices, got {hu.shape}")
        if not np.isfinite(hu).all():
            raise InputError(f"{self.path}: pixel data contain NaN or Inf")
        self.hu = hu[: self.count]

    def _load(self, size: int) -> list[np.ndarray]:
        return [square_resize(np.maximum(s, -1000.0), size) for s in self.hu]

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.path.name, "sha256": _sha256(self.path)}


class _RealPoolSource(_Source):
    """Real patients' slices of the licensed real-CT pool (ctflow.realct), split by patient:
    ``val`` (the split every default is tuned on; also what ``test`` means here, as the pool
    holds no further patients), ``ood`` (head series) or ``train``; ``images`` slices spread
    evenly over the split, resized to each size."""

    kind = "realct"

    def __init__(self, config: BenchConfig, sizes: list[int]):
        super().__init__(config, sizes)
        from ..realct import SPLITS, realct_dir

        self.split = "val" if config.split == "test" else config.split
        if self.split not in SPLITS:
            raise InputError(f"real-CT split {config.split!r}: choose val, ood or train")
        given = str(config.data)
        self.folder = realct_dir() if given == REALCT else Path(given)

    def _load(self, size: int) -> list[np.ndarray]:
        from ..realct import validation_images

        return [img.astype(np.float64) for img in
                validation_images(size, self.count, self.split, self.folder)]

    def fingerprint(self) -> dict[str, Any]:
        from ..realct import POOL_FILE

        pool = self.folder / POOL_FILE if self.folder.is_dir() else self.folder
        return {"kind": self.kind, "split": self.split, "name": pool.name,
                "sha256": _sha256(pool)}


class _Hdf5Source(_Source):
    """An HDF5 sinogram file with ground truth: its slices with its own geometry."""

    kind = "hdf5"

    def __init__(self, config: BenchConfig, sizes: list[int]):
        super().__init__(config, sizes)
        from ..io.hdf5 import read_sinogram
        from ..operators import make_ct_operator

        self.path = Path(config.data)
        data = read_sinogram(self.path)
        if data.image_hu is None:
            raise InputError(f"{self.path}: has no /image ground truth, which the benchmark "
                             "needs to score reconstructions")
        sino = np.asarray(data.sinogram, dtype=np.float32)
        image = np.asarray(data.image_hu, dtype=np.float64)
        sino = sino[None] if sino.ndim == 2 else sino
        image = image[None] if image.ndim == 2 else image
        if sino.shape[0] != image.shape[0]:
            raise InputError(f"{self.path}: {sino.shape[0]} sinogram slices but "
                             f"{image.shape[0]} ground-truth slices")
        self.op = make_ct_operator(data.geometry)
        if image.shape[1:] != tuple(self.op.in_shape):
            raise InputError(f"{self.path}: /image slices are {image.shape[1:]}, the geometry "
                             f"describes {tuple(self.op.in_shape)} images")
        self.sino = sino[: self.count]
        self.image = image[: self.count]
        noise = dict(getattr(data, "attrs", {}) or {}).get("noise_std")
        self.noise_std = float(noise) if noise is not None else 0.0
        self.name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.path.stem) or "data"
        self.sizes = [int(self.op.in_shape[-1])]

    def tasks(self, names: Sequence[str] | None) -> list[BenchTask]:
        if names:
            raise InputError(f"{self.path}: an HDF5 sinogram file is its own task; "
                             "give no task names with it")
        return [BenchTask(self.name, "ct", f"sinograms of {self.path.name}")]

    def image_count(self, size: int) -> int:
        return self.sino.shape[0]

    def problem(self, task: str, size: int, image: int, seed: int) -> Problem:
        y = torch.from_numpy(self.sino[image].copy())[None, None]
        return Problem(task=task, op=self.op, y=y, gt_hu=self.image[image],
                       noise_std=self.noise_std)

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.path.name, "sha256": _sha256(self.path)}


REALCT = "realct"  # BenchConfig.data naming the shipped real-CT pool


def make_source(config: BenchConfig, sizes: list[int]) -> _Source:
    if config.data is None:
        return _Source(config, sizes)
    if str(config.data) == REALCT or Path(config.data).name == "pool_256.h5":
        return _RealPoolSource(config, sizes)
    path = Path(config.data)
    if path.is_dir():
        return _DicomSource(config, sizes)
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    import h5py

    if h5py.is_hdf5(path):
        return _Hdf5Source(config, sizes)
    raise InputError(f"{path}: neither an HDF5 sinogram file nor a folder with a DICOM series")


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop a 2-D image to a square and resize it (bilinear, anti-aliased) to size²."""
    from skimage.transform import resize

    h, w = image.shape
    n = min(h, w)
    top, left = (h - n) // 2, (w - n) // 2
    crop = image[top:top + n, left:left + n]
    if n == size:
        return crop.astype(np.float64)
    return resize(crop, (size, size), order=1, anti_aliasing=n > size, preserve_range=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
