"""``ctflow info``: describe an HDF5 sinogram / reconstruction file or a DICOM CT series."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import InputError

NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file
UNITS = {"pixel_size_mm": "mm", "det_spacing_mm": "mm", "source_origin_mm": "mm",
         "origin_det_mm": "mm", "image_size": "px", "det_count": "bins"}


HELP = "describe a sinogram/reconstruction file or a DICOM series"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info", help=HELP,
        description="Print shapes, geometry, units, value ranges, ground truth and noise model "
        "of an HDF5 file (ctflow, LoDoPaB-style, DXchange), the shape, type and HU range of a "
        "NumPy .npy array (as 'ctflow reconstruct -o OUT.npy' writes), or a DICOM folder: "
        "every series in it (UID, description, modality, slices, size, kernel, transfer "
        "syntax, gantry tilt), then the details of the only one or of the one --series "
        "names (HU range, spacing and its variation, orientation, tilt, padding, notes).")
    p.add_argument("path", metavar="FILE_OR_FOLDER",
                   help="HDF5 file, NumPy .npy file or DICOM series folder")
    p.add_argument("--series", default=None, metavar="UID_OR_DESCRIPTION",
                   help="DICOM folder with several series: describe this one in detail "
                   "(its SeriesInstanceUID, or its SeriesDescription, case-insensitive, "
                   "exact or a unique part); every series is listed either way")
    p.add_argument("--preset", default=None,
                   help="geometry for files without one: 'lodopab', a geometry JSON text "
                   "or a .json file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if args.series is not None and not path.is_dir():
        raise InputError(f"{args.path}: --series applies to a DICOM folder")
    if path.is_dir():
        lines = describe_series(args.path, args.series)
    elif path.is_file():
        if _is_dicom_file(path):
            raise InputError(f"{args.path}: a single DICOM file; pass its series folder")
        if _starts_with(path, NPY_MAGIC):
            lines = describe_npy(args.path)
        else:
            lines = describe_hdf5(args.path, args.preset)
    else:
        raise InputError(f"{args.path}: no such file or folder")
    print("\n".join(lines))
    return 0


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(magic)) == magic
    except OSError:
        return False


def describe_npy(path: str) -> list[str]:
    """Shape, dtype and value range of a NumPy array file; 'ctflow reconstruct' writes HU
    images (slices, H, W) float32.  Read with allow_pickle=False: nothing is unpickled."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable NumPy .npy array ({exc})") from exc
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InputError(f"{path}: holds {array.dtype} values, not real numbers")
    layout = {2: " (H, W)", 3: " (slices, H, W)"}.get(array.ndim, "")
    lines = [f"{path}: NumPy array (.npy)",
             f"array             {tuple(array.shape)} {array.dtype}{layout}"]
    finite = np.isfinite(array)
    if finite.any():
        lines.append(f"values            {_range(np.asarray(array)[finite], 'HU')} "
                     "(ctflow reconstruct writes HU)")
    else:
        lines.append("values            none finite")
    bad = int(array.size - np.count_nonzero(finite))
    if bad:
        lines.append(f"non-finite        {bad} values (NaN or Inf)")
    return lines


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _range(a: np.ndarray, unit: str) -> str:
    return f"[{float(a.min()):.4g}, {float(a.max()):.4g}] {unit}".rstrip()


def describe_geometry(geometry) -> list[str]:
    spec = json.loads(geometry.to_json())
    lines = ["geometry:"]
    for key, value in spec.items():
        if value is not None:
            lines.append(f"  {key:<18}{value} {UNITS.get(key, '')}".rstrip())
    angles = np.asarray(geometry.angles)
    lines.append(f"  {'angles':<18}{len(angles)} views, "
                 f"{np.degrees(angles.min()):.4g}° … {np.degrees(angles.max()):.4g}°")
    return lines


