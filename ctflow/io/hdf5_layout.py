"""What the HDF5 layouts of :mod:`ctflow.io.hdf5` share: the file contents
(:class:`SinogramFile`, :class:`ReconstructionFile`), the declared axis names of their
datasets, and the checks of a geometry and of a sinogram shape against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..operators import CTGeometry
from .limits import AXIS_LIMITS, check_angles, check_quantity

# Declared axis names of the datasets (per-axis limits: ctflow.io.limits.AXIS_LIMITS).
VIEWS = (("views",),)
SINOGRAM = (("views", "detectors"), ("slices", "views", "detectors"))
IMAGE = (("image_size", "image_size"), ("slices", "image_size", "image_size"))


@dataclass
class SinogramFile:
    """The content of a sinogram file; ``sinogram`` is float32 (slices, views, det)."""

    sinogram: np.ndarray
    geometry: CTGeometry
    image_hu: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    layout: str = "ctflow-v1"  # "ctflow-v1" | "lodopab" | "dxchange"
    notes: list[str] = field(default_factory=list)


@dataclass
class ReconstructionFile:
    """A reconstruction: ``image_hu`` float32 (slices, H, W) with its geometry."""

    image_hu: np.ndarray
    geometry: CTGeometry
    metadata: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def check_geometry(geometry: CTGeometry, source: str) -> None:
    """Sizes within the supported limits and every physical value plausible
    (:mod:`ctflow.io.limits`)."""
    for key, axis in (("image_size", "image_size"), ("det_count", "detectors")):
        value = int(getattr(geometry, key))
        if value > AXIS_LIMITS[axis]:
            raise InputError(f"{source}: geometry {key} = {value} is outside the supported "
                             f"1–{AXIS_LIMITS[axis]}")
    keys = ["pixel_size_mm", "det_spacing_mm"]
    if geometry.type == "fan":
        keys += ["source_origin_mm", "origin_det_mm"]
    for key in keys:
        check_quantity(key, getattr(geometry, key), source, f"geometry {key}")
    if geometry.num_views > AXIS_LIMITS["views"]:
        raise InputError(f"{source}: {geometry.num_views} views is outside the supported "
                         f"1–{AXIS_LIMITS['views']}")
    check_angles(geometry.angles, source)


def check_shape(shape: tuple[int, ...], geometry: CTGeometry, name: str,
                what: str = "sinogram") -> None:
    """InputError unless the last two axes of ``shape`` are the geometry's (views, det)."""
    expected = tuple(int(n) for n in geometry.sinogram_shape)
    if tuple(shape[-2:]) != expected:
        raise InputError(f"{name}: {what} shape {tuple(shape)} does not match the geometry "
                         f"(views, det) = {expected}")


def as_3d(a: np.ndarray, what: str, source: str) -> np.ndarray:
    """``a`` as (slices, rows, cols): a 2-D array is one slice; InputError otherwise."""
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise InputError(f"{source}: {what} must be 2-D or 3-D, got shape {a.shape}")
    return a
