"""Sinogram files in HDF5: the ctflow version-1 layout, LoDoPaB-style and DXchange files.

ctflow version 1 (DESIGN §3), written by :func:`write_sinogram`:

* ``/sinogram``  float32 ``(slices, views, det)`` (``(views, det)`` is read as one slice),
  post-log line integrals
* ``/angles``    float64 radians, one per view
* root attrs     ``ctflow_format = 1``, ``geometry`` = JSON of the CT geometry (no angles),
  plus pass-through attrs (``noise_model``, ``photons``, ``noise``, ``noise_std``, ``seed``…)
* ``/image``     optional ground truth, float32 HU ``(slices, H, W)``
* ``/metadata``  optional group whose attrs are patient/study pass-through strings/numbers

Reconstructions (:func:`write_reconstruction`) use the same root attrs with
``content = "reconstruction"`` and hold ``/image`` (HU) instead of ``/sinogram``.

LoDoPaB-style files hold one dataset ``data`` ``(slices, views, det)`` and need a geometry
(``preset="lodopab"`` or a geometry JSON).  The ``lodopab`` preset follows the LoDoPaB-CT
set-up: parallel beam, 1000 views at angles (i + ½)·π/1000, a 260 mm × 260 mm field of
view on 362² pixels (0.7182 mm), 513 detector bins spanning the field's diagonal
(260·√2/513 = 0.7168 mm).  LoDoPaB stores line integrals of μ/μ_max over metres with
μ_max = 81.35858 /m, so the data are multiplied by μ_max to give unitless line integrals.

DXchange files: ``/exchange/data`` (views, rows, cols) raw counts with ``data_white``
and ``data_dark`` (flat and dark fields, averaged over their first axis) and ``theta``;
the sinogram is −log((data − dark)/(white − dark)) with the transmission clamped to
[1e-6, ∞), one slice per detector row.  ``theta`` is taken in the unit named by its
``units`` attribute; without one it is assumed to be in degrees when max |θ| > 2π and in
radians otherwise — the assumption is recorded in ``SinogramFile.notes``.  Without a
preset the geometry is parallel beam, image size = detector count, 1 mm pixels and bins.

Every failure raises :class:`ctflow.errors.InputError` with a one-line message that starts
with the file name.  Reading is bounded at every step:

* the HDF5 library can crash or loop for ever on some corrupt files, so each file's
  metadata is first walked in a child process with a no-progress timeout
  (:func:`probe_in_child`, :mod:`ctflow.io.probe`): "FILE: corrupt HDF5 file (...)";
* attributes are read only after their type, element count and storage size were checked
  with the low-level API (:func:`read_attr`, at most ``MAX_ATTR_BYTES``);
* datasets are read only after their dtype, rank, declared shape (per-axis limits of
  :mod:`ctflow.io.limits`), storage (the data must be in this file — not behind soft or
  external links, not in external raw files or virtual datasets — inside it, and
  completely written: every chunk stored) and the memory the read needs (against the RAM
  available) were checked, and the sinogram's shape was checked against the angles and
  the geometry;
* every physical value read — geometry sizes and distances, angles, the root attributes
  ``mu_water_per_mm``, ``noise_std``, ``noise``, ``photons`` and ``/metadata``
  ``SliceSpacingMM`` — must be inside its plausible range
  (:func:`ctflow.io.limits.check_quantity`).

Writes are atomic (:mod:`ctflow.io.atomic`).
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from ..operators import CTGeometry
from .atomic import atomic_file, one_line
from .hdf5_bounds import all_attrs, declared_dataset, member, plain, read_attr, read_data
from .limits import AXIS_LIMITS, check_angles, check_quantity
from .probe import run_in_child, walk_hdf5

FORMAT_VERSION = 1
#: What the readers open by name; the probe opens them too (name lookups and iteration take
#: different code paths in the HDF5 library).
READER_PATHS = ("sinogram", "angles", "image", "metadata", "data", "exchange",
                "exchange/data", "exchange/data_white", "exchange/data_dark", "exchange/theta")
READER_ATTRS = ("ctflow_format", "content", "geometry", "units")
LODOPAB_MU_MAX_PER_M = 81.35858
TRANSMISSION_FLOOR = 1e-6


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


# --------------------------------------------------------------------------------- presets
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


# ---------------------------------------------------------------------------------- writing
def write_sinogram(path: str | os.PathLike[str], data: SinogramFile,
                   overwrite: bool = False) -> Path:
    """Write ``data`` in the version-1 layout, atomically; returns the path written."""
    sino = _as_3d(np.asarray(data.sinogram), "sinogram", str(path))
    if sino.shape[1:] != tuple(data.geometry.sinogram_shape):
        raise InputError(f"{path}: sinogram shape {sino.shape} does not match the geometry "
                         f"(views, det) = {tuple(data.geometry.sinogram_shape)}")
    with atomic_file(path, overwrite) as tmp, h5py.File(tmp, "w") as f:
        _write_common(f, data.geometry, data.metadata, data.attrs)
        f.create_dataset("sinogram", data=sino.astype(np.float32, copy=False))
        if data.image_hu is not None:
            f.create_dataset("image", data=_as_3d(np.asarray(data.image_hu), "image",
                                                  str(path)).astype(np.float32, copy=False))
            f["image"].attrs["units"] = "HU"
    return Path(path)


def write_reconstruction(path: str | os.PathLike[str], rec: ReconstructionFile,
                         overwrite: bool = False) -> Path:
    """Write a reconstruction (``/image`` in HU, geometry, metadata, attrs), atomically."""
    image = _as_3d(np.asarray(rec.image_hu), "image", str(path))
    with atomic_file(path, overwrite) as tmp, h5py.File(tmp, "w") as f:
        _write_common(f, rec.geometry, rec.metadata, {**rec.attrs, "content": "reconstruction"})
        f.create_dataset("image", data=image.astype(np.float32, copy=False))
        f["image"].attrs["units"] = "HU"
    return Path(path)


def _write_common(f: h5py.File, geometry: CTGeometry, metadata: dict[str, Any],
                  attrs: dict[str, Any]) -> None:
    f.attrs["ctflow_format"] = FORMAT_VERSION
    f.attrs["geometry"] = geometry.to_json()
    for key, value in attrs.items():
        if value is not None and key not in ("ctflow_format", "geometry"):
            f.attrs[key] = value
    f.create_dataset("angles", data=np.asarray(geometry.angles, dtype=np.float64))
    group = f.create_group("metadata")
    for key, value in metadata.items():
        if value is not None:
            group.attrs[key] = value


def _as_3d(a: np.ndarray, what: str, source: str) -> np.ndarray:
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise InputError(f"{source}: {what} must be 2-D or 3-D, got shape {a.shape}")
    return a


# ---------------------------------------------------------------------------------- reading
def read_sinogram(path: str | os.PathLike[str], preset: str | None = None) -> SinogramFile:
    """Read a ctflow v1, LoDoPaB-style (needs ``preset``) or DXchange sinogram file."""
    name = str(path)
    with _open(path) as f:
        layout = _layout(f, name)
        if layout == "ctflow-v1":
            return _read_v1(f, name)
        if layout == "lodopab":
            return _read_lodopab(f, name, preset)
        return _read_dxchange(f, name, preset)


def read_reconstruction(path: str | os.PathLike[str]) -> ReconstructionFile:
    """Read a file written by :func:`write_reconstruction`."""
    name = str(path)
    with _open(path) as f:
        if _layout(f, name) != "ctflow-v1" or read_attr(f, "content", name) != "reconstruction":
            raise InputError(f"{name}: not a ctflow reconstruction file")
        angles = read_data(declared_dataset(f, "angles", name, VIEWS), name, np.float64)
        geometry = _geometry(f, name, angles)
        size = geometry.image_size
        ds = declared_dataset(f, "image", name, IMAGE)
        if tuple(ds.shape[-2:]) != (size, size):
            raise InputError(f"{name}: /image shape {ds.shape} does not match the geometry "
                             f"image size {size}")
        image = _as_3d(read_data(ds, name), "image", name)
        return ReconstructionFile(image, geometry, _metadata(f, name), _attrs(f, name))


def file_kind(path: str | os.PathLike[str]) -> str:
    """'sinogram' or 'reconstruction' for a ctflow file, else the foreign layout name."""
    name = str(path)
    with _open(path) as f:
        layout = _layout(f, name)
        if layout == "ctflow-v1" and read_attr(f, "content", name) == "reconstruction":
            return "reconstruction"
        return "sinogram" if layout == "ctflow-v1" else layout


class _open:
    """Open an HDF5 file for reading after a probe in a child process
    (:func:`probe_in_child`); every failure inside becomes a one-line InputError."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.name = str(path)
        self.file: h5py.File | None = None

    def __enter__(self) -> h5py.File:
        p = self.path
        if not p.exists():
            raise InputError(f"{self.name}: no such file")
        if p.is_dir():
            raise InputError(f"{self.name}: is a folder, expected an HDF5 file")
        if not p.is_file():  # a FIFO or a device would block or never end
            raise InputError(f"{self.name}: not a regular file, expected an HDF5 file")
        try:
            is_hdf5 = h5py.is_hdf5(p)
        except Exception:
            is_hdf5 = False
        if not is_hdf5:
            raise InputError(f"{self.name}: not an HDF5 file")
        key = _identity(p)
        if key not in _PROBED:
            failure = probe_in_child(p)
            if failure:
                raise InputError(f"{self.name}: corrupt HDF5 file ({failure})")
            _PROBED[key] = None
            while len(_PROBED) > 64:
                _PROBED.pop(next(iter(_PROBED)))
        try:
            self.file = h5py.File(p, "r")
        except Exception as exc:
            raise InputError(f"{self.name}: corrupt or truncated HDF5 file "
                             f"({one_line(exc)})") from exc
        return self.file

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self.file is not None:
                self.file.close()
        except Exception:
            pass
        if exc is None or isinstance(exc, InputError) or not isinstance(exc, Exception):
            return False
        raise InputError(f"{self.name}: corrupt or unreadable HDF5 content "
                         f"({one_line(exc)})") from exc


