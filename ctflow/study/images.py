"""The ground-truth HU images of a study, from its data source (loaded once per process).

Sources: ``phantom`` (the procedural phantoms' held-out split), ``dicom`` (a series'
slices, centre-cropped and resized), ``hdf5`` (the ``/image`` slices of a sinogram file,
resized; the file's own sinogram is not used: the study simulates its own acquisitions)
and ``realct`` (the licensed real-CT pool, split by patient; ``ctflow.realct``).  The
phantom, DICOM and real-pool sources are ``ctflow.bench.sources.make_source``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .config import DataSpec

_LOADED: dict[tuple[DataSpec, int], list[np.ndarray]] = {}


def ground_truths(data: DataSpec, size: int) -> list[np.ndarray]:
    """The study's images (float64 HU, size²), at most ``data.images`` of them; cached."""
    key = (data, size)
    if key not in _LOADED:
        images = _load(data, size)
        if not images:
            raise InputError(f"data: the {data.source} source has no images")
        for i, img in enumerate(images):
            if img.shape != (size, size) or not np.isfinite(img).all():
                raise InputError(f"data: image {i} is not a finite {size}x{size} HU array")
        _LOADED.clear()  # one study per process at a time
        _LOADED[key] = images
    return _LOADED[key]


def _load(data: DataSpec, size: int) -> list[np.ndarray]:
    if data.source == "hdf5":
        return _hdf5_images(Path(str(data.path)), data.images, size)
    from ..bench import BenchConfig
    from ..bench.sources import REALCT, make_source

    if data.source == "phantom":
        given = None
    elif data.source == "realct":
        from ..realct import POOL_FILE

        p = Path(data.path) if data.path else None
        given = REALCT if p is None else str(p / POOL_FILE if p.is_dir() else p)
        if p is not None and Path(given).name != POOL_FILE:
            raise InputError(f"data.path: {p.name}: expected the real-CT folder or its "
                             f"{POOL_FILE}")
    else:
        given = str(data.path)
    cfg = BenchConfig(data=given, split=data.split, images=data.images, size=size)
    source = make_source(cfg, [size])
    return [np.asarray(img, dtype=np.float64) for img in source.ground_truths(size)]


def _hdf5_images(path: Path, count: int, size: int) -> list[np.ndarray]:
    from ..bench.sources import square_resize
    from ..io.hdf5 import read_sinogram

    data = read_sinogram(path)
    if data.image_hu is None:
        raise InputError(f"{path}: has no /image ground truth, which a study needs")
    image = np.asarray(data.image_hu, dtype=np.float64)
    image = image[None] if image.ndim == 2 else image
    return [square_resize(np.maximum(s, -1000.0), size) for s in image[:count]]
