"""The file format of the projector cache (:mod:`ctflow.operators.cache`): one ``.npz`` entry
holding the arrays and ``header``, a uint8 array of UTF-8 JSON naming the entry's kind, key,
version, description and each array's dtype, shape and SHA-256; written atomically, read
without unpickling, verified against what the caller asks for.  Also the checks shared by
the entry kinds (:func:`csr_problem`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

LAYOUT_VERSION = 1  # the header layout above; entries of another layout are rebuilt
HEADER = "header"

Arrays = dict[str, np.ndarray]
Check = Callable[[Arrays], str | None]


class CacheEntryError(ValueError):
    """An entry that cannot be used; ``state`` is ``stale`` (written for other settings or
    by another version) or ``corrupt`` (unreadable, wrong checksum, invalid contents)."""

    def __init__(self, state: str, reason: str):
        super().__init__(reason)
        self.state = state
        self.reason = reason


def temp_prefix(stem: str, pid: int | None = None) -> str:
    """Prefix of a writer's temporary file: ``.<stem>~<host>~<pid>~`` (suffix ``.tmp``)."""
    return f".{stem}~{host_tag()}~{os.getpid() if pid is None else pid}~"


def host_tag() -> str:
    """This machine's name as it appears in temporary file names."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64]


def one_line(exc: BaseException) -> str:
    """An exception's message (or OS error text) on one line."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


# -- entries ----------------------------------------------------------------------------
def checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order)."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return hashlib.sha256(flat.data).hexdigest()


def _normalise(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, numpy scalars numbers)."""
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_entry(path: Path, kind: str, key: str, description: Mapping[str, Any],
                version: int | str, arrays: Mapping[str, np.ndarray]) -> Path:
    """Store arrays with their header (atomically: temporary file, then rename)."""
    if HEADER in arrays:
        raise ValueError(f"an array may not be named {HEADER!r}")
    header = {"layout": LAYOUT_VERSION, "kind": kind, "key": key, "version": version,
              "description": _normalise(dict(description)),
              "arrays": {name: {"dtype": np.asarray(a).dtype.str, "shape": list(np.shape(a)),
                                "sha256": checksum(np.asarray(a))}
                         for name, a in arrays.items()}}
    text = json.dumps(header, sort_keys=True, default=_json_default)
    blob = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return save_arrays(path, **{HEADER: blob}, **dict(arrays))


def read_entry(path: Path) -> tuple[dict[str, Any], Arrays]:
    """The header and arrays of an entry, unverified; CacheEntryError if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CacheEntryError("corrupt", f"unreadable: {one_line(exc)}") from None
    blob = arrays.pop(HEADER, None)
    if blob is None:
        raise CacheEntryError("stale", "no header: written by an older ctflow")
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise CacheEntryError("corrupt", f"header is a {blob.dtype} array of shape "
                                         f"{blob.shape}, not uint8 bytes")
    try:
        header = json.loads(blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CacheEntryError("corrupt", f"header is not JSON: {one_line(exc)}") from None
    if not isinstance(header, dict):
        raise CacheEntryError("corrupt", "header is not a JSON object")
    return header, arrays


def verify_entry(path: Path, kind: str, key: str, description: Mapping[str, Any],
                 version: int | str, check: Check | None = None) -> Arrays:
    """The arrays of a valid entry; CacheEntryError naming the first problem otherwise."""
    header, arrays = read_entry(path)
    if header.get("layout") != LAYOUT_VERSION:
        raise CacheEntryError("stale", f"header layout {header.get('layout')!r}, expected "
                                       f"{LAYOUT_VERSION}")
    if header.get("kind") != kind or header.get("key") != key:
        raise CacheEntryError("stale", f"written for another geometry or settings "
                                       f"({header.get('kind')!r} entry, key "
                                       f"{header.get('key')!r})")
    if header.get("version") != _normalise(version):
        raise CacheEntryError("stale", f"version {header.get('version')!r}, expected "
                                       f"{version!r}")
    stored, wanted = header.get("description"), _normalise(dict(description))
    if stored != wanted:
        if not isinstance(stored, dict):
            raise CacheEntryError("corrupt", "header has no description")
        differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        verb = "differs" if len(differ) == 1 else "differ"
        raise CacheEntryError("stale", f"written for another geometry or settings "
                                       f"({', '.join(differ)} {verb})")
    listed = header.get("arrays")
    if not isinstance(listed, dict) or set(listed) != set(arrays):
        raise CacheEntryError("corrupt", f"arrays {sorted(arrays)} do not match the header")
    for name, a in arrays.items():
        info = listed[name]
        if not isinstance(info, dict) or info.get("dtype") != a.dtype.str \
                or info.get("shape") != list(a.shape):
            raise CacheEntryError("corrupt", f"array {name!r} is {a.dtype.str} {a.shape}, the "
                                             f"header says otherwise")
        if info.get("sha256") != checksum(a):
            raise CacheEntryError("corrupt", f"checksum of array {name!r} is wrong")
    if check is not None:
        try:
            problem = check(arrays)
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            problem = f"check failed: {one_line(exc)}"
        if problem:
            raise CacheEntryError("corrupt", problem)
    return arrays


# -- raw arrays -------------------------------------------------------------------------
def save_arrays(path: Path, **arrays: np.ndarray) -> Path:
    """Write arrays atomically (temporary file in the same folder, then rename); no header:
    the projector caches go through :func:`write_entry` / :func:`load_or_build`.

    This is the one atomic write of ``operators/``: the layer imports nothing from the rest
    of ctflow (DESIGN §1), so it cannot use ``ctflow.io.atomic``, the helper every other
    writer of the package goes through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.stem), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # (stubs: a name could be allow_pickle)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored at path (unverified), or None if the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- checks shared by the entry kinds ---------------------------------------------------
def csr_problem(arrays: Arrays, shape: tuple[int, int]) -> str | None:
    """What is wrong with CSR arrays (data, indices, indptr, shape) of a ``shape`` matrix."""
    if set(arrays) != {"data", "indices", "indptr", "shape"}:
        return f"arrays {sorted(arrays)}, expected data, indices, indptr, shape"
    data, indices, indptr = arrays["data"], arrays["indices"], arrays["indptr"]
    if arrays["shape"].tolist() != list(shape):
        return f"matrix shape {arrays['shape'].tolist()}, expected {list(shape)}"
    if data.dtype != np.float32 or indices.dtype != np.int32 or indptr.dtype != np.int64:
        return "unexpected dtypes"
    if data.ndim != 1 or indices.shape != data.shape or indptr.shape != (shape[0] + 1,):
        return "array lengths do not fit the matrix shape"
    if indptr[0] != 0 or indptr[-1] != data.size or np.any(np.diff(indptr) < 0):
        return "row pointers are not a valid CSR index"
    if data.size and (indices.min() < 0 or indices.max() >= shape[1]):
        return "column indices outside the image"
    if not np.isfinite(data).all():
        return "matrix contains NaN or Inf"
    return None