_PROBED: dict[tuple[int, ...], None] = {}  # files that passed the probe, by identity


def _identity(path: Path) -> tuple[int, ...]:
    """Device, inode, size and change times: a file rewritten since its probe differs."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def probe_in_child(path: Path, timeout_s: float | None = None) -> str | None:
    """Read the metadata of ``path`` (:func:`_read_everything`) in a child process.

    The HDF5 C library can crash or loop for ever on some corrupt files (see
    :mod:`ctflow.io.probe`); the child takes that risk so the caller never does.  Returns
    what went wrong ("the HDF5 library crashed (signal 11) while reading its metadata",
    "... made no progress for 3 s ..."), or None when the child finished (errors it met
    are left for the real read to report).  ``timeout_s``: the no-progress timeout
    (default :func:`ctflow.io.probe.idle_timeout`).
    """
    failure = run_in_child(functools.partial(_read_everything, path), timeout_s)
    if failure is None:
        return None
    return f"the HDF5 library {failure} while reading its metadata"


def _read_everything(path: Path) -> None:
    """The probe's task: every object and attribute, plus what the readers open by name."""
    walk_hdf5(path, READER_PATHS, READER_ATTRS)


def _layout(f: h5py.File, name: str) -> str:
    if "ctflow_format" in f.attrs:
        version = read_attr(f, "ctflow_format", name)
        if not np.isscalar(version) or isinstance(version, (str, bytes)) \
                or not float(version) == FORMAT_VERSION:
            raise InputError(f"{name}: unsupported ctflow_format {plain(version)!r} "
                             f"(this version reads {FORMAT_VERSION})")
        return "ctflow-v1"
    if "exchange" in f and isinstance(member(f, "exchange", name), h5py.Group) \
            and "data" in f["exchange"]:
        return "dxchange"
    if "data" in f:
        return "lodopab"
    if "sinogram" in f:
        raise InputError(f"{name}: has /sinogram but no ctflow_format attribute")
    raise InputError(f"{name}: no /sinogram dataset (not a ctflow, LoDoPaB or DXchange file)")


