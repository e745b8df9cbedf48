"""Finding the DICOM files of a folder, grouping them into series and choosing one.

Every file in a folder (recursively, hidden files and folders skipped) that carries the
DICOM preamble (``DICM`` at byte 128) is parsed up to its pixel data; other files and
DICOMDIR index files are ignored.  Files are grouped by SeriesInstanceUID.
:func:`list_series` describes each group (:class:`SeriesInfo`); :func:`select_series`
picks one by SeriesInstanceUID or SeriesDescription (see its docstring for the rule) and
refuses, listing every series, when the folder holds several and none is named.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..errors import InputError
from .atomic import one_line
from .dicom_volume import MEDIA_STORAGE_DIRECTORY


@dataclass
class SeriesInfo:
    """One series of a folder, from the file headers (no pixel data decoded)."""

    uid: str
    description: str
    modality: str
    number: int | None
    rows: int
    columns: int
    kernel: str
    transfer_syntax: str
    tilt_deg: float
    files: list[Path] = field(default_factory=list)

    @property
    def size(self) -> str:
        """The image matrix, rows × columns ("mixed" when the files differ)."""
        return "mixed" if self.rows < 0 else f"{self.rows}×{self.columns}"

    def summary(self) -> str:
        """One short clause: UID, description, slices and kernel (for error messages)."""
        return (f"{self.uid or '(no UID)'} '{self.description}' ({self.modality}, "
                f"{len(self.files)} slice(s), kernel {self.kernel or '-'})")


def candidate_files(root: Path) -> list[Path]:
    """Every non-hidden file under ``root``, in a stable (sorted) order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return files


def read_header(path: Path) -> Dataset | None:
    """The dataset of a DICOM file up to its pixel data; None for non-DICOM files and
    DICOMDIRs.  Every value is converted now, so a corrupt one fails here, clearly."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({one_line(exc)})") from exc
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        # pydicom parses lazily: a corrupt value (e.g. an unknown VR, which raises
        # NotImplementedError) would otherwise fail later, anywhere
        _ = [element.value for element in ds.iterall()]
        sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID", "")))
    except Exception as exc:
        raise InputError(f"{path}: corrupt DICOM file ({one_line(exc)})") from exc
    return None if sop_class == MEDIA_STORAGE_DIRECTORY else ds


def scan_folder(folder: str | os.PathLike[str]) -> list[SeriesInfo]:
    """The series of ``folder`` (ordered by SeriesNumber, then UID); InputError when the
    folder is missing or holds no DICOM file."""
    root, name = Path(folder), str(folder)
    if not root.exists():
        raise InputError(f"{name}: no such folder")
    if not root.is_dir():
        raise InputError(f"{name}: not a folder (expected a DICOM series folder)")
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    with warnings.catch_warnings():  # pydicom's warnings about odd values stay quiet
        warnings.filterwarnings("ignore", module="pydicom")
        for path in candidate_files(root):
            ds = read_header(path)
            if ds is not None:
                groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    if not groups:
        raise InputError(f"{name}: no DICOM files found")
    infos = [_info(uid, items) for uid, items in groups.items()]
    return sorted(infos, key=lambda s: (s.number is None, s.number or 0, s.uid))


def list_series(folder: str | os.PathLike[str]) -> list[SeriesInfo]:
    """Every series in ``folder`` (see :class:`SeriesInfo`); nothing is decoded."""
    return scan_folder(folder)


def _info(uid: str, items: list[tuple[Path, Dataset]]) -> SeriesInfo:
    first = items[0][1]
    sizes = {(_int(ds, "Rows"), _int(ds, "Columns")) for _, ds in items}
    rows, cols = sizes.pop() if len(sizes) == 1 else (-1, -1)
    return SeriesInfo(
        uid=uid,
        description=str(first.get("SeriesDescription", "") or ""),
        modality="/".join(sorted({str(ds.get("Modality", "") or "?") for _, ds in items})),
        number=_optional_int(first.get("SeriesNumber")),
        rows=rows, columns=cols,
        kernel=kernel_of(first),
        transfer_syntax=", ".join(sorted({transfer_syntax_name(ds) for _, ds in items})),
        tilt_deg=gantry_tilt(first),
        files=[p for p, _ in items],
    )


def _int(ds: Dataset, keyword: str) -> int:
    value = _optional_int(ds.get(keyword))
    return -1 if value is None else value


def _optional_int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def kernel_of(ds: Dataset) -> str:
    """ConvolutionKernel, its values joined by a backslash ("" when absent)."""
    value = ds.get("ConvolutionKernel")
    if value is None or value == "":
        return ""
    return value if isinstance(value, str) else "\\".join(str(v) for v in value)


def transfer_syntax_name(ds: Dataset) -> str:
    """The transfer syntax of a file as its name (its UID when pydicom does not know it)."""
    uid = UID(str(ds.file_meta.get("TransferSyntaxUID", "") or ""))
    if not uid:
        return "(no transfer syntax)"
    return uid.name if uid.is_transfer_syntax else str(uid)


def gantry_tilt(ds: Dataset) -> float:
    """GantryDetectorTilt in degrees (0 when absent, empty or not a finite number)."""
    try:
        value = float(ds.get("GantryDetectorTilt", 0) or 0)
    except (TypeError, ValueError):
        return 0.0
    return value if np.isfinite(value) else 0.0


def select_series(folder: str | os.PathLike[str], infos: list[SeriesInfo],
                  series: str | None) -> SeriesInfo:
    """The series named by ``series``: a SeriesInstanceUID, else a SeriesDescription
    matched case-insensitively, exactly or (when no description is equal) as a unique
    substring.  Without ``series`` the folder must hold exactly one series.  Refusals name
    every candidate (UID, description, modality, slices, kernel) in one line."""
    name = str(folder)
    if series is None:
        if len(infos) == 1:
            return infos[0]
        raise InputError(f"{name}: holds {len(infos)} series; choose one by UID or "
                         f"description (--series): {_listing(infos)}")
    key = str(series).strip()
    for info in infos:
        if info.uid == key:
            return info
    wanted = key.casefold()
    exact = [i for i in infos if i.description.strip().casefold() == wanted]
    matches = exact or [i for i in infos if wanted and wanted in i.description.casefold()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InputError(f"{name}: {len(matches)} series match '{key}'; choose one by UID: "
                         f"{_listing(matches)}")
    raise InputError(f"{name}: no series with UID or description '{key}'; the folder holds "
                     f"{_listing(infos)}")


def _listing(infos: list[SeriesInfo]) -> str:
    return "; ".join(i.summary() for i in infos)
