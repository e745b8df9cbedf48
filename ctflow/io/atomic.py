"""Atomic outputs: a file or a folder appears complete under its final name, or not at all.

* :func:`atomic_file` yields a temporary path in the target's folder; on success the file
  is fsync'ed and ``os.replace``-d onto the target, on any error it is removed.
* :func:`atomic_folder` yields a hidden temporary folder beside the target (for a DICOM
  series); on success it is renamed into place, on any error it is removed with its files.

Both check up front (:func:`check_output`) that the parent folder exists and is writable,
and refuse to replace an existing output unless ``overwrite=True`` (the CLI's
``--overwrite``).  A folder whose permission bits grant nobody write access is treated as
read-only even when running as root (root ignores permission bits, but the user who set
them meant "do not write here").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputError


def check_output(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Validate an output path before any work starts; returns it as a Path.

    Raises OutputError naming the path if its folder is missing, not a folder, read-only,
    or if the output already exists and ``overwrite`` is False.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{target}: output folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{target}: {parent} is not a folder")
    if not _writable(parent):
        raise OutputError(f"{target}: output folder {parent} is read-only")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise OutputError(f"{target}: already exists (pass --overwrite to replace it)")
    return target


def _writable(folder: Path) -> bool:
    """Writable by this process and not marked read-only by its permission bits."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP
                                                                 | stat.S_IWOTH))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path; on success fsync it and rename it onto ``path``."""
    target = check_output(path, overwrite)
    if target.is_dir():
        raise OutputError(f"{target}: is a folder, expected a file name")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{target}: cannot create a file there ({exc.strerror})") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"{target}: write failed ({one_line(exc)})") from exc
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``path``; on success rename it to ``path``.

    With ``overwrite`` an existing folder is moved aside first and deleted only after the
    new one is in place.
    """
    target = check_output(path, overwrite)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target}: exists and is not a folder")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise OutputError(f"{target}: cannot create a folder there ({exc.strerror})") from exc
    os.chmod(tmp, 0o777 & ~_umask())
    old: Path | None = None
    try:
        yield tmp
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old",
                                        dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)  # put the previous output back
            old = None
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"{target}: write failed ({one_line(exc)})") from exc
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can fsync a folder
        _fsync_file(path)


def one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
