"""Reading one CT series of a folder into a :class:`DicomVolume`.

The series is chosen by :func:`ctflow.io.dicom_series.select_series`; each of its files
must be CT with pixel data (:mod:`ctflow.io.dicom_pixels` decodes it and rescales it to
HU).  Slices are sorted by the position along the slice normal n = r × c (r, c the row and
column directions of ImageOrientationPatient): s_k = ⟨ImagePositionPatient_k, n⟩, and the
slice spacing is the median step of s_k.  This holds for tilted-gantry series too, whose
orientation is not axial: each slice is kept in its own (tilted) plane, nothing is
resampled, and ``tilt_deg`` / ``obliquity_deg`` / ``notes`` say so.  Irregular steps are
reported (``slice_spacing_range``, a note and a warning), not refused.  Geometry read from
the files must be plausible: pixel and slice spacing finite, > 0 and ≤ 100 mm, positions
finite and within ±1e5 mm.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..errors import InputError
from .atomic import one_line
from .dicom_pixels import read_full, to_hu
from .dicom_series import (
    gantry_tilt,
    kernel_of,
    scan_folder,
    select_series,
    transfer_syntax_name,
)
from .dicom_volume import (
    MAX_POSITION_MM,
    REFERENCE_KEYWORDS,
    DicomVolume,
    check_spacing,
)

#: Steps differing from the median by more than this fraction (+1 µm) make a series
#: "irregular" (reported, not refused).
IRREGULAR_STEP = 0.01
#: Transfer syntaxes that are always lossy: JPEG baseline, JPEG extended, JPEG-LS
#: near-lossless.
LOSSY_ONLY = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                        "1.2.840.10008.1.2.4.81"})


def read_series(folder: str | os.PathLike[str], series: str | None = None, *,
                series_uid: str | None = None) -> DicomVolume:
    """Read the CT series in ``folder``.

    ``series`` names one when the folder holds several: its SeriesInstanceUID, or its
    SeriesDescription (case-insensitive; exact, else a unique substring).  ``series_uid``
    is the older keyword for a UID and still accepted.
    """
    chosen = series if series is not None else series_uid
    info = select_series(folder, scan_folder(folder), chosen)
    with warnings.catch_warnings():  # pydicom's warnings about odd values stay quiet
        warnings.filterwarnings("ignore", module="pydicom")
        items = [(path, read_full(path)) for path in info.files]
        volume = _assemble(str(folder), items)
    if volume.slice_spacing_range[1] - volume.slice_spacing_range[0] > \
            IRREGULAR_STEP * volume.spacing[0] + 1e-3:
        lo, hi = volume.slice_spacing_range
        warnings.warn(f"{folder}: slice spacing is irregular ({lo:.4g}–{hi:.4g} mm); "
                      f"using the median {volume.spacing[0]:.4g} mm", stacklevel=2)
    return volume


def _assemble(name: str, items: list[tuple[Path, Dataset]]) -> DicomVolume:
    """Sort one series along its normal, rescale to HU, check it is a regular volume."""
    try:
        first_path, first = items[0]
        orientation = _orientation(items)
        normal = np.cross(orientation[:3], orientation[3:])
        slices = sorted(((float(pos @ normal), pos, path, ds) for path, ds in items
                         for pos in [_position(ds, path)]), key=lambda s: s[0])
        locations = np.array([s[0] for s in slices])
        if len(slices) > 1 and np.min(np.diff(locations)) < 1e-4:
            raise InputError(f"{name}: two slices share one position")
        dy, dx = _pixel_spacing(items)
        if len(slices) > 1:
            steps = np.diff(locations)
            dz = check_spacing(float(np.median(steps)), "slice spacing (from "
                               "ImagePositionPatient)", name)
            step_range = (float(steps.min()), float(steps.max()))
        else:
            dz = _single_slice_spacing(first, first_path)
            step_range = (dz, dz)
        images, masks = _images(slices, (int(first.Rows), int(first.Columns)))
        positions = np.stack([s[1] for s in slices])
        volume = DicomVolume(
            hu=np.stack(images).astype(np.float32),
            spacing=(dz, float(dy), float(dx)),
            positions=positions,
            orientation=orientation,
            reference={k: _dicom_str(first, k) for k in REFERENCE_KEYWORDS if k in first},
            series_uid=str(first.get("SeriesInstanceUID", "")),
            series_description=str(first.get("SeriesDescription", "") or ""),
            padding_mask=np.stack(masks) if any(m.any() for m in masks) else None,
            files=[s[2] for s in slices],
            slice_spacing_range=step_range,
            tilt_deg=gantry_tilt(first),
            obliquity_deg=float(np.degrees(np.arccos(min(1.0, abs(float(normal[2])))))),
            transfer_syntax=", ".join(sorted({transfer_syntax_name(ds) for _, ds in items})),
            kernel=kernel_of(first),
        )
        volume.notes = _notes(volume, [s[3] for s in slices])
        return volume
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{name}: inconsistent or corrupt series ({one_line(exc)})") from exc


def _orientation(items: list[tuple[Path, Dataset]]) -> np.ndarray:
    """The series' ImageOrientationPatient: orthonormal, the same in every file."""
    path, first = items[0]
    orientation = _floats(first, "ImageOrientationPatient", 6, path)
    row, col = orientation[:3], orientation[3:]
    if not (np.isclose(np.linalg.norm(np.cross(row, col)), 1.0, atol=1e-3)
            and np.isclose(np.linalg.norm(row), 1.0, atol=1e-3)):
        raise InputError(f"{path}: ImageOrientationPatient is not orthonormal")
    for path, ds in items[1:]:
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, path), orientation,
                           atol=1e-4):
            raise InputError(f"{path}: orientation differs from the rest of the series")
    return orientation


