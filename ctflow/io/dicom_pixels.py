"""Pixel data of one CT file: decoding and the HU it holds.

Decoding is pydicom's, with its plugins: native and deflated little endian, explicit big
endian and RLE lossless need nothing more; JPEG baseline/extended/lossless (process 14,
SV1), JPEG-LS (lossless and near-lossless), JPEG 2000 (lossless and lossy) and HTJ2K need
the pylibjpeg plugins (pylibjpeg-libjpeg, pylibjpeg-openjpeg) or gdcm.  A transfer syntax
nothing installed decodes is refused in one line that names it and what is missing.

HU = stored·RescaleSlope + RescaleIntercept (both Type 1 in the CT Image module; a file
without them, or with slope 0 or a non-finite value, is refused).  RescaleType, when
present, must be HU (CT images state it only when the values are not HU, so anything
else is refused rather than guessed).  Padding: stored values equal to PixelPaddingValue,
or within [PixelPaddingValue, PixelPaddingRangeLimit], mark pixels outside the scanned
field of view (GE writes −1500 or −2000 there).  They become −1000 HU (air), which is what
the scanner's field of view saw around the patient and what a forward projection of the
slice must see, and they are flagged in a mask so callers can exclude them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..errors import InputError
from .atomic import one_line
from .dicom_volume import PADDING_HU


def read_full(path: Path) -> Dataset:
    """The whole dataset of a CT file that has pixel data (checked to be CT)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(f"{path}: corrupt DICOM file ({one_line(exc)})") from exc
    modality = str(ds.get("Modality", "") or "").strip()
    if modality != "CT":
        raise InputError(f"{path}: modality {modality or '(none)'} is not CT")
    if "PixelData" not in ds:
        raise InputError(f"{path}: CT file without pixel data")
    return ds


def check_decoder(ds: Dataset, path: Path) -> None:
    """Refuse, in one line naming the transfer syntax, pixel data nothing installed can
    decode (a syntax pydicom has no decoder for, or one whose plugins are missing)."""
    uid = UID(str(ds.file_meta.get("TransferSyntaxUID", "") or ""))
    if not uid:
        raise InputError(f"{path}: no TransferSyntaxUID in the file meta information")
    if not uid.is_transfer_syntax:
        raise InputError(f"{path}: unknown transfer syntax {uid}")
    if not uid.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise InputError(f"{path}: transfer syntax {uid.name} ({uid}) cannot be decoded: "
                         "pydicom has no decoder for it") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise InputError(f"{path}: transfer syntax {uid.name} ({uid}) cannot be decoded: "
                         f"no decoder installed ({missing})")


def to_hu(ds: Dataset, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU = stored·slope + intercept (float32), padded pixels set to −1000 HU; returns the
    image and the padding mask."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError(f"{path}: not a single-channel image")
    check_decoder(ds, path)
    try:
        stored = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise InputError(f"{path}: cannot decode pixel data ({_syntax(ds)}: "
                         f"{one_line(exc)})") from exc
    if stored.ndim != 2:
        raise InputError(f"{path}: expected one 2-D frame, got pixel array {stored.shape}")
    if not np.issubdtype(stored.dtype, np.integer):
        raise InputError(f"{path}: pixel data of type {stored.dtype}; CT stores integers")
    _check_rescale_type(ds, path)
    slope = rescale_value(ds, "RescaleSlope", path)
    intercept = rescale_value(ds, "RescaleIntercept", path)
    if slope == 0.0:
        raise InputError(f"{path}: RescaleSlope is 0 (every pixel would be one HU value)")
    mask = padding_mask(ds, stored, path)
    hu = stored.astype(np.float64) * slope + intercept
    hu[mask] = PADDING_HU
    with np.errstate(over="ignore"):  # finite in float64 can still overflow float32
        hu = hu.astype(np.float32)
    if not np.isfinite(hu).all():
        raise InputError(f"{path}: rescaled values are not finite")
    return hu, mask


def _syntax(ds: Dataset) -> str:
    uid = UID(str(ds.file_meta.get("TransferSyntaxUID", "") or ""))
    return f"transfer syntax {uid.name if uid.is_transfer_syntax else uid}"


def _check_rescale_type(ds: Dataset, path: Path) -> None:
    value = str(ds.get("RescaleType", "") or "").strip()
    if value and value.upper() != "HU":
        raise InputError(f"{path}: RescaleType {value!r}: the rescaled values are not HU "
                         "(ctflow needs Hounsfield units)")


def padding_mask(ds: Dataset, stored: np.ndarray, path: Path) -> np.ndarray:
    """True where the stored value is PixelPaddingValue or within [PixelPaddingValue,
    PixelPaddingRangeLimit] (either order), both read in the stored value's signedness."""
    pad = _stored_value(ds, "PixelPaddingValue", path)
    if pad is None:
        return np.zeros(stored.shape, dtype=bool)
    limit = _stored_value(ds, "PixelPaddingRangeLimit", path)
    lo, hi = (pad, pad) if limit is None else (min(pad, limit), max(pad, limit))
    return (stored >= lo) & (stored <= hi)


def _stored_value(ds: Dataset, keyword: str, path: Path) -> int | None:
    """A US/SS pixel value attribute as a stored value; an unsigned 16-bit reading of a
    signed image's value (e.g. 63536 for −2000) is converted back to signed."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, bytes) and len(value) == 2:  # VR left undetermined
        value = int.from_bytes(value, "little", signed=False)
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: {keyword} {value!r} is not an integer") from exc
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1 and number >= 2 ** (bits - 1):
        number -= 2 ** bits
    return number


def rescale_value(ds: Dataset, keyword: str, path: Path) -> float:
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