# ---------------------------------------------------------------------------- the layouts
VIEWS = (("views",),)
SINOGRAM = (("views", "detectors"), ("slices", "views", "detectors"))
IMAGE = (("image_size", "image_size"), ("slices", "image_size", "image_size"))


def _geometry(f: h5py.File, name: str, angles: np.ndarray) -> CTGeometry:
    text = read_attr(f, "geometry", name)
    if text is None:
        raise InputError(f"{name}: missing root attribute 'geometry'")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise InputError(f"{name}: root attribute 'geometry' is not JSON text")
    try:
        geometry = CTGeometry.from_json(text, angles)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise InputError(f"{name}: invalid geometry ({one_line(exc)})") from exc
    check_geometry(geometry, name)
    return geometry


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


def _check_shape(shape: tuple[int, ...], geometry: CTGeometry, name: str,
                 what: str = "sinogram") -> None:
    expected = tuple(int(n) for n in geometry.sinogram_shape)
    if tuple(shape[-2:]) != expected:
        raise InputError(f"{name}: {what} shape {tuple(shape)} does not match the geometry "
                         f"(views, det) = {expected}")


def _read_v1(f: h5py.File, name: str) -> SinogramFile:
    if read_attr(f, "content", name) == "reconstruction":
        raise InputError(f"{name}: is a ctflow reconstruction file, not a sinogram")
    sino_ds = declared_dataset(f, "sinogram", name, SINOGRAM)
    angles_ds = declared_dataset(f, "angles", name, VIEWS)
    if angles_ds.shape[0] != sino_ds.shape[-2]:
        raise InputError(f"{name}: /angles has {angles_ds.shape[0]} entries, the sinogram "
                         f"{sino_ds.shape[-2]} views")
    geometry = _geometry(f, name, read_data(angles_ds, name, np.float64))
    _check_shape(sino_ds.shape, geometry, name)
    slices = 1 if sino_ds.ndim == 2 else sino_ds.shape[0]
    size = int(geometry.image_size)
    image_ds = None
    if "image" in f:
        image_ds = declared_dataset(f, "image", name, IMAGE)
        shape = (1, *image_ds.shape) if image_ds.ndim == 2 else tuple(image_ds.shape)
        if shape != (slices, size, size):
            raise InputError(f"{name}: /image shape {shape} does not match "
                             f"({slices}, {size}, {size})")
    attrs = _attrs(f, name)
    metadata = _metadata(f, name)
    sino = _as_3d(read_data(sino_ds, name), "sinogram", name)
    image = None if image_ds is None else _as_3d(read_data(image_ds, name), "image", name)
    return SinogramFile(sino, geometry, image, metadata, attrs)


