"""CT DICOM series in and out (pydicom): the public names of the DICOM layer.

* :func:`read_series` (:mod:`.dicom_read`): one CT series of a folder as an HU volume
  (:class:`DicomVolume`), whatever transfer syntax pydicom and its installed plugins
  decode (:mod:`.dicom_pixels`), sorted along the slice normal, tilted-gantry and
  irregularly spaced series included; padding pixels become −1000 HU (air) and are
  flagged in ``padding_mask``.
* :func:`list_series` / :func:`select_series` (:mod:`.dicom_series`): the series of a
  folder and the choice of one by SeriesInstanceUID or SeriesDescription.
* :func:`write_series` (:mod:`.dicom_write`): a reconstructed volume as a derived CT
  series that passes dciodvfy without errors or warnings; :func:`check_reference` refuses
  a reference series that does not fit a reconstruction.
"""

from __future__ import annotations

from .dicom_read import read_series
from .dicom_series import SeriesInfo, list_series, select_series
from .dicom_volume import (
    CT_IMAGE_STORAGE,
    INT16_MAX,
    INT16_MIN,
    MAX_POSITION_MM,
    MAX_SPACING_MM,
    PADDING_HU,
    REFERENCE_KEYWORDS,
    DicomVolume,
    check_reference,
)
from .dicom_write import write_series

__all__ = [
    "CT_IMAGE_STORAGE", "INT16_MAX", "INT16_MIN", "MAX_POSITION_MM", "MAX_SPACING_MM",
    "PADDING_HU", "REFERENCE_KEYWORDS", "DicomVolume", "SeriesInfo", "check_reference",
    "list_series", "read_series", "select_series", "write_series",
]
