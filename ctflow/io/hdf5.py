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
with the file name.  Because the HDF5 library can crash outright on some corrupt files,
each file is first read in a forked child process (:func:`probe_in_child`).
Writes are atomic (:mod:`ctflow.io.atomic`).
"""

from __future__ import annotations

import faulthandler
import json
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from ..operators import CTGeometry
from .atomic import atomic_file, one_line

FORMAT_VERSION = 1
MAX_ELEMENTS = 2**31  # refuse datasets larger than this (corrupt headers claim huge sizes)
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
        return CTGeometry.from_json(json.dumps(spec), np.asarray(angles, dtype=np.float64))
    except (ValueError, TypeError) as exc:
        raise InputError(f"{source}: invalid geometry preset ({one_line(exc)})") from exc


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
        if _layout(f, name) != "ctflow-v1" or f.attrs.get("content") != "reconstruction":
            raise InputError(f"{name}: not a ctflow reconstruction file")
        angles = _float_array(f, "angles", name, (1,), dtype=np.float64)
        geometry = _geometry(f, name, angles)
        image = _as_3d(_float_array(f, "image", name, (2, 3)), "image", name)
        size = geometry.image_size
        if image.shape[1:] != (size, size):
            raise InputError(f"{name}: /image shape {image.shape} does not match the geometry "
                             f"image size {size}")
        return ReconstructionFile(image, geometry, _metadata(f), _attrs(f))


def file_kind(path: str | os.PathLike[str]) -> str:
    """'sinogram' or 'reconstruction' for a ctflow file, else the foreign layout name."""
    name = str(path)
    with _open(path) as f:
        layout = _layout(f, name)
        if layout == "ctflow-v1" and f.attrs.get("content") == "reconstruction":
            return "reconstruction"
        return "sinogram" if layout == "ctflow-v1" else layout


class _open:
    """Open an HDF5 file for reading; every failure inside becomes a one-line InputError."""

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
        try:
            is_hdf5 = h5py.is_hdf5(p)
        except Exception:
            is_hdf5 = False
        if not is_hdf5:
            raise InputError(f"{self.name}: not an HDF5 file")
        crash = probe_in_child(p)
        if crash:
            raise InputError(f"{self.name}: corrupt HDF5 file ({crash})")
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


def probe_in_child(path: Path, timeout_s: float = 300.0) -> str | None:
    """Read every object, attribute and dataset of ``path`` in a forked child process.

    The HDF5 C library can crash (segfault) on some corrupt files instead of reporting an
    error; the child takes that risk so the caller never does.  Returns a description of
    the crash, or None when the child finished (errors it met are left for the real read
    to report).  Without ``os.fork`` (Windows) the probe is skipped.
    """
    if not hasattr(os, "fork"):
        return None
    with warnings.catch_warnings():  # fork in a threaded process: the child only reads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: quiet, no fault handler, never returns
        try:
            faulthandler.disable()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            _read_everything(path)
        finally:
            os._exit(0)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None  # slow, not crashed: let the real read decide
        time.sleep(0.005)
    if os.WIFSIGNALED(status):
        return f"the HDF5 library crashed reading it, signal {os.WTERMSIG(status)}"
    return None


def _read_everything(path: Path) -> None:
    def visit(_: str, obj: h5py.HLObject) -> None:
        for key in obj.attrs:
            obj.attrs[key]
        if isinstance(obj, h5py.Dataset) and obj.size <= MAX_ELEMENTS:
            obj[()]

    try:
        with h5py.File(path, "r") as f:
            visit("/", f)
            f.visititems(visit)
    except Exception:
        pass


def _layout(f: h5py.File, name: str) -> str:
    if "ctflow_format" in f.attrs:
        version = f.attrs["ctflow_format"]
        if not np.isscalar(version) or int(version) != FORMAT_VERSION:
            raise InputError(f"{name}: unsupported ctflow_format {version!r} "
                             f"(this version reads {FORMAT_VERSION})")
        return "ctflow-v1"
    if "exchange" in f and isinstance(f["exchange"], h5py.Group) and "data" in f["exchange"]:
        return "dxchange"
    if "data" in f:
        return "lodopab"
    if "sinogram" in f:
        raise InputError(f"{name}: has /sinogram but no ctflow_format attribute")
    raise InputError(f"{name}: no /sinogram dataset (not a ctflow, LoDoPaB or DXchange file)")


def _dataset(f: h5py.Group, key: str, name: str) -> h5py.Dataset:
    if key not in f:
        raise InputError(f"{name}: missing dataset /{key}")
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{name}: /{key} is not a dataset")
    return ds


def _float_array(f: h5py.Group, key: str, name: str, ndims: tuple[int, ...],
                 dtype: type = np.float32, kinds: str = "f") -> np.ndarray:
    """Read dataset ``key`` as a finite real array of one of the given ranks."""
    ds = _dataset(f, key, name)
    label = f"{f.name.rstrip('/')}/{key}"
    if ds.dtype.kind not in kinds or ds.dtype.itemsize > 8:
        raise InputError(f"{name}: {label} has dtype {ds.dtype}, expected real numbers")
    if ds.ndim not in ndims:
        raise InputError(f"{name}: {label} has shape {ds.shape}, expected "
                         f"{' or '.join(f'{d}-D' for d in ndims)}")
    if ds.size > MAX_ELEMENTS or ds.size == 0:
        raise InputError(f"{name}: {label} has implausible size {ds.shape}")
    a = np.asarray(ds[()], dtype=dtype)
    if not np.isfinite(a).all():
        raise InputError(f"{name}: {label} contains NaN or Inf")
    return a


def _geometry(f: h5py.File, name: str, angles: np.ndarray) -> CTGeometry:
    text = f.attrs.get("geometry")
    if text is None:
        raise InputError(f"{name}: missing root attribute 'geometry'")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise InputError(f"{name}: root attribute 'geometry' is not JSON text")
    try:
        return CTGeometry.from_json(text, angles)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{name}: invalid geometry ({one_line(exc)})") from exc


def _check_shape(sino: np.ndarray, geometry: CTGeometry, name: str) -> None:
    expected = tuple(int(n) for n in geometry.sinogram_shape)
    if sino.shape[1:] != expected:
        raise InputError(f"{name}: sinogram shape {sino.shape} does not match the geometry "
                         f"(views, det) = {expected}")


def _read_v1(f: h5py.File, name: str) -> SinogramFile:
    if f.attrs.get("content") == "reconstruction":
        raise InputError(f"{name}: is a ctflow reconstruction file, not a sinogram")
    sino = _as_3d(_float_array(f, "sinogram", name, (2, 3)), "sinogram", name)
    angles = _float_array(f, "angles", name, (1,), dtype=np.float64)
    if len(angles) != sino.shape[1]:
        raise InputError(f"{name}: /angles has {len(angles)} entries, the sinogram "
                         f"{sino.shape[1]} views")
    geometry = _geometry(f, name, angles)
    _check_shape(sino, geometry, name)
    image = None
    if "image" in f:
        image = _as_3d(_float_array(f, "image", name, (2, 3)), "image", name)
        size = int(geometry.image_size)
        if image.shape != (sino.shape[0], size, size):
            raise InputError(f"{name}: /image shape {image.shape} does not match "
                             f"({sino.shape[0]}, {size}, {size})")
    return SinogramFile(sino, geometry, image, _metadata(f), _attrs(f))


def _read_lodopab(f: h5py.File, name: str, preset: str | None) -> SinogramFile:
    if preset is None:
        raise InputError(f"{name}: LoDoPaB-style file (dataset 'data') needs a geometry: "
                         "pass the preset 'lodopab' or a geometry JSON")
    sino = _as_3d(_float_array(f, "data", name, (2, 3)), "data", name)
    geometry = geometry_from_preset(preset, sino.shape[1], name)
    _check_shape(sino, geometry, name)
    attrs: dict[str, Any] = {"source": "lodopab"}
    notes = []
    if preset == "lodopab":
        sino = (sino * np.float32(LODOPAB_MU_MAX_PER_M)).astype(np.float32)
        attrs.update(noise_model="poisson", photons=4096.0)
        notes.append(f"data multiplied by mu_max = {LODOPAB_MU_MAX_PER_M} /m "
                     "(LoDoPaB normalisation)")
    return SinogramFile(sino, geometry, None, {}, attrs, layout="lodopab", notes=notes)


def _read_dxchange(f: h5py.File, name: str, preset: str | None) -> SinogramFile:
    ex = f["exchange"]
    data = _float_array(ex, "data", name, (3,), dtype=np.float64, kinds="fiu")
    views, rows, cols = data.shape
    white = _field_mean(ex, "data_white", rows, cols, name)
    notes: list[str] = []
    if "data_dark" in ex:
        dark = _field_mean(ex, "data_dark", rows, cols, name)
    else:
        dark = np.zeros((rows, cols))
        notes.append("no /exchange/data_dark: dark field assumed 0")
    theta = _float_array(ex, "theta", name, (1,), dtype=np.float64)
    if len(theta) != views:
        raise InputError(f"{name}: /exchange/theta has {len(theta)} entries, "
                         f"/exchange/data {views} projections")
    angles, note = _theta_to_radians(theta, ex["theta"].attrs.get("units"))
    notes.append(note)
    denom = white - dark
    if (denom <= 0).any():
        raise InputError(f"{name}: flat field is not above the dark field everywhere")
    transmission = np.clip((data - dark) / denom, TRANSMISSION_FLOOR, None)
    sino = np.ascontiguousarray((-np.log(transmission)).transpose(1, 0, 2), dtype=np.float32)
    if preset is not None:
        geometry = geometry_from_preset(preset, views, name)
        spec = json.loads(geometry.to_json())
        geometry = CTGeometry.from_json(json.dumps(spec), angles)
    else:
        spec = {"type": "parallel", "image_size": cols, "pixel_size_mm": 1.0,
                "det_count": cols, "det_spacing_mm": 1.0, "source_origin_mm": None,
                "origin_det_mm": None}
        geometry = CTGeometry.from_json(json.dumps(spec), angles)
        notes.append("no geometry given: parallel beam, 1 mm pixels and detector bins assumed")
    _check_shape(sino, geometry, name)
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
    a = _float_array(ex, key, name, (2, 3), dtype=np.float64, kinds="fiu")
    if a.shape[-2:] != (rows, cols):
        raise InputError(f"{name}: /exchange/{key} shape {a.shape} does not match the "
                         f"projections' {rows}×{cols}")
    return a.reshape(-1, rows, cols).mean(0)


def _plain(value: Any) -> Any:
    """HDF5 attribute value → plain Python (str, int, float, bool or list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _metadata(f: h5py.File) -> dict[str, Any]:
    group = f.get("metadata")
    if not isinstance(group, h5py.Group):
        return {}
    return {k: _plain(v) for k, v in group.attrs.items()}


def _attrs(f: h5py.File) -> dict[str, Any]:
    return {k: _plain(v) for k, v in f.attrs.items() if k not in ("ctflow_format", "geometry")}
