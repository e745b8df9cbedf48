"""Editing written DICOM series in tests: set or delete tags in every file of a folder."""

from __future__ import annotations

from pathlib import Path

import pydicom


def retag(folder: Path, **changes: object) -> Path:
    """Apply ``changes`` (keyword → value; None deletes) to every .dcm file of ``folder``
    (not the .ctflow-series marker); returns the folder."""
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for key, value in changes.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        ds.save_as(f)
    return folder
