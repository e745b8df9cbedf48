"""The on-disk cache of system matrices and SVD factors, verified on every load.

Location: ``$CTFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/ctflow``, else ``~/.cache/ctflow``.

Layout: one ``<kind>-<key>.npz`` per entry, holding the arrays and ``header``, a uint8 array
of UTF-8 JSON (read with ``np.load(allow_pickle=False)``: nothing is unpickled)::

    {"layout": 1, "kind": "svd", "key": "...", "version": 3,
     "description": {...everything the entry depends on: geometry, angles, projector...},
     "arrays": {"sigma": {"dtype": "<f8", "shape": [k], "sha256": "..."}, ...}}

:func:`load_or_build` uses an entry only if its kind, key, version and description equal the
requested ones, every array's SHA-256 is right and the caller's ``check`` (finite values,
shapes consistent with the geometry, ...) finds nothing wrong.  Otherwise it logs one
warning ``cache entry <file> is stale|corrupt (<reason>); rebuilding``, rebuilds and replaces
the entry.  Builds of one entry are serialised across processes by an ``flock`` on
``<kind>-<key>.lock`` (polled; after ``LOCK_TIMEOUT_S`` the waiter builds anyway), so a second
process waits and then loads what the first stored.  Before a build, temporary files of
writers that died (host and pid are in the name) or that are older than a day are removed.
An unwritable cache folder gives one warning per folder and the result is used in memory.
Files are written to a temporary name and renamed into place: readers never see half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised across processes
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1  # the header layout above; entries of another layout are rebuilt
HEADER = "header"
LOCK_TIMEOUT_S = 3600.0  # a waiter builds without the lock after this long
LOCK_POLL_S = 0.1
STALE_TEMP_AGE_S = 86400.0  # temporary files older than this are removed whoever wrote them
_TEMP_RE = re.compile(r"^\..+~(?P<host>[A-Za-z0-9_-]*)~(?P<pid>\d+)~[^~]*\.tmp$")
_OLD_TEMP_RE = re.compile(r"^\..+\.npz\.tmp$")  # temporaries of ctflow before layout 1
_warned_folders: set[str] = set()

Arrays = dict[str, np.ndarray]
Check = Callable[[Arrays], str | None]


class CacheEntryError(ValueError):
    """An entry that cannot be used; ``state`` is ``stale`` (written for other settings or
    by another version) or ``corrupt`` (unreadable, wrong checksum, invalid contents)."""

    def __init__(self, state: str, reason: str):
        super().__init__(reason)
        self.state = state
        self.reason = reason


# -- locations --------------------------------------------------------------------------
def cache_dir() -> Path:
    """The cache folder (created on demand)."""
    env = os.environ.get("CTFLOW_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "ctflow"
    return Path.home() / ".cache" / "ctflow"


def cache_path(kind: str, key: str) -> Path:
    """``<cache>/<kind>-<key>.npz``."""
    return cache_dir() / f"{kind}-{key}.npz"


def temp_prefix(stem: str, pid: int | None = None) -> str:
    """Prefix of a writer's temporary file: ``.<stem>~<host>~<pid>~`` (suffix ``.tmp``)."""
    return f".{stem}~{_host()}~{os.getpid() if pid is None else pid}~"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64]


