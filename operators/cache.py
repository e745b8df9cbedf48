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

The entry format (header, checksums, verification) and the atomic write are in
:mod:`ctflow.operators.cache_entries`; their names are re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .cache_entries import (  # noqa: F401  (re-exported: the cache's public names)
    HEADER,
    LAYOUT_VERSION,
    Arrays,
    CacheEntryError,
    Check,
    checksum,
    csr_problem,
    host_tag,
    load_arrays,
    one_line,
    read_entry,
    save_arrays,
    temp_prefix,
    verify_entry,
    write_entry,
)

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised across processes
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 3600.0  # a waiter builds without the lock after this long
LOCK_POLL_S = 0.1
STALE_TEMP_AGE_S = 86400.0  # temporary files older than this are removed whoever wrote them
_TEMP_RE = re.compile(r"^\..+~(?P<host>[A-Za-z0-9_-]*)~(?P<pid>\d+)~[^~]*\.tmp$")
_OLD_TEMP_RE = re.compile(r"^\..+\.npz\.tmp$")  # temporaries of ctflow before layout 1
_warned_folders: set[str] = set()



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
            _warn_unwritable(folder, one_line(exc))
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
        _warn_unwritable(folder, one_line(exc))
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
        log.debug("no lock for %s (%s)", path.name, one_line(exc))
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
            log.debug("cannot lock %s (%s)", path.name, one_line(exc))
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
    now, host = time.time(), host_tag()
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