def _position(ds: Dataset, path: Path) -> np.ndarray:
    position = _floats(ds, "ImagePositionPatient", 3, path)
    if np.abs(position).max() > MAX_POSITION_MM:
        raise InputError(f"{path}: implausible ImagePositionPatient "
                         f"{position.tolist()} (beyond ±{MAX_POSITION_MM:g} mm)")
    return position


def _pixel_spacing(items: list[tuple[Path, Dataset]]) -> np.ndarray:
    """PixelSpacing (row, column) in mm: plausible and equal in every file."""
    path, first = items[0]
    expected = _floats(first, "PixelSpacing", 2, path)
    for path, ds in items:
        spacing = _floats(ds, "PixelSpacing", 2, path)
        for value in spacing:
            check_spacing(value, "PixelSpacing", path)
        if not np.allclose(spacing, expected, rtol=1e-4):
            raise InputError(f"{path}: PixelSpacing differs from the rest of the series")
    return expected


def _images(slices: list, shape: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, masks = [], []
    for _, _, path, ds in slices:
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise InputError(f"{path}: image size {ds.Rows}×{ds.Columns} differs from "
                             f"{shape[0]}×{shape[1]}")
        hu, mask = to_hu(ds, path)
        images.append(hu)
        masks.append(mask)
    return images, masks


def _notes(vol: DicomVolume, datasets: list[Dataset]) -> list[str]:
    """One-line remarks: tilted slices, irregular spacing, padding, lossy compression."""
    notes = []
    if abs(vol.tilt_deg) > 1e-3 or vol.obliquity_deg > 0.01:
        shift = 0.0
        if len(vol.positions) > 1:
            normal = np.cross(vol.orientation[:3], vol.orientation[3:])
            step = (vol.positions[-1] - vol.positions[0]) / (len(vol.positions) - 1)
            shift = float(np.linalg.norm(step - (step @ normal) * normal))
        notes.append(f"slices are tilted (GantryDetectorTilt {vol.tilt_deg:.4g}°, slice normal "
                     f"{vol.obliquity_deg:.4g}° from the patient axis, in-plane shift "
                     f"{shift:.3g} mm per slice): each slice is reconstructed in its own "
                     "plane, nothing is resampled")
    lo, hi = vol.slice_spacing_range
    if hi - lo > IRREGULAR_STEP * vol.spacing[0] + 1e-3:
        notes.append(f"slice spacing varies from {lo:.4g} to {hi:.4g} mm (median "
                     f"{vol.spacing[0]:.4g} mm used where one value is needed)")
    if vol.padding_mask is not None:
        notes.append(f"{int(vol.padding_mask.sum())} padding pixels (PixelPaddingValue, "
                     "outside the field of view) set to -1000 HU (air) and flagged in "
                     "padding_mask")
    if any(str(ds.get("LossyImageCompression", "")).strip() == "01"
           or str(ds.file_meta.get("TransferSyntaxUID", "")) in LOSSY_ONLY for ds in datasets):
        notes.append("lossy compressed pixel data (LossyImageCompression 01 or a lossy-only "
                     "transfer syntax): HU differ from what the scanner reconstructed")
    return notes


def _floats(ds: Dataset, keyword: str, count: int, path: Path) -> np.ndarray:
    if keyword not in ds:
        raise InputError(f"{path}: missing {keyword}")
    try:
        values = np.array([float(v) for v in ds[keyword].value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: invalid {keyword}") from exc
    if values.shape != (count,) or not np.isfinite(values).all():
        raise InputError(f"{path}: {keyword} must hold {count} finite numbers")
    return values


def _single_slice_spacing(ds: Dataset, path: Path) -> float:
    """Slice spacing of a one-slice series: SpacingBetweenSlices, else SliceThickness, else
    1 mm when both are absent or empty; a value that is present must be plausible."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value is not None and value != "":
            try:
                number = float(value)
            except (TypeError, ValueError) as exc:
                raise InputError(f"{path}: {keyword} {value!r} is not a number") from exc
            return check_spacing(number, keyword, path)
    return 1.0


def _dicom_str(ds: Dataset, keyword: str) -> str:
    value = ds[keyword].value
    return "" if value is None else str(value)
