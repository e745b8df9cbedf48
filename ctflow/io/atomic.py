"""Atomic outputs: a file or a folder appears complete under its final name, or not at all.

* :func:`atomic_file` yields a temporary path in the target's folder; on success the file
  is fsync'ed and ``os.replace``-d onto the target, on any error it is removed.
* :func:`atomic_folder` yields a hidden temporary folder beside the target (for a DICOM
  series); on success it writes the marker :data:`SERIES_MARKER` (JSON naming the files)
  into it and renames it into place, on any error it is removed with its files.

Both check up front (:func:`check_output`) that the parent folder exists and is writable,
and refuse to replace an existing output unless ``overwrite=True`` (the CLI's
``--overwrite``).  Even then only what ctflow itself wrote is replaced: a regular file, or
a series folder holding the marker and nothing but the files the marker lists.  A folder
without the marker, a FIFO, device, socket or symbolic link (never followed), and any
path that is or contains an input of the running command (:func:`protect_inputs`) are
refused.  A folder whose permission bits grant nobody write access is treated as
read-only even when running as root (root ignores permission bits, but the user who set
them meant "do not write here").

Temporary names carry the writer's pid and host (``.NAME.ctflow-PID-HOST.XXXXXXXX.tmp``);
each write first removes the temporaries of the same target left by a writer that died
(pid gone on this host) or that are older than :data:`STALE_SECONDS`.

:func:`written_since` tells which outputs were really committed, so that an interrupted
command can say whether it wrote something.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import OutputError

SERIES_MARKER = ".ctflow-series"
"""Marker file written into every folder :func:`atomic_folder` creates (JSON)."""

MARKER_MAX_BYTES = 16 << 20  # a marker lists file names; anything larger is not ours
STALE_SECONDS = 24 * 3600.0  # a temporary this old is stale whatever its writer
_NAME_CHARS = 120  # target name characters kept in a temporary's name (file name limits)

_protected: list[Path] = []  # inputs of the running command (protect_inputs)


# (target, device, inode) of every output about to be / already renamed into place
_commits: list[tuple[Path, int, int]] = []


@contextlib.contextmanager
def protect_inputs(paths: Iterable[str | os.PathLike[str] | None]) -> Iterator[None]:
    """Within the block, no output check accepts a path that is or contains one of
    ``paths`` (``None`` entries are skipped), whoever does the writing."""
    added = [Path(p) for p in paths if p is not None and str(p) != ""]
    _protected.extend(added)
    try:
        yield
    finally:
        for p in added:
            _protected.remove(p)


def check_output(path: str | os.PathLike[str], overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike[str] | None] = (),
                 folder: bool | None = None) -> Path:
    """Validate an output path before any work starts; returns it as a Path.

    Raises OutputError naming the path if its folder is missing, not a folder or read-only;
    if the output already exists and ``overwrite`` is False; and, with ``overwrite``, if
    the existing path is not something ctflow wrote (see the module docstring) or is or
    contains one of ``inputs`` or of the protected inputs.  ``folder`` True / False also
    requires an existing output to be a folder / not a folder.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{target}: output folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{target}: {parent} is not a folder")
    if not _writable(parent):
        raise OutputError(f"{target}: output folder {parent} is read-only")
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise OutputError(f"{target}: cannot inspect it ({exc.strerror})") from exc
    for item in [*(Path(p) for p in inputs if p is not None and str(p) != ""), *_protected]:
        _refuse_input(target, info, item)
    if not overwrite:
        raise OutputError(f"{target}: already exists (pass --overwrite to replace it)")
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(f"{target}: is a symbolic link; --overwrite does not replace "
                          "links (remove it or choose another name)")
    if stat.S_ISDIR(info.st_mode):
        if folder is False:
            raise OutputError(f"{target}: is a folder, expected a file name")
        _check_series_folder(target)
    elif stat.S_ISREG(info.st_mode):
        if folder is True:
            raise OutputError(f"{target}: exists and is not a folder")
    else:
        raise OutputError(f"{target}: is a {_kind(info.st_mode)}, not a regular file; "
                          "--overwrite replaces only files and series folders ctflow wrote")
    return target


def _refuse_input(target: Path, info: os.stat_result, item: Path) -> None:
    """OutputError if ``target`` (lstat ``info``) is ``item`` or a folder above it."""
    key = (info.st_dev, info.st_ino)
    chains = []
    for p in (Path(os.path.abspath(item)), Path(os.path.realpath(item))):
        chains.append([p, *p.parents])
    for chain in chains:
        for depth, p in enumerate(chain):
            try:
                s = os.stat(p)
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == key:
                what = "is" if depth == 0 else "contains"
                raise OutputError(f"{target}: {what} an input of this command ({item}); "
                                  "refusing to replace it")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _check_series_folder(target: Path) -> None:
    """OutputError unless ``target`` is a series folder ctflow wrote: the marker, and
    otherwise only regular files the marker lists."""
    marker = target / SERIES_MARKER
    refuse = (f"{target}: folder was not written by ctflow (no valid {SERIES_MARKER} "
              "marker); --overwrite replaces only series folders ctflow wrote")
    try:
        info = os.lstat(marker)
    except OSError:
        raise OutputError(refuse) from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > MARKER_MAX_BYTES:
        raise OutputError(refuse)
    try:
        with open(marker, "rb") as fh:
            spec = json.loads(fh.read(MARKER_MAX_BYTES + 1))
    except (OSError, ValueError):
        raise OutputError(refuse) from None
    files = spec.get("files") if isinstance(spec, dict) else None
    if (spec.get("written_by") if isinstance(spec, dict) else None) != "ctflow" \
            or not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise OutputError(refuse)
    ours = set(files)
    for entry in os.scandir(target):
        if entry.name == SERIES_MARKER:
            continue
        if entry.name not in ours or not entry.is_file(follow_symlinks=False):
            raise OutputError(f"{target}: holds {entry.name}, which ctflow did not write; "
                              "not replaced")


