"""CT DICOM series in and out (pydicom).

Reading (:func:`read_series`): every file in a folder (recursively, hidden files skipped)
that carries the DICOM preamble (``DICM`` at byte 128) is parsed; other files are ignored,
and so are DICOMDIR index files.  Every DICOM image must be CT with pixel data, otherwise
the read is refused.  Images are grouped by SeriesInstanceUID, sorted by the position
along the slice normal n = r × c (r, c the row and column directions of
ImageOrientationPatient): s_k = ⟨ImagePositionPatient_k, n⟩.  Values become
HU = stored·RescaleSlope + RescaleIntercept (both Type 1 in the CT Image module: a file
without them, or with slope 0 or a non-finite value, is refused); stored values equal to
PixelPaddingValue (or within [PixelPaddingValue, PixelPaddingRangeLimit]) are set to
−1000 HU (air) and flagged in ``padding_mask``.  Geometry read from the files must be
plausible: pixel and slice spacing finite, > 0 and ≤ 100 mm, positions finite and within
±1e5 mm.

Writing (:func:`write_series`): one CT Image Storage file per slice, ImageType
DERIVED\\SECONDARY\\AXIAL, new Series and SOP Instance UIDs, int16 stored values with
RescaleSlope 1 and RescaleIntercept 0 (HU outside [−32768, 32767] are clipped, with a
warning), pixel spacing and slice positions from the geometry, a VOI window, and a
DerivationDescription naming the method and the number of views.  With a reference
series the patient, study and frame of reference are copied from it and the slices are
centred on the reference slices (empty reference IDs, UIDs and dates keep the generated
ones); otherwise new patient/study IDs and UIDs are generated.  Every file passes dciodvfy
(dicom3tools) without errors or warnings.  :func:`check_reference` refuses a reference
that does not fit a reconstruction.  The series is written into a hidden temporary folder
and renamed into place.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .. import __version__
from ..errors import InputError
from .atomic import atomic_folder, one_line

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
PADDING_HU = -1000.0
INT16_MIN, INT16_MAX = -32768, 32767
#: Plausibility bounds of geometry read from files: pixel and slice spacing in (0, 100] mm,
#: ImagePositionPatient coordinates within ±1e5 mm (100 m).
MAX_SPACING_MM = 100.0
MAX_POSITION_MM = 1e5

#: Attributes copied from a reference series: Patient, General Study, Frame of Reference
#: and the patient's position on the table; its Laterality (R, L) becomes ImageLaterality.
REFERENCE_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientAge", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID",
    "PositionReferenceIndicator", "PatientPosition", "Laterality",
)
#: Reference attributes whose empty value does not replace ctflow's generated one: the UIDs
#: are Type 1, the IDs and dates are needed to build a DICOMDIR (dciodvfy warns when empty).
KEEP_WHEN_EMPTY = frozenset({"PatientID", "StudyInstanceUID", "StudyDate", "StudyTime",
                             "StudyID", "FrameOfReferenceUID"})
PERSON_NAMES = frozenset({"PatientName", "ReferringPhysicianName"})


@dataclass
class DicomVolume:
    """A CT series as an HU volume.

    ``hu`` float32 (slices, H, W); ``spacing`` (dz, dy, dx) in mm; ``positions`` (slices, 3)
    ImagePositionPatient in mm; ``orientation`` the 6 direction cosines; ``reference`` the
    patient/study/frame-of-reference attributes (DICOM strings) for pass-through.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    positions: np.ndarray
    orientation: np.ndarray
    reference: dict[str, str] = field(default_factory=dict)
    series_uid: str = ""
    series_description: str = ""
    padding_mask: np.ndarray | None = None
    files: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------- reading
def read_series(folder: str | os.PathLike[str], series_uid: str | None = None) -> DicomVolume:
    """Read the CT series in ``folder`` (pick one with ``series_uid`` if there are several)."""
    with warnings.catch_warnings():  # pydicom's warnings about odd values stay quiet
        warnings.filterwarnings("ignore", module="pydicom")
        return _read_series(folder, series_uid)


def _read_series(folder: str | os.PathLike[str], series_uid: str | None) -> DicomVolume:
    root = Path(folder)
    name = str(folder)
    if not root.exists():
        raise InputError(f"{name}: no such folder")
    if not root.is_dir():
        raise InputError(f"{name}: not a folder (expected a DICOM series folder)")
    datasets = [(p, ds) for p in _candidate_files(root) if (ds := _read_dicom(p)) is not None]
    if not datasets:
        raise InputError(f"{name}: no DICOM files found")
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for path, ds in datasets:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"{name}: no series with SeriesInstanceUID {series_uid}")
        chosen = series[series_uid]
    elif len(series) > 1:
        listing = ", ".join(f"{uid or '(none)'} ({len(v)} files)" for uid, v in series.items())
        raise InputError(f"{name}: holds {len(series)} series ({listing}); choose one")
    else:
        chosen = next(iter(series.values()))
    return _assemble(name, chosen)


