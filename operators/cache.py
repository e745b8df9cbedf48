"""The on-disk cache of system matrices and SVD factors.

Location: ``$CTFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/ctflow``, else ``~/.cache/ctflow``.
Files are ``.npz`` archives written to a temporary name and renamed into place, so readers
never see half a file; an unreadable file counts as missing (and is rebuilt).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """The cache folder (created on demand by :func:`save_arrays`)."""
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


def save_arrays(path: Path, **arrays: np.ndarray) -> Path:
    """Write arrays atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored at path, or None if the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
