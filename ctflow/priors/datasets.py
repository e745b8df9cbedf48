"""Training images for flow priors: phantoms, a folder of DICOM CT, HDF5 image files, or the
licensed real-CT pool split by patient (``realct``: augmented multi-scale crops).

Every source returns an image pool, a float32 tensor (N, 1, S, S) in the prior's model
space x = HU/1000 (air −1, water 0), HU clipped to [−1024, 3071].  Non-square slices are
centre-cropped to a square and resized to S×S with anti-aliasing (scikit-image).  The pool
is held in memory: training then draws random batches from it at no I/O cost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

HU_MIN, HU_MAX = -1024.0, 3071.0
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def hu_to_model(hu: np.ndarray | torch.Tensor) -> torch.Tensor:
    """x = clip(HU, −1024, 3071)/1000 as float32 tensor."""
    t = torch.as_tensor(np.asarray(hu, dtype=np.float32))
    return t.clamp(HU_MIN, HU_MAX) / 1000.0


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop a 2-D HU image to a square, then resize it to size×size (anti-aliased)."""
    from skimage.transform import resize

    h, w = image.shape
    n = min(h, w)
    top, left = (h - n) // 2, (w - n) // 2
    square = np.asarray(image[top:top + n, left:left + n], dtype=np.float32)
    if n == size:
        return square
    return resize(square, (size, size), order=1, anti_aliasing=n > size,
                  preserve_range=True).astype(np.float32)


def _stack(images: Iterable[np.ndarray], size: int, origin: str) -> torch.Tensor:
    pool = [hu_to_model(fit_square(im, size)) for im in images]
    if not pool:
        raise InputError(f"{origin}: no training images found")
    out = torch.stack(pool)[:, None]
    if not bool(torch.isfinite(out).all()):
        raise InputError(f"{origin}: images contain NaN or Inf")
    return out


def phantom_pool(size: int, length: int, split: str = "train", progress: bool = False,
                 cache: str | os.PathLike | None = None) -> torch.Tensor:
    """``length`` phantoms of ``ctflow.phantoms`` split ``split`` (deterministic seeds).

    With ``cache`` (an .npy path) the pool is generated once and read back afterwards.
    """
    from tqdm import tqdm

    from ..phantoms import PHANTOM_VERSION, PhantomDataset

    if cache is not None and Path(cache).is_file():
        arr = np.load(cache)
        if arr.shape == (length, 1, size, size):
            return torch.from_numpy(arr)
    ds = PhantomDataset.split(split, size, length)
    items = (ds[i][0].numpy() for i in range(length))
    items = tqdm(items, total=length, desc=f"phantoms {split} {size}²", disable=not progress)
    pool = _stack(items, size, f"phantoms v{PHANTOM_VERSION}")
    if cache is not None:
        from ..io.atomic import atomic_file

        cache = Path(cache)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cache, overwrite=True) as tmp, open(tmp, "wb") as fh:
            np.save(fh, pool.numpy())
    return pool


def _dicom_slices(folder: Path) -> Iterable[np.ndarray]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError):
            continue  # not a DICOM file (DICOMDIR-less folders often hold other files)
        if "PixelData" not in ds or ds.get("Modality", "CT") != "CT":
            continue
        try:
            arr = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        except Exception as exc:  # pixel decoding errors vary by transfer syntax
            raise InputError(f"{path}: cannot decode DICOM pixel data ({exc})") from exc
        if arr.ndim == 2:
            yield arr
        elif arr.ndim == 3:  # multi-frame
            yield from arr


def dicom_pool(folder: str | os.PathLike, size: int) -> torch.Tensor:
    """Every CT image slice under ``folder`` (recursively), in HU via the modality LUT."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder of DICOM files")
    return _stack(_dicom_slices(root), size, str(root))


def _hdf5_slices(files: list[Path]) -> Iterable[np.ndarray]:
    import h5py

    for path in files:
        try:
            with h5py.File(path, "r") as fh:
                if "image" not in fh:
                    raise InputError(f"{path}: no /image dataset (HU images) in the file")
                arr = np.asarray(fh["image"][()], dtype=np.float32)
        except OSError as exc:
            raise InputError(f"{path}: not a readable HDF5 file ({exc})") from exc
        if arr.ndim == 2:
            yield arr
        elif arr.ndim == 3:
            yield from arr
        else:
            raise InputError(f"{path}: /image must be (H, W) or (slices, H, W), got {arr.shape}")


def hdf5_pool(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Images of the ``/image`` dataset (HU) of one HDF5 file or of every .h5 in a folder."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in HDF5_SUFFIXES)
    elif root.is_file():
        files = [root]
    else:
        raise InputError(f"{root}: no such HDF5 file or folder")
    return _stack(_hdf5_slices(files), size, str(root))


SOURCES = ("phantoms", "dicom", "hdf5", "realct")


def realct_pool(size: int, length: int, split: str = "train", path: str | None = None,
                seed: int = 0, min_crop: int = 64) -> torch.Tensor:
    """``length`` augmented crops (ctflow.realct.training_patches, sides from ``min_crop``
    pool pixels to the whole slice) of the real-CT slices of ``split`` (patients of the
    training split only, for training), in model space."""
    from ..realct import pool_slices, training_patches

    slices = pool_slices(split, path)
    patches = training_patches(slices, size, length, seed=seed, min_crop=min_crop)
    return hu_to_model(patches)[:, None]


def load_pool(source: str, size: int, length: int = 0, path: str | None = None,
              progress: bool = False, cache: str | os.PathLike | None = None,
              seed: int = 0, min_crop: int = 64) -> torch.Tensor:
    """The training pool of ``source`` ∈ SOURCES (``min_crop``: realct only)."""
    if source == "realct":
        if length <= 0:
            raise InputError("the realct source needs a positive pool size")
        return realct_pool(size, length, "train", path, seed, min_crop)
    if source == "phantoms":
        if length <= 0:
            raise InputError("the phantom source needs a positive pool size")
        return phantom_pool(size, length, "train", progress=progress, cache=cache)
    if path is None:
        raise InputError(f"the {source!r} source needs a data path")
    if source == "dicom":
        return dicom_pool(path, size)
    if source == "hdf5":
        return hdf5_pool(path, size)
    raise InputError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")


def random_shift(batch: torch.Tensor, max_shift: int, generator: torch.Generator,
                 fill: float = -1.0) -> torch.Tensor:
    """Translate each image by integer (dy, dx) ∈ [−max_shift, max_shift]², filling with air."""
    if max_shift <= 0:
        return batch
    b, _, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, [max_shift] * 4, value=fill)
    offs = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                        for i, (dy, dx) in enumerate(offs.tolist())])