def describe_hdf5(path: str, preset: str | None) -> list[str]:
    from ..io.hdf5 import file_kind, read_reconstruction, read_sinogram

    kind = file_kind(path)
    if kind == "reconstruction":
        rec = read_reconstruction(path)
        lines = [f"{path}: ctflow reconstruction (HDF5, format 1)",
                 f"image             {rec.image_hu.shape} float32 (slices, H, W), "
                 f"{_range(rec.image_hu, 'HU')}"]
        lines += describe_geometry(rec.geometry)
        lines += [f"{k:<18}{v}" for k, v in rec.attrs.items() if k != "content"]
        lines += _metadata(rec.metadata)
        return lines
    data = read_sinogram(path, preset=preset)
    lines = [f"{path}: sinogram file, layout {data.layout}",
             f"sinogram          {data.sinogram.shape} float32 (slices, views, detectors), "
             f"post-log line integrals, {_range(data.sinogram, '')}"]
    lines += describe_geometry(data.geometry)
    if data.image_hu is not None:
        lines.append(f"ground truth      {data.image_hu.shape} float32 HU, "
                     f"{_range(data.image_hu, 'HU')}")
    else:
        lines.append("ground truth      none")
    model = data.attrs.get("noise_model", "unknown")
    detail = [f"{k} {data.attrs[k]}" for k in ("photons", "noise", "noise_std", "seed")
              if k in data.attrs]
    lines.append(f"noise model       {model}" + (f" ({', '.join(detail)})" if detail else ""))
    others = {k: v for k, v in data.attrs.items()
              if k not in ("noise_model", "photons", "noise", "noise_std", "seed")}
    lines += [f"{k:<18}{v}" for k, v in others.items()]
    lines += [f"note              {n}" for n in data.notes]
    lines += _metadata(data.metadata)
    return lines


def _metadata(metadata: dict) -> list[str]:
    if not metadata:
        return []
    return ["metadata:"] + [f"  {k:<26}{v}" for k, v in metadata.items()]


def describe_series(folder: str, series: str | None = None) -> list[str]:
    """Every series of the folder (one line each), then the details of one: the only
    series, or the one ``series`` names (UID or description)."""
    from ..io.dicom import list_series, read_series, select_series

    infos = list_series(folder)
    lines = [f"{folder}: {len(infos)} DICOM series"]
    lines += [f"  [{k}] {_series_line(info)}" for k, info in enumerate(infos, 1)]
    if len(infos) > 1 and series is None:
        lines.append("details: choose one with --series UID_OR_DESCRIPTION")
        return lines
    chosen = select_series(folder, infos, series)
    vol = read_series(folder, chosen.uid)
    return lines + _volume_lines(folder, vol)


def _series_line(info) -> str:
    """UID, description, modality, slices, size, kernel, transfer syntax, tilt."""
    return (f"{info.uid or '(no UID)'}  '{info.description}'  {info.modality}  "
            f"{len(info.files)} slice(s)  {info.size}  kernel {info.kernel or '-'}  "
            f"{info.transfer_syntax}  tilt {info.tilt_deg:.4g}°")


def _volume_lines(folder: str, vol) -> list[str]:
    dz, dy, dx = vol.spacing
    lo, hi = vol.slice_spacing_range
    lines = [f"{folder}: DICOM CT series, {len(vol.files)} file(s)",
             f"series uid        {vol.series_uid}",
             f"description       {vol.series_description}",
             f"volume            {vol.hu.shape} (slices, rows, columns), "
             f"{_range(vol.hu, 'HU')}",
             f"spacing           {dz:.4g} × {dy:.4g} × {dx:.4g} mm (slice, row, column)",
             f"slice steps       {lo:.4g} … {hi:.4g} mm (along the slice normal)",
             f"orientation       {' '.join(f'{v:.4g}' for v in vol.orientation)}",
             f"gantry tilt       {vol.tilt_deg:.4g}° (slice normal {vol.obliquity_deg:.4g}° "
             "from the patient axis)",
             f"first position    {' '.join(f'{v:.4g}' for v in vol.positions[0])} mm",
             f"kernel            {vol.kernel or '-'}",
             f"transfer syntax   {vol.transfer_syntax}",
             f"padding pixels    "
             f"{0 if vol.padding_mask is None else int(vol.padding_mask.sum())}"]
    for key in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID"):
        if key in vol.reference:
            lines.append(f"{key:<19} {vol.reference[key]}")
    lines += [f"note              {n}" for n in vol.notes]
    return lines