def _writable(folder: Path) -> bool:
    """Writable by this process and not marked read-only by its permission bits."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP
                                                                 | stat.S_IWOTH))


def written_since(mark: int = 0) -> list[Path]:
    """Outputs committed by atomic writes since ``commit_mark()`` returned ``mark``: those
    whose final path now holds the file or folder that was written."""
    done = []
    for target, device, inode in _commits[mark:]:
        try:
            info = os.lstat(target)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == (device, inode) and target not in done:
            done.append(target)
    return done


def commit_mark() -> int:
    """A mark for :func:`written_since`."""
    return len(_commits)


def _record_commit(tmp: Path, target: Path) -> None:
    """Note, before the rename, which inode ``target`` will hold once it is done."""
    info = os.lstat(tmp)
    _commits.append((target, info.st_dev, info.st_ino))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path; on success fsync it and rename it onto ``path``."""
    target = check_output(path, overwrite, folder=False)
    clean_stale_temporaries(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp",
                                        dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{target}: cannot create a file there ({exc.strerror})") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        _fsync_file(tmp)
        check_output(target, overwrite, folder=False)  # still ours to replace
        _record_commit(tmp, target)
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
    """Yield a hidden temporary folder beside ``path``; on success mark it as a ctflow
    series and rename it to ``path``.

    With ``overwrite`` an existing series folder ctflow wrote is moved aside first and
    deleted only after the new one is in place.
    """
    target = check_output(path, overwrite, folder=True)
    if not target.name or target.name in (".", ".."):
        raise OutputError(f"{target}: not a usable folder name for a series")
    clean_stale_temporaries(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp",
                                    dir=target.parent))
    except OSError as exc:
        raise OutputError(f"{target}: cannot create a folder there ({exc.strerror})") from exc
    os.chmod(tmp, 0o777 & ~_umask())
    old: Path | None = None
    try:
        yield tmp
        _write_marker(tmp)
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        check_output(target, overwrite, folder=True)  # still ours to replace
        if os.path.lexists(target):
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".old",
                                        dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
        _record_commit(tmp, target)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not os.path.lexists(target):
            os.replace(old, target)  # put the previous output back
            old = None
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"{target}: write failed ({one_line(exc)})") from exc
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_marker(folder: Path) -> None:
    """The JSON marker naming the regular files of a series folder ctflow wrote."""
    files = sorted(e.name for e in os.scandir(folder)
                   if e.is_file(follow_symlinks=False) and e.name != SERIES_MARKER)
    text = json.dumps({"written_by": "ctflow", "format": 1, "files": files}, indent=1)
    (folder / SERIES_MARKER).write_text(text + "\n", encoding="utf-8")


def _host_tag() -> str:
    """8 hex digits naming this machine (pids are only comparable on the same host)."""
    import socket  # only when writing: keeps the CLI's start-up light

    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _temp_prefix(target: Path) -> str:
    """``.NAME.ctflow-PID-HOST.``: who writes the temporary, for stale-temp cleaning."""
    return f".{target.name[:_NAME_CHARS]}.ctflow-{os.getpid()}-{_host_tag()}."


def clean_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries (``.tmp`` files or folders, ``.old`` folders) of ``target``
    whose writer is dead (same host, pid gone) or that are older than STALE_SECONDS.
    Symbolic links and other kinds of entries are left alone.  Returns what was removed."""
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(re.escape(f".{target.name[:_NAME_CHARS]}.ctflow-")
                         + r"(\d+)-([0-9a-f]{8})\.[A-Za-z0-9_]+\.(tmp|old)")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    host, now = _host_tag(), time.time()
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        pid, tag, kind = int(match.group(1)), match.group(2), match.group(3)
        dead = tag == host and pid != os.getpid() and not _pid_alive(pid)
        if not (dead or now - info.st_mtime > STALE_SECONDS):
            continue
        if kind == "old" and not os.path.lexists(target):
            continue  # the only copy of a previous output: leave it for a person to see
        path = Path(entry.path)
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        elif stat.S_ISREG(info.st_mode):
            with contextlib.suppress(OSError):
                path.unlink()
        else:
            continue
        removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or an absurd pid: leave it to the age rule)
    return True


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