def _read_lodopab(f: h5py.File, name: str, preset: str | None) -> SinogramFile:
    if preset is None:
        raise InputError(f"{name}: LoDoPaB-style file (dataset 'data') needs a geometry: "
                         "pass the preset 'lodopab' or a geometry JSON")
    ds = declared_dataset(f, "data", name, SINOGRAM, work=8)
    geometry = geometry_from_preset(preset, ds.shape[-2], name)
    _check_shape(ds.shape, geometry, name, "data")
    sino = _as_3d(read_data(ds, name), "data", name)
    attrs: dict[str, Any] = {"source": "lodopab"}
    notes = []
    if preset == "lodopab":
        sino = (sino * np.float32(LODOPAB_MU_MAX_PER_M)).astype(np.float32)
        attrs.update(noise_model="poisson", photons=4096.0)
        notes.append(f"data multiplied by mu_max = {LODOPAB_MU_MAX_PER_M} /m "
                     "(LoDoPaB normalisation)")
    return SinogramFile(sino, geometry, None, {}, attrs, layout="lodopab", notes=notes)


def _read_dxchange(f: h5py.File, name: str, preset: str | None) -> SinogramFile:
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
    _check_shape((rows, views, cols), geometry, name)
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


#: Root attributes holding physical values, checked by :func:`ctflow.io.limits.check_quantity`.
PHYSICAL_ATTRS = ("mu_water_per_mm", "noise_std", "noise", "photons")


def _metadata(f: h5py.File, name: str) -> dict[str, Any]:
    if "metadata" not in f or not isinstance(f.get("metadata", getlink=True), h5py.HardLink):
        return {}
    group = f["metadata"]
    if not isinstance(group, h5py.Group):
        return {}
    metadata = all_attrs(group, name)
    if "SliceSpacingMM" in metadata:
        metadata["SliceSpacingMM"] = check_quantity(
            "slice_spacing_mm", metadata["SliceSpacingMM"], name, "/metadata SliceSpacingMM")
    return metadata


def _attrs(f: h5py.File, name: str) -> dict[str, Any]:
    attrs = all_attrs(f, name, skip=("ctflow_format", "geometry"))
    for key in PHYSICAL_ATTRS:
        if key in attrs:
            attrs[key] = check_quantity(key, attrs[key], name, f"attribute {key}")
    return attrs
