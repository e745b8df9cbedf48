"""The in-memory CT series (:class:`DicomVolume`), the constants shared by the DICOM reader
and writer, and the plausibility checks of geometry read from files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.uid import UID

from ..errors import InputError

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MEDIA_STORAGE_DIRECTORY = UID("1.2.840.10008.1.3.10")
#: HU given to padding pixels (PixelPaddingValue / PixelPaddingRangeLimit): air.
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


@dataclass
class DicomVolume:
    """A CT series as an HU volume.

    ``hu`` float32 (slices, H, W) in slice order (ascending position along the slice
    normal); ``spacing`` (dz, dy, dx) in mm, dz the median step between slice positions
    projected on the normal; ``positions`` (slices, 3) ImagePositionPatient in mm;
    ``orientation`` the 6 direction cosines; ``reference`` the patient/study/frame-of-
    reference attributes (DICOM strings) for pass-through.  ``padding_mask`` flags the
    pixels that were PixelPaddingValue (set to −1000 HU), None when there are none.
    ``slice_spacing_range`` (min, max) step in mm (equal for a regular series);
    ``tilt_deg`` the GantryDetectorTilt of the files (0 when absent), ``obliquity_deg`` the
    angle between the slice normal and the patient's z axis (18.5 for an 18.5° gantry
    tilt, 0 for axial slices); ``transfer_syntax`` the name(s) of the files' transfer
    syntax; ``kernel`` the ConvolutionKernel; ``notes`` one-line remarks for the user
    (tilt, irregular spacing, padding, lossy compression).
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
    slice_spacing_range: tuple[float, float] = (0.0, 0.0)
    tilt_deg: float = 0.0
    obliquity_deg: float = 0.0
    transfer_syntax: str = ""
    kernel: str = ""
    notes: list[str] = field(default_factory=list)


def check_spacing(value: float, what: str, where: object) -> float:
    """A pixel or slice spacing in mm must be finite, > 0 and <= MAX_SPACING_MM."""
    if not (np.isfinite(value) and 0.0 < value <= MAX_SPACING_MM):
        raise InputError(f"{where}: implausible {what} {value:.6g} mm (expected > 0 and "
                         f"<= {MAX_SPACING_MM:g} mm)")
    return float(value)


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
