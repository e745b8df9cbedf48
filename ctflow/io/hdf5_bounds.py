"""Bounded low-level HDF5 access: attributes and datasets are read only after every check
that needs no data — type, element count, storage size, links within this file, fully stored
chunks, and a read that fits the memory budget (``ctflow.io.limits``)."""

from __future__ import annotations

import math
import os
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from .limits import check_memory, check_shape
from .probe import MAX_ATTR_BYTES

MAX_ELEMENTS = 2**31  # refuse datasets larger than this (corrupt headers claim huge sizes)
MAX_ATTRS = 4096  # refuse objects with more attributes than this


def read_attr(obj: h5py.HLObject, key: str | bytes, name: str, default: Any = None) -> Any:
    """Attribute ``key`` of ``obj`` (``default`` when absent), read only after its type,
    element count and storage size were checked with the low-level API.

    Variable-length strings live in the file's global heap, whose objects the library
    bounds by the file size; their length is checked once read.
    """
    if key not in obj.attrs:
        return default
    label = f"attribute {key!r} of {obj.name}"
    aid = h5py.h5a.open(obj.id, key if isinstance(key, bytes) else key.encode())
    dtype = aid.dtype
    vlen = dtype.kind == "O" and h5py.check_string_dtype(dtype) is not None
    if not (dtype.kind in "biufS" or vlen):
        raise InputError(f"{name}: {label} has unsupported type {dtype}")
    count = aid.get_space().get_simple_extent_npoints()
    nbytes = max(aid.get_storage_size(), count * dtype.itemsize)
    if nbytes > MAX_ATTR_BYTES:
        raise InputError(f"{name}: {label} is implausibly large ({nbytes} bytes)")
    value = obj.attrs[key]
    if vlen:
        nbytes = sum(len(v) for v in np.ravel(np.asarray(value, dtype=object)))
        if nbytes > MAX_ATTR_BYTES:
            raise InputError(f"{name}: {label} is implausibly large ({nbytes} bytes)")
    return value


def all_attrs(obj: h5py.HLObject, name: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every attribute of ``obj`` (bounded reads) as plain Python values."""
    count = h5py.h5o.get_info(obj.id).num_attrs
    if count > MAX_ATTRS:
        raise InputError(f"{name}: {obj.name} has {count} attributes (at most {MAX_ATTRS} "
                         "are read)")
    return {plain(k): plain(read_attr(obj, k, name)) for k in obj.attrs.keys() if k not in skip}


def member(f: h5py.Group, key: str, name: str) -> h5py.HLObject:
    """``f[key]`` if it is a hard link: soft and external links (which may point into
    other files) are refused."""
    if key not in f:
        raise InputError(f"{name}: missing dataset {f.name.rstrip('/')}/{key}")
    link = f.get(key, getlink=True)
    if not isinstance(link, h5py.HardLink):
        kind = {h5py.SoftLink: "soft link", h5py.ExternalLink: "link to another file"}.get(
            type(link), "link of an unknown kind")
        raise InputError(f"{name}: {f.name.rstrip('/')}/{key} is a {kind}; only objects "
                         "stored in this file are read")
    return f[key]


def declared_dataset(f: h5py.Group, key: str, name: str, axes: tuple[tuple[str, ...], ...],
              kinds: str = "f", work: int = 4) -> h5py.Dataset:
    """Dataset ``key`` after every check that needs no data: a real-number dtype, a rank in
    ``axes`` (one tuple of axis names per allowed rank), each axis within its limit, data
    in this file that is actually stored, and a read (file dtype plus ``work`` bytes per
    element) within the memory budget."""
    ds = member(f, key, name)
    label = f"{f.name.rstrip('/')}/{key}"
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{name}: {label} is not a dataset")
    if ds.dtype.kind not in kinds or ds.dtype.itemsize > 8:
        raise InputError(f"{name}: {label} has dtype {ds.dtype}, expected real numbers")
    names = {len(a): a for a in axes}
    if ds.shape is None or ds.ndim not in names:
        ranks = " or ".join(f"{len(a)}-D" for a in axes)
        raise InputError(f"{name}: {label} has shape {ds.shape}, expected {ranks}")
    check_shape(ds.shape, names[ds.ndim], label, name)
    count = math.prod(ds.shape)
    if count > MAX_ELEMENTS:
        raise InputError(f"{name}: {label} declares {count} values (at most {MAX_ELEMENTS})")
    check_storage(ds, count * ds.dtype.itemsize, label, name)
    check_memory(count * (ds.dtype.itemsize + work), label, name)
    return ds


def check_storage(ds: h5py.Dataset, nbytes: int, label: str, name: str) -> None:
    """The data are in this file, inside it, and completely stored."""
    plist = ds.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL or plist.get_external_count() > 0:
        raise InputError(f"{name}: {label} keeps its data in other files; only data "
                         "stored in this file are read")
    file_size = os.path.getsize(ds.file.filename)
    stored = ds.id.get_storage_size()
    offset = ds.id.get_offset() if layout == h5py.h5d.CONTIGUOUS else None
    if stored == 0 or (layout == h5py.h5d.CONTIGUOUS and offset is None):
        raise InputError(f"{name}: {label} declares shape {ds.shape} but stores no data")
    if offset is not None and offset + nbytes > file_size:
        raise InputError(f"{name}: {label} declares {nbytes} bytes of data beyond the end of "
                         f"the file ({file_size} bytes)")
    if stored > file_size:
        raise InputError(f"{name}: {label} claims {stored} bytes of storage in a file of "
                         f"{file_size} bytes")
    if layout == h5py.h5d.CHUNKED:  # chunks never written would read as fill values
        chunks = math.prod(-(-n // c) for n, c in zip(ds.shape, ds.chunks, strict=True))
        written = ds.id.get_num_chunks()
        if written < chunks:
            raise InputError(f"{name}: {label} declares shape {ds.shape} but stores only "
                             f"{written} of its {chunks} chunks")


def read_data(ds: h5py.Dataset, name: str, dtype: type = np.float32) -> np.ndarray:
    """The data of a dataset checked by :func:`declared_dataset`, all finite."""
    a = np.asarray(ds[()], dtype=dtype)
    if not np.isfinite(a).all():
        raise InputError(f"{name}: {ds.name} contains NaN or Inf")
    return a


def plain(value: Any) -> Any:
    """HDF5 attribute value → plain Python (str, int, float, bool or list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value