def _candidate_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return files


def _read_dicom(path: Path) -> Dataset | None:
    """The dataset of a DICOM image file; None for non-DICOM files and DICOMDIRs."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({one_line(exc)})") from exc
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    try:
        ds = pydicom.dcmread(path)
        # convert every value now: pydicom parses lazily, and a corrupt value (e.g. an unknown
        # VR, which raises NotImplementedError) would otherwise fail later, anywhere
        _ = [element.value for element in ds.iterall()]
        sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID", "")))
        if sop_class == MEDIA_STORAGE_DIRECTORY:
            return None
        modality = str(ds.get("Modality", "")).strip()
        if modality != "CT":
            raise InputError(f"{path}: modality {modality or '(none)'} is not CT")
        if "PixelData" not in ds:
            raise InputError(f"{path}: CT file without pixel data")
        return ds
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: corrupt DICOM file ({one_line(exc)})") from exc


def _assemble(name: str, items: list[tuple[Path, Dataset]]) -> DicomVolume:
    """Sort one series along its normal, rescale to HU, check it is a regular volume."""
    try:
        first = items[0][1]
        orientation = _floats(first, "ImageOrientationPatient", 6, items[0][0])
        row, col = orientation[:3], orientation[3:]
        normal = np.cross(row, col)
        if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
            raise InputError(f"{items[0][0]}: ImageOrientationPatient is not orthonormal")
        slices = []
        for path, ds in items:
            if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, path), orientation,
                               atol=1e-4):
                raise InputError(f"{path}: orientation differs from the rest of the series")
            position = _floats(ds, "ImagePositionPatient", 3, path)
            if np.abs(position).max() > MAX_POSITION_MM:
                raise InputError(f"{path}: implausible ImagePositionPatient "
                                 f"{position.tolist()} (beyond ±{MAX_POSITION_MM:g} mm)")
            slices.append((float(position @ normal), position, path, ds))
        slices.sort(key=lambda s: s[0])
        locations = np.array([s[0] for s in slices])
        if len(slices) > 1 and np.min(np.diff(locations)) < 1e-4:
            raise InputError(f"{name}: two slices share one position")
        dy, dx = _floats(first, "PixelSpacing", 2, items[0][0])
        for path, ds in items:
            spacing = _floats(ds, "PixelSpacing", 2, path)
            for value in spacing:
                _check_spacing(value, "PixelSpacing", path)
            if not np.allclose(spacing, (dy, dx), rtol=1e-4):
                raise InputError(f"{path}: PixelSpacing differs from the rest of the series")
        if len(slices) > 1:
            steps = np.diff(locations)
            dz = _check_spacing(float(np.median(steps)), "slice spacing (from "
                                "ImagePositionPatient)", name)
            if np.max(np.abs(steps - dz)) > 0.01 * dz + 1e-3:
                warnings.warn(f"{name}: slice spacing is irregular "
                              f"({steps.min():.3g}–{steps.max():.3g} mm); using {dz:.4g} mm",
                              stacklevel=2)
        else:
            dz = _single_slice_spacing(first, items[0][0])
        images, masks = [], []
        shape = (int(first.Rows), int(first.Columns))
        for _, _, path, ds in slices:
            if (int(ds.Rows), int(ds.Columns)) != shape:
                raise InputError(f"{path}: image size {ds.Rows}×{ds.Columns} differs from "
                                 f"{shape[0]}×{shape[1]}")
            hu, mask = _to_hu(ds, path)
            images.append(hu)
            masks.append(mask)
        return DicomVolume(
            hu=np.stack(images).astype(np.float32),
            spacing=(dz, float(dy), float(dx)),
            positions=np.stack([s[1] for s in slices]),
            orientation=orientation,
            reference={k: _dicom_str(first, k) for k in REFERENCE_KEYWORDS if k in first},
            series_uid=str(first.get("SeriesInstanceUID", "")),
            series_description=str(first.get("SeriesDescription", "")),
            padding_mask=np.stack(masks) if any(m.any() for m in masks) else None,
            files=[s[2] for s in slices],
        )
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{name}: inconsistent or corrupt series ({one_line(exc)})") from exc


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


def _to_hu(ds: Dataset, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU = stored·slope + intercept, with padded pixels set to −1000 HU."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{path}: not a single-channel image")
    try:
        stored = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise InputError(f"{path}: cannot decode pixel data ({one_line(exc)})") from exc
    if stored.ndim != 2:
        raise InputError(f"{path}: expected one 2-D frame, got pixel array {stored.shape}")
    slope = _rescale_value(ds, "RescaleSlope", path)
    intercept = _rescale_value(ds, "RescaleIntercept", path)
    if slope == 0.0:
        raise InputError(f"{path}: RescaleSlope is 0 (every pixel would be one HU value)")
    mask = np.zeros(stored.shape, dtype=bool)
    pad = ds.get("PixelPaddingValue")
    if pad is not None:
        limit = ds.get("PixelPaddingRangeLimit")
        lo, hi = (pad, pad) if limit is None else (min(pad, limit), max(pad, limit))
        mask = (stored >= lo) & (stored <= hi)
    hu = stored.astype(np.float64) * slope + intercept
    hu[mask] = PADDING_HU
    with np.errstate(over="ignore"):  # finite in float64 can still overflow float32
        hu = hu.astype(np.float32)
    if not np.isfinite(hu).all():
        raise InputError(f"{path}: rescaled values are not finite")
    return hu, mask


def _rescale_value(ds: Dataset, keyword: str, path: Path) -> float:
    """RescaleSlope or RescaleIntercept: Type 1 in the CT Image module, so present, one
    finite number (no default is guessed)."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise InputError(f"{path}: {keyword} is missing (required in CT images)")
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: {keyword} {value!r} is not a number") from exc
    if not np.isfinite(number):
        raise InputError(f"{path}: {keyword} {number} is not finite")
    return number


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
            return _check_spacing(number, keyword, path)
    return 1.0


