"""The foreign sinogram layouts read by :func:`ctflow.io.hdf5.read_sinogram`: LoDoPaB-style
files (one dataset ``data``, geometry from a preset or a geometry JSON) and DXchange files
(``/exchange/data`` raw counts with flat and dark fields and ``theta``).  The module
docstring of :mod:`ctflow.io.hdf5` states the conventions (the LoDoPaB normalisation
μ_max, the transmission floor, how the unit of ``theta`` is decided).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from ..operators import CTGeometry
from .atomic import one_line
from .hdf5_bounds import declared_dataset, member, read_attr, read_data
from .hdf5_layout import SINOGRAM, VIEWS, SinogramFile, as_3d, check_geometry, check_shape
from .limits import AXIS_LIMITS

LODOPAB_MU_MAX_PER_M = 81.35858
TRANSMISSION_FLOOR = 1e-6


def lodopab_geometry() -> CTGeometry:
    """The LoDoPaB-CT scan geometry (see the module docstring for the numbers)."""
    views = 1000
    angles = (np.arange(views) + 0.5) * np.pi / views
    spec = {"type": "parallel", "image_size": 362, "pixel_size_mm": 260.0 / 362,
            "det_count": 513, "det_spacing_mm": 260.0 * math.sqrt(2.0) / 513,
            "source_origin_mm": None, "origin_det_mm": None}
    return CTGeometry.from_json(json.dumps(spec), angles)


PRESETS = {"lodopab": lodopab_geometry}


def geometry_from_preset(preset: str, views: int, source: str) -> CTGeometry:
    """A geometry from a preset name, a geometry JSON text, or a path to a JSON file.

    JSON without ``angles`` gets ``views`` uniform angles in [0, π) (parallel) or
    [0, 2π) (fan).
    """
    if preset in PRESETS:
        return PRESETS[preset]()
    if views > AXIS_LIMITS["views"]:
        raise InputError(f"{source}: {views} views is outside the supported "
                         f"1–{AXIS_LIMITS['views']}")
    text = preset
    if not preset.lstrip().startswith("{"):
        p = Path(preset)
        if not p.is_file():
            raise InputError(f"{source}: unknown geometry preset {preset!r} (choose "
                             f"{', '.join(PRESETS)}, a geometry JSON text or a .json file)")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{preset}: cannot read geometry JSON ({one_line(exc)})") from exc
    try:
        spec = json.loads(text)
        if not isinstance(spec, dict):
            raise ValueError("not a JSON object")
        angles = spec.pop("angles", None)
        if angles is None:
            full = 2 * np.pi if spec.get("type") == "fan" else np.pi
            angles = np.arange(views) * full / views
        geometry = CTGeometry.from_json(json.dumps(spec), np.asarray(angles, dtype=np.float64))
    except (ValueError, TypeError, RecursionError) as exc:
        raise InputError(f"{source}: invalid geometry preset ({one_line(exc)})") from exc
    check_geometry(geometry, source)
    return geometry


def read_lodopab(f: h5py.File, name: str, preset: str | None) -> SinogramFile:
    if preset is None:
        raise InputError(f"{name}: LoDoPaB-style file (dataset 'data') needs a geometry: "
                         "pass the preset 'lodopab' or a geometry JSON")
    ds = declared_dataset(f, "data", name, SINOGRAM, work=8)
    geometry = geometry_from_preset(preset, ds.shape[-2], name)
    check_shape(ds.shape, geometry, name, "data")
    sino = as_3d(read_data(ds, name), "data", name)
    attrs: dict[str, Any] = {"source": "lodopab"}
    notes = []
    if preset == "lodopab":
        sino = (sino * np.float32(LODOPAB_MU_MAX_PER_M)).astype(np.float32)
        attrs.update(noise_model="poisson", photons=4096.0)
        notes.append(f"data multiplied by mu_max = {LODOPAB_MU_MAX_PER_M} /m "
                     "(LoDoPaB normalisation)")
    return SinogramFile(sino, geometry, None, {}, attrs, layout="lodopab", notes=notes)


def read_dxchange(f: h5py.File, name: str, preset: str | None) -> SinogramFile:
    ex = member(f, "exchange", name)
    # data, then (data − dark)/(white − dark), clip, log in float64, and the float32 result
    data_ds = declared_dataset(ex, "data", name, (("views", "slices", "detectors"),), kinds="fiu",
                        work=8 * 4 + 4)
    views, rows, cols = data_ds.shape
    theta_ds = declared_dataset(ex, "theta", name, VIEWS)
    if theta_ds.shape[0] != views:
        raise InputError(f"{name}: /exchange/theta has {theta_ds.shape[0]} entries, "
                         f"/exchange/data {views} projections")
    white = _field_mean(ex, "data_white", rows, cols, name)
    notes: list[str] = []
    if "data_dark" in ex:
        dark = _field_mean(ex, "data_dark", rows, cols, name)
    else:
        dark = np.zeros((rows, cols))
        notes.append("no /exchange/data_dark: dark field assumed 0")
    theta = read_data(theta_ds, name, np.float64)
    angles, note = _theta_to_radians(theta, read_attr(theta_ds, "units", name))
    notes.append(note)
    denom = white - dark
    if (denom <= 0).any():
        raise InputError(f"{name}: flat field is not above the dark field everywhere")
    if preset is not None:
        geometry = geometry_from_preset(preset, views, name)
        spec = json.loads(geometry.to_json())
    else:
        spec = {"type": "parallel", "image_size": cols, "pixel_size_mm": 1.0,
                "det_count": cols, "det_spacing_mm": 1.0, "source_origin_mm": None,
                "origin_det_mm": None}
        notes.append("no geometry given: parallel beam, 1 mm pixels and detector bins assumed")
    try:
        geometry = CTGeometry.from_json(json.dumps(spec), angles)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{name}: invalid geometry ({one_line(exc)})") from exc
    check_geometry(geometry, name)
    check_shape((rows, views, cols), geometry, name)
    data = read_data(data_ds, name, np.float64)
    transmission = np.clip((data - dark) / denom, TRANSMISSION_FLOOR, None)
    sino = np.ascontiguousarray((-np.log(transmission)).transpose(1, 0, 2), dtype=np.float32)
    return SinogramFile(sino, geometry, None, {}, {"source": "dxchange"}, layout="dxchange",
                        notes=notes)


def _theta_to_radians(theta: np.ndarray, units: Any) -> tuple[np.ndarray, str]:
    """Angles in radians and a note saying which unit was assumed and why."""
    if isinstance(units, bytes):
        units = units.decode("ascii", errors="replace")
    if isinstance(units, str) and units.strip().lower() in ("deg", "degree", "degrees"):
        return np.deg2rad(theta), "theta in degrees (its 'units' attribute)"
    if isinstance(units, str) and units.strip().lower() in ("rad", "radian", "radians"):
        return theta, "theta in radians (its 'units' attribute)"
    peak = float(np.abs(theta).max())
    if peak > 2 * np.pi + 1e-6:
        return np.deg2rad(theta), f"theta assumed in degrees (max |theta| = {peak:g} > 2π)"
    return theta, f"theta assumed in radians (max |theta| = {peak:g} ≤ 2π)"


def _field_mean(ex: h5py.Group, key: str, rows: int, cols: int, name: str) -> np.ndarray:
    """Mean over the frames of a flat or dark field stored as (frames, rows, cols)."""
    ds = declared_dataset(ex, key, name,
                          (("slices", "detectors"), ("frames", "slices", "detectors")),
                          kinds="fiu", work=8)
    if tuple(ds.shape[-2:]) != (rows, cols):
        raise InputError(f"{name}: /exchange/{key} shape {ds.shape} does not match the "
                         f"projections' {rows}×{cols}")
    return read_data(ds, name, np.float64).reshape(-1, rows, cols).mean(0)
