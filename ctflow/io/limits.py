"""Plausibility limits for values read from files or given on the command line.

Two kinds of checks, both raising :class:`ctflow.errors.InputError` with one line that
starts with the source (a file name or a CLI flag):

* :func:`check_quantity` — one table (:data:`QUANTITIES`) of generous but physical ranges
  per quantity (μ_water, pixel and detector sizes, source/detector distances, noise
  settings, angles).  A value outside its range, NaN, ±Inf or not a number is refused
  before it can produce an all-Inf or constant image or a misleading solver error.
* :func:`check_shape` and :func:`check_memory` — declared array shapes against sane
  per-axis limits (:data:`AXIS_LIMITS`) and the bytes a read would allocate against a
  memory budget (:data:`MEMORY_FRACTION` of the RAM available now), so a small corrupt
  file that declares a huge array is refused before anything is allocated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Range:
    """A closed interval [lo, hi] with its unit and a short description."""

    lo: float
    hi: float
    unit: str
    what: str


#: Plausible ranges of every physical quantity ctflow reads from a file or a flag.
QUANTITIES: dict[str, Range] = {
    "mu_water_per_mm": Range(0.005, 0.1, "/mm", "linear attenuation of water"),
    "pixel_size_mm": Range(1e-3, 100.0, "mm", "pixel size"),
    "det_spacing_mm": Range(1e-3, 100.0, "mm", "detector bin spacing"),
    "source_origin_mm": Range(1.0, 1e5, "mm", "source-to-centre distance"),
    "origin_det_mm": Range(0.0, 1e5, "mm", "centre-to-detector distance"),
    "slice_spacing_mm": Range(1e-3, 1e3, "mm", "slice spacing"),
    "noise_std": Range(0.0, 1e6, "", "sinogram noise std"),
    "noise": Range(0.0, 100.0, "× RMS", "relative Gaussian noise level"),
    "photons": Range(1.0, 1e15, "photons per ray", "incident photon count"),
    "angle_rad": Range(-1e4, 1e4, "rad", "projection angle"),
}

#: Largest plausible length of each named array axis.
AXIS_LIMITS: dict[str, int] = {
    "slices": 16_384,
    "views": 100_000,
    "detectors": 16_384,
    "image_size": 8_192,
    "frames": 100_000,  # flat/dark-field frames
}

#: A read may allocate at most this fraction of the memory available when it starts.
MEMORY_FRACTION = 0.5


def check_quantity(name: str, value: Any, source: str, label: str | None = None) -> float:
    """``value`` as a float if it is a finite number inside ``QUANTITIES[name]``.

    The error reads "SOURCE: LABEL = VALUE is not a plausible ..." (``label`` defaults to
    ``name``).
    """
    limits = QUANTITIES[name]
    label = name if label is None else label
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"{source}: {label} must be a number, got {_short(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"{source}: {label} must be a finite number, got {_short(value)}")
    if not limits.lo <= number <= limits.hi:
        unit = f" {limits.unit}" if limits.unit else ""
        raise InputError(f"{source}: {label} = {number:g}{unit} is not a plausible "
                         f"{limits.what} (expected {limits.lo:g}–{limits.hi:g}{unit})")
    return number


def check_angles(angles: Any, source: str) -> None:
    """Every angle finite and inside the plausible range (radians)."""
    a = np.asarray(angles, dtype=np.float64)
    if a.size == 0:
        return
    if not np.isfinite(a).all():
        raise InputError(f"{source}: angles contain NaN or Inf")
    worst = a.flat[int(np.argmax(np.abs(a)))]
    check_quantity("angle_rad", worst, source, "angle")


def check_shape(shape: Sequence[int], axes: Sequence[str], label: str, source: str) -> None:
    """Each axis of ``shape`` is >= 1 and within :data:`AXIS_LIMITS` for its name."""
    for n, axis in zip(shape, axes, strict=True):
        if n < 1 or n > AXIS_LIMITS[axis]:
            raise InputError(f"{source}: {label} declares shape {tuple(shape)}: {n} {axis} is "
                             f"outside the supported 1–{AXIS_LIMITS[axis]}")


def available_memory_bytes() -> int | None:
    """RAM this process can still use: MemAvailable, capped by a cgroup limit; None if
    unknown."""
    candidates = [_meminfo_available(), _cgroup_headroom()]
    if candidates[0] is None:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    known = [c for c in candidates if c is not None and c > 0]
    return min(known) if known else None


def check_memory(nbytes: int, label: str, source: str) -> None:
    """Refuse a read that would allocate more than the memory budget."""
    available = available_memory_bytes()
    if available is None:
        return
    budget = int(available * MEMORY_FRACTION)
    if nbytes > budget:
        raise InputError(f"{source}: reading {label} needs {_size(nbytes)}, more than the "
                         f"memory budget {_size(budget)} ({MEMORY_FRACTION:.0%} of the "
                         f"{_size(available)} available)")


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """cgroup v2 memory.max − memory.current of this process's cgroup, if limited."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                folder = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
                limit = (folder / "memory.max").read_text().strip()
                if limit == "max":
                    return None
                return int(limit) - int((folder / "memory.current").read_text())
    except (OSError, ValueError):
        pass
    return None


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1024 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