def _check_spacing(value: float, what: str, where: object) -> float:
    """A pixel or slice spacing in mm must be finite, > 0 and <= MAX_SPACING_MM."""
    if not (np.isfinite(value) and 0.0 < value <= MAX_SPACING_MM):
        raise InputError(f"{where}: implausible {what} {value:.6g} mm (expected > 0 and "
                         f"<= {MAX_SPACING_MM:g} mm)")
    return float(value)


def _dicom_str(ds: Dataset, keyword: str) -> str:
    value = ds[keyword].value
    return "" if value is None else str(value)


def check_reference(reference: DicomVolume, shape: tuple[int, int, int],
                    pixel_size_mm: float, name: str, source: str) -> None:
    """Refuse a reference series (read from ``name``) that does not fit the reconstruction of
    ``source``, ``shape`` (slices, rows, columns) with ``pixel_size_mm`` pixels: one
    InputError naming every difference (matrix size, slice count, pixel spacing within
    0.01 %)."""
    slices, rows, cols = reference.hu.shape
    _, dy, dx = reference.spacing
    differences = []
    if (rows, cols) != (int(shape[1]), int(shape[2])):
        differences.append(f"matrix {rows}×{cols} vs {int(shape[1])}×{int(shape[2])}")
    if slices != int(shape[0]):
        differences.append(f"{slices} vs {int(shape[0])} slice(s)")
    if not np.allclose((dy, dx), pixel_size_mm, rtol=1e-4, atol=0.0):
        differences.append(f"pixel spacing {dy:.6g}×{dx:.6g} mm vs {pixel_size_mm:.6g} mm")
    if differences:
        raise InputError(f"{name}: reference series does not match the reconstruction of "
                         f"{source} (reference vs reconstruction: {'; '.join(differences)})")


# ---------------------------------------------------------------------------------- writing
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
) -> list[Path]:
    """Write ``hu_volume`` (slices, H, W) as a CT Image Storage series into ``folder``.

    ``reference`` (a series read by :func:`read_series`, or a mapping of
    :data:`REFERENCE_KEYWORDS` to DICOM strings, e.g. HDF5 metadata) supplies the patient,
    study and frame of reference.  ``derivation`` replaces the default
    DerivationDescription ("ctflow <version> reconstruction, method M, from V views").
    Returns the written file paths.
    """
    hu = np.asarray(hu_volume, dtype=np.float64)
    if hu.ndim == 2:
        hu = hu[None]
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError(f"{folder}: image volume must be (slices, H, W), got {hu.shape}")
    if not np.isfinite(hu).all():
        raise InputError(f"{folder}: image volume contains NaN or Inf")
    _check_spacing(float(pixel_spacing_mm), "pixel spacing", folder)
    _check_spacing(float(slice_spacing_mm), "slice spacing", folder)
    clipped = int(((hu < INT16_MIN) | (hu > INT16_MAX)).sum())
    if clipped:
        warnings.warn(f"{folder}: {clipped} pixels outside the int16 HU range were clipped",
                      stacklevel=2)
    stored = np.clip(np.rint(hu), INT16_MIN, INT16_MAX).astype("<i2")

    common = _common_dataset(reference, series_description, window, pixel_spacing_mm,
                             slice_spacing_mm, hu.shape)
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
    ds.SeriesDescription = description[:64]
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
