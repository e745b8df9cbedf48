"""Writing a reconstructed HU volume as a CT Image Storage series (pydicom).

One file per slice, ImageType DERIVED\\SECONDARY\\AXIAL, new Series and SOP Instance UIDs,
int16 stored values with RescaleSlope 1 and RescaleIntercept 0 (HU outside [−32768, 32767]
are clipped, with a warning), pixel spacing and slice positions from the geometry, a VOI
window, and a DerivationDescription naming the method and the number of views.  With a
reference series the patient, study and frame of reference are copied from it and the
slices are centred on the reference slices, in the reference's orientation (a tilted
reference gives tilted slices); empty reference IDs, UIDs and dates keep the generated
ones.  Otherwise new patient/study IDs and UIDs are generated.  Every file passes dciodvfy
(dicom3tools) without errors or warnings: the reference's Laterality is not copied (an
empty one is a dciodvfy warning) but becomes ImageLaterality (R, L, else U = unpaired).
The series is written into a hidden temporary folder and renamed into place.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .. import __version__
from ..errors import InputError
from .atomic import atomic_folder
from .dicom_volume import (
    CT_IMAGE_STORAGE,
    INT16_MAX,
    INT16_MIN,
    REFERENCE_KEYWORDS,
    DicomVolume,
    check_spacing,
)

#: Reference attributes whose empty value does not replace ctflow's generated one: the UIDs
#: are Type 1, the IDs and dates are needed to build a DICOMDIR (dciodvfy warns when empty).
KEEP_WHEN_EMPTY = frozenset({"PatientID", "StudyInstanceUID", "StudyDate", "StudyTime",
                             "StudyID", "FrameOfReferenceUID"})
PERSON_NAMES = frozenset({"PatientName", "ReferringPhysicianName"})
LO_MAX = 64  # characters of a LO (long string) value, e.g. SeriesDescription


def write_series(
    folder: str | os.PathLike[str],
    hu_volume: np.ndarray,
    pixel_spacing_mm: float,
    slice_spacing_mm: float,
    method: str,
    views: int,
    reference: DicomVolume | Mapping[str, str] | None = None,
    series_description: str = "ctflow reconstruction",
    window: tuple[float, float] = (40.0, 400.0),
    overwrite: bool = False,
    derivation: str | None = None,
    series_number: int | None = None,
) -> list[Path]:
    """Write ``hu_volume`` (slices, H, W) as a CT Image Storage series into ``folder``.

    ``reference`` (a series read by :func:`~ctflow.io.dicom.read_series`, or a mapping of
    :data:`REFERENCE_KEYWORDS` to DICOM strings, e.g. HDF5 metadata) supplies the patient,
    study and frame of reference.  ``series_description`` becomes SeriesDescription (a LO
    value: backslashes and control characters become spaces or '/', cut to 64
    characters), e.g. the method and its settings.  ``derivation`` replaces the default
    DerivationDescription ("ctflow <version> reconstruction, method M, from V views").
    ``series_number`` sets SeriesNumber (default: 9000 + a clock-derived 0–999).
    Returns the written file paths.
    """
    hu = np.asarray(hu_volume, dtype=np.float64)
    if hu.ndim == 2:
        hu = hu[None]
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError(f"{folder}: image volume must be (slices, H, W), got {hu.shape}")
    if not np.isfinite(hu).all():
        raise InputError(f"{folder}: image volume contains NaN or Inf")
    check_spacing(float(pixel_spacing_mm), "pixel spacing", folder)
    check_spacing(float(slice_spacing_mm), "slice spacing", folder)
    clipped = int(((hu < INT16_MIN) | (hu > INT16_MAX)).sum())
    if clipped:
        warnings.warn(f"{folder}: {clipped} pixels outside the int16 HU range were clipped",
                      stacklevel=2)
    stored = np.clip(np.rint(hu), INT16_MIN, INT16_MAX).astype("<i2")

    common = _common_dataset(reference, series_description, window, pixel_spacing_mm,
                             slice_spacing_mm, hu.shape)
    if series_number is not None:
        if not 0 <= int(series_number) <= 2**31 - 1:
            raise InputError(f"{folder}: series_number {series_number} is not in 0…2³¹−1")
        common.SeriesNumber = int(series_number)
    common.DerivationDescription = derivation or (
        f"ctflow {__version__} reconstruction, method {method}, from {int(views)} views")
    positions, orientation = _plane(reference, hu.shape, pixel_spacing_mm, slice_spacing_mm)
    normal = np.cross(orientation[:3], orientation[3:])
    names = [f"CT{k + 1:05d}.dcm" for k in range(hu.shape[0])]
    with atomic_folder(folder, overwrite) as tmp:
        for k, fname in enumerate(names):
            ds = _slice_dataset(common, stored[k], k, positions[k], orientation, normal)
            ds.save_as(tmp / fname, enforce_file_format=True)
    return [Path(folder) / n for n in names]


def _common_dataset(reference, description, window, pixel_mm, slice_mm, shape) -> Dataset:
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    # Patient and General Study (generated unless a reference supplies them)
    ds.PatientName = "ANONYMOUS^"
    ds.PatientID = "CTFLOW-" + generate_uid().rsplit(".", 1)[-1][:12]
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime = date, time
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = ""
    ref = reference.reference if isinstance(reference, DicomVolume) else (reference or {})
    for key in REFERENCE_KEYWORDS:
        value = "" if ref.get(key) is None else str(ref[key])
        if key in ref and key != "Laterality" and (value or key not in KEEP_WHEN_EMPTY):
            setattr(ds, key, _person_name(value) if key in PERSON_NAMES else value)
    # General Series: no Laterality (Type 2C: required only without ImageLaterality, and
    # then not empty for a paired body part; dciodvfy flags an empty one)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9000 + int(now.strftime("%M%S")) % 1000
    ds.SeriesDate, ds.SeriesTime = date, time
    if lo_value(description):  # Type 3: absent rather than empty
        ds.SeriesDescription = lo_value(description)
    # General Equipment
    ds.Manufacturer = "ctflow"
    ds.SoftwareVersions = __version__
    # General Image, CT Image
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    side = str(ref.get("Laterality") or "").strip().upper()  # the reference's side, else
    ds.ImageLaterality = side if side in ("R", "L") else "U"  # U: unpaired
    ds.ContentDate, ds.ContentTime = date, time
    ds.KVP = ""
    ds.AcquisitionNumber = 1
    ds.SliceThickness = f"{slice_mm:.6g}"
    ds.SpacingBetweenSlices = f"{slice_mm:.6g}"
    ds.PixelSpacing = [f"{pixel_mm:.6g}", f"{pixel_mm:.6g}"]
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(shape[1]), int(shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    # VOI LUT
    center, width = window
    ds.WindowCenter = f"{center:.6g}"
    ds.WindowWidth = f"{max(width, 1.0):.6g}"
    ds.WindowCenterWidthExplanation = "ctflow default window"
    # SOP Common
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    return ds


def lo_value(text: str) -> str:
    """``text`` as a valid LO value: backslash (the value separator) becomes '/', control
    characters become spaces, surrounding spaces go, at most 64 characters."""
    clean = re.sub(r"[\x00-\x1f\x7f]", " ", str(text).replace("\\", "/"))
    return clean.strip()[:LO_MAX].rstrip()


def _person_name(value: str) -> str:
    """A PN value in the current form: a bare name without component separators (the
    retired form, e.g. "REMOVED") gets its family-name separator ("REMOVED^")."""
    return value if not value or "^" in value or "=" in value else value + "^"


def _plane(reference, shape, pixel_mm: float, slice_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """ImagePositionPatient per slice and ImageOrientationPatient.

    Without a reference: axial, centred on the z axis, z_k = k·dz.  With one: the
    reference orientation and slice centres (extended along the normal if the slice
    counts differ), so the new pixels are centred where the reference pixels were.
    """
    slices, rows, cols = shape
    half = np.array([(cols - 1) / 2 * pixel_mm, (rows - 1) / 2 * pixel_mm])
    if not isinstance(reference, DicomVolume):
        orientation = np.array([1.0, 0, 0, 0, 1, 0])
        centres = np.stack([np.zeros(slices), np.zeros(slices), np.arange(slices) * slice_mm], 1)
    else:
        orientation = np.asarray(reference.orientation, dtype=np.float64)
        r, c = orientation[:3], orientation[3:]
        _, ref_rows, ref_cols = reference.hu.shape
        _, dy, dx = reference.spacing
        ref_centres = (reference.positions + r * dx * (ref_cols - 1) / 2
                       + c * dy * (ref_rows - 1) / 2)
        if len(ref_centres) == slices:
            centres = ref_centres
        else:
            normal = np.cross(r, c)
            centres = ref_centres[0] + np.arange(slices)[:, None] * slice_mm * normal
    r, c = orientation[:3], orientation[3:]
    positions = centres - r * half[0] - c * half[1]
    return positions, orientation


def _slice_dataset(common: Dataset, stored: np.ndarray, k: int, position: np.ndarray,
                   orientation: np.ndarray, normal: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.update(common)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.SliceLocation = _ds(float(position @ normal))
    ds.SmallestImagePixelValue = int(stored.min())
    ds.LargestImagePixelValue = int(stored.max())
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"CTFLOW_{__version__}"[:16]
    ds.file_meta = meta
    return ds


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"