# -- entries ----------------------------------------------------------------------------
def checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order)."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return hashlib.sha256(flat).hexdigest()


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
        raise CacheEntryError("corrupt", f"unreadable: {_one_line(exc)}") from None
    blob = arrays.pop(HEADER, None)
    if blob is None:
        raise CacheEntryError("stale", "no header: written by an older ctflow")
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise CacheEntryError("corrupt", f"header is a {blob.dtype} array of shape "
                                         f"{blob.shape}, not uint8 bytes")
    try:
        header = json.loads(blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CacheEntryError("corrupt", f"header is not JSON: {_one_line(exc)}") from None
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
            problem = f"check failed: {_one_line(exc)}"
        if problem:
            raise CacheEntryError("corrupt", problem)
    return arrays


def load_or_build(kind: str, key: str, description: Mapping[str, Any], version: int | str,
                  build: Callable[[], Arrays], check: Check | None = None) -> Arrays:
    """The verified entry ``<kind>-<key>``, or ``build()``'s arrays, stored for later runs.

    A bad entry is logged and rebuilt; concurrent builders of one entry build it once (the
    others wait for the lock and load); an unwritable cache folder gives one warning and the
    arrays are only kept in memory."""
    path = cache_path(kind, key)
    seen = _signature(path)
    arrays = _load_verified(path, kind, key, description, version, check)
    if arrays is not None:
        return arrays
    folder = path.parent
    if not _usable_folder(folder):
        return build()
    with _build_lock(path):
        if _signature(path) not in (seen, None):  # another process stored it meanwhile
            arrays = _load_verified(path, kind, key, description, version, check)
            if arrays is not None:
                return arrays
        remove_stale_temps(folder)
        arrays = build()
        try:
            write_entry(path, kind, key, description, version, arrays)
        except OSError as exc:
            _warn_unwritable(folder, _one_line(exc))
        return arrays


def _load_verified(path: Path, kind: str, key: str, description: Mapping[str, Any],
                   version: int | str, check: Check | None) -> Arrays | None:
    """Verified arrays, or None (missing; a bad entry is logged)."""
    if not path.exists():
        return None
    try:
        return verify_entry(path, kind, key, description, version, check)
    except CacheEntryError as exc:
        log.warning("cache entry %s is %s (%s); rebuilding", path, exc.state, exc.reason)
        return None


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


# -- folder, lock, temporaries ----------------------------------------------------------
def _usable_folder(folder: Path) -> bool:
    """Create the folder; False (after one warning per folder) if it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _warn_unwritable(folder, _one_line(exc))
        return False
    if not _writable(folder):
        _warn_unwritable(folder, "read-only")
        return False
    return True


def _writable(folder: Path) -> bool:
    """Writable by this process and not marked read-only by its permission bits (a folder
    whose bits grant nobody write access counts as read-only even for root)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK) and bool(
        mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _warn_unwritable(folder: Path, reason: str) -> None:
    if str(folder) in _warned_folders:
        return
    _warned_folders.add(str(folder))
    log.warning("cache folder %s is not writable (%s); system matrices and SVD factors "
                "are computed in memory and not kept for later runs (set CTFLOW_CACHE_DIR "
                "to a writable folder)", folder, reason)


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``<entry>.lock`` while building; yields whether it is
    held (False: no flock here, or another process held it for ``LOCK_TIMEOUT_S``)."""
    if fcntl is None:
        yield False
        return
    try:
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        log.debug("no lock for %s (%s)", path.name, _one_line(exc))
        yield False
        return
    try:
        yield _acquire(fd, path)
    finally:
        os.close(fd)  # releases the lock


def _acquire(fd: int, path: Path) -> bool:
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError as exc:  # e.g. a file system without flock
            log.debug("cannot lock %s (%s)", path.name, _one_line(exc))
            return False
        if not waiting:
            log.info("waiting for another process building %s", path.name)
            waiting = True
        if time.monotonic() > deadline:
            log.warning("waited %.0f s for another process building %s; building it here too",
                        LOCK_TIMEOUT_S, path.name)
            return False
        time.sleep(LOCK_POLL_S)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove temporary files of dead writers on this host, and any older than a day."""
    removed = []
    now, host = time.time(), _host()
    for tmp in folder.glob(".*.tmp"):
        match = _TEMP_RE.match(tmp.name)
        if match is None and not _OLD_TEMP_RE.match(tmp.name):
            continue
        try:
            age = now - tmp.stat().st_mtime
        except OSError:
            continue
        dead = match is not None and match["host"] == host and not _alive(int(match["pid"]))
        if dead or age > STALE_TEMP_AGE_S:
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
                log.info("removed the stale temporary file %s", tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


# -- raw arrays -------------------------------------------------------------------------
def save_arrays(path: Path, **arrays: np.ndarray) -> Path:
    """Write arrays atomically (temporary file in the same folder, then rename); no header:
    the projector caches go through :func:`write_entry` / :func:`load_or_build`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.stem), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
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
