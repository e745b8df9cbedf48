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

Modules: this one writes and reads the ctflow layout and opens every file;
:mod:`ctflow.io.hdf5_foreign` reads LoDoPaB and DXchange files; :mod:`ctflow.io.hdf5_layout`
holds what they share; :mod:`ctflow.io.hdf5_bounds` the bounded low-level reads.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from ..operators import CTGeometry
from .atomic import atomic_file, one_line
from .hdf5_bounds import all_attrs, declared_dataset, member, plain, read_attr, read_data
from .hdf5_foreign import (  # noqa: F401  (re-exported)
    LODOPAB_MU_MAX_PER_M,
    PRESETS,
    TRANSMISSION_FLOOR,
    geometry_from_preset,
    lodopab_geometry,
    read_dxchange,
    read_lodopab,
)
from .hdf5_layout import (  # noqa: F401  (re-exported)
    IMAGE,
    SINOGRAM,
    VIEWS,
    ReconstructionFile,
    SinogramFile,
    as_3d,
    check_geometry,
    check_shape,
)
from .limits import check_quantity
from .probe import run_in_child, walk_hdf5

FORMAT_VERSION = 1
#: What the readers open by name; the probe opens them too (name lookups and iteration take
#: different code paths in the HDF5 library).
READER_PATHS = ("sinogram", "angles", "image", "metadata", "data", "exchange",
                "exchange/data", "exchange/data_white", "exchange/data_dark", "exchange/theta")
READER_ATTRS = ("ctflow_format", "content", "geometry", "units")


# ---------------------------------------------------------------------------------- writing
def write_sinogram(path: str | os.PathLike[str], data: SinogramFile,
                   overwrite: bool = False) -> Path:
    """Write ``data`` in the version-1 layout, atomically; returns the path written."""
    sino = as_3d(np.asarray(data.sinogram), "sinogram", str(path))
    if sino.shape[1:] != tuple(data.geometry.sinogram_shape):
        raise InputError(f"{path}: sinogram shape {sino.shape} does not match the geometry "
                         f"(views, det) = {tuple(data.geometry.sinogram_shape)}")
    with atomic_file(path, overwrite) as tmp, h5py.File(tmp, "w") as f:
        _write_common(f, data.geometry, data.metadata, data.attrs)
        f.create_dataset("sinogram", data=sino.astype(np.float32, copy=False))
        if data.image_hu is not None:
            f.create_dataset("image", data=as_3d(np.asarray(data.image_hu), "image",
                                                  str(path)).astype(np.float32, copy=False))
            f["image"].attrs["units"] = "HU"
    return Path(path)


def write_reconstruction(path: str | os.PathLike[str], rec: ReconstructionFile,
                         overwrite: bool = False) -> Path:
    """Write a reconstruction (``/image`` in HU, geometry, metadata, attrs), atomically."""
    image = as_3d(np.asarray(rec.image_hu), "image", str(path))
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


# ---------------------------------------------------------------------------------- reading
def read_sinogram(path: str | os.PathLike[str], preset: str | None = None) -> SinogramFile:
    """Read a ctflow v1, LoDoPaB-style (needs ``preset``) or DXchange sinogram file."""
    name = str(path)
    with _open(path) as f:
        layout = _layout(f, name)
        if layout == "ctflow-v1":
            return _read_v1(f, name)
        if layout == "lodopab":
            return read_lodopab(f, name, preset)
        return read_dxchange(f, name, preset)


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
        image = as_3d(read_data(ds, name), "image", name)
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


# ------------------------------------------------------------------------ the ctflow layout
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


def _read_v1(f: h5py.File, name: str) -> SinogramFile:
    if read_attr(f, "content", name) == "reconstruction":
        raise InputError(f"{name}: is a ctflow reconstruction file, not a sinogram")
    sino_ds = declared_dataset(f, "sinogram", name, SINOGRAM)
    angles_ds = declared_dataset(f, "angles", name, VIEWS)
    if angles_ds.shape[0] != sino_ds.shape[-2]:
        raise InputError(f"{name}: /angles has {angles_ds.shape[0]} entries, the sinogram "
                         f"{sino_ds.shape[-2]} views")
    geometry = _geometry(f, name, read_data(angles_ds, name, np.float64))
    check_shape(sino_ds.shape, geometry, name)
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
    sino = as_3d(read_data(sino_ds, name), "sinogram", name)
    image = None if image_ds is None else as_3d(read_data(image_ds, name), "image", name)
    return SinogramFile(sino, geometry, image, metadata, attrs)


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
