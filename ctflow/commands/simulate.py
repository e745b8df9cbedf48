"""``ctflow simulate``: a sinogram file (HDF5, ctflow layout v1) from a phantom or a DICOM
series, with its ground truth in HU and the noise settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

EPILOG = """\
The ground truth goes to /image (HU), the noise model to the root attributes noise_model,
photons / noise, noise_std (the std of the sinogram noise, which 'ctflow reconstruct'
passes to the solver) and seed.  With --slices N the phantom slices use seeds
SEED … SEED+N−1.  With --from-dicom the image size and pixel size come from the series
(square images only) and its patient/study attributes go to /metadata; --series picks
one series of a folder that holds several (by UID or description).

examples:
  ctflow simulate --phantom chest --views 60 --photons 1e5 -o sino.h5
  ctflow simulate --from-dicom series/ --views 60 -o sino.h5
"""


HELP = "simulate a sinogram file from a phantom or a DICOM series"
PHANTOM_KINDS = ("chest", "abdomen", "head")
"""ctflow.phantoms.KINDS, repeated here so the parser is built without importing torch."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate", help=HELP,
        description="Simulate post-log CT measurements of a procedural phantom or of a DICOM "
        "CT series and write them, with the ground truth, to an HDF5 sinogram file.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--phantom", choices=PHANTOM_KINDS, default=None,
                     help="procedural phantom kind (default: chest)")
    src.add_argument("--from-dicom", metavar="SERIES_DIR", default=None,
                     help="a DICOM CT series folder to use as the ground truth (any transfer "
                     "syntax pydicom's plugins decode; tilted slices are used as they are)")
    p.add_argument("--series", default=None, metavar="UID_OR_DESCRIPTION",
                   help="with --from-dicom, when the folder holds several series: the one "
                   "to use, by SeriesInstanceUID or SeriesDescription (case-insensitive, "
                   "exact or a unique part); 'ctflow info FOLDER' lists them")
    p.add_argument("--size", type=int, default=None,
                   help="phantom image size in pixels (default: the image size of the "
                   "default prior, so 'ctflow reconstruct' works with it as is)")
    p.add_argument("--pixel-size", type=float, default=None, metavar="MM",
                   help="phantom pixel size in mm (default: 1.0; a series uses its own)")
    p.add_argument("--slices", type=int, default=1, help="phantom slices (default: 1)")
    p.add_argument("--views", type=int, default=60, help="projection views (default: 60)")
    p.add_argument("--fan", action="store_true",
                   help="fan beam over [0, 2π) instead of parallel beam over [0, π)")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--photons", type=float, default=None,
                       help="Poisson noise with this many incident photons per ray, e.g. 1e5")
    noise.add_argument("--noise", type=float, default=None,
                       help="Gaussian noise with std = NOISE × RMS(sinogram), e.g. 0.01")
    p.add_argument("--seed", type=int, default=0, help="phantom and noise seed (default: 0)")
    p.add_argument("--backend", default="auto",
                   help="projector backend: auto, matrix, astra-cpu, astra-cuda "
                   "(default: auto)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.h5",
                   help="output HDF5 sinogram file (.h5 or .hdf5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run, input_args=("from_dicom",))


def run(args: argparse.Namespace) -> int:
    from ..io.atomic import check_output
    from ..io.hdf5 import SinogramFile, write_sinogram

    _check_args(args)
    out = check_output(args.output, args.overwrite)
    if args.from_dicom is not None:
        hu, pixel_mm, metadata, source = _from_dicom(args.from_dicom, args.series)
    else:
        hu, pixel_mm, metadata, source = _from_phantom(args)
    op = _operator(args, hu.shape[-1], pixel_mm)
    sino, attrs = _measure(hu, op, args)
    attrs["source"] = source
    data = SinogramFile(sinogram=sino, geometry=op.geometry, image_hu=hu, metadata=metadata,
                        attrs=attrs)
    write_sinogram(out, data, overwrite=args.overwrite)
    noise = "noiseless" if attrs["noise_model"] == "none" else \
        f"{attrs['noise_model']} noise, std {attrs['noise_std']:.4g}"
    print(f"wrote {out}: {sino.shape[0]} slice(s), {sino.shape[1]} views × {sino.shape[2]} "
          f"detectors, {noise}")
    return 0


OUTPUT_SUFFIXES = (".h5", ".hdf5")


def _check_args(args: argparse.Namespace) -> None:
    suffix = Path(args.output).suffix
    if suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"{args.output}: simulate writes an HDF5 sinogram file; name the "
                         f"output .h5 or .hdf5 (got {suffix or 'no extension'!r})")
    checks = [(args.views >= 1, "--views must be >= 1"),
              (args.slices >= 1, "--slices must be >= 1"),
              (args.size is None or args.size >= 4, "--size must be >= 4"),
              (args.pixel_size is None or args.pixel_size > 0, "--pixel-size must be > 0"),
              (args.photons is None or args.photons > 0, "--photons must be > 0"),
              (args.noise is None or args.noise >= 0, "--noise must be >= 0")]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    from ..io.limits import check_quantity  # finite and physically plausible

    for flag, quantity, value in (("--pixel-size", "pixel_size_mm", args.pixel_size),
                                  ("--photons", "photons", args.photons),
                                  ("--noise", "noise", args.noise)):
        if value is not None:
            check_quantity(quantity, value, flag, "value")
    if args.series is not None and args.from_dicom is None:
        raise InputError("--series applies to --from-dicom only")
    if args.from_dicom is not None:
        for flag, value in (("--size", args.size), ("--pixel-size", args.pixel_size)):
            if value is not None:
                raise InputError(f"{flag} applies to phantoms; a series keeps its own")
        if args.slices != 1:
            raise InputError("--slices applies to phantoms; a series keeps its own")


def _from_phantom(args: argparse.Namespace) -> tuple[np.ndarray, float, dict[str, Any], str]:
    from ..phantoms import phantom
    from .help_catalog import prior_image_size

    kind = args.phantom or "chest"
    size = args.size or prior_image_size("default")
    hu = np.stack([phantom(kind, size, args.seed + i) for i in range(args.slices)])
    return hu.astype(np.float32), args.pixel_size or 1.0, {}, f"phantom:{kind}"


def _from_dicom(folder: str, series: str | None = None
                ) -> tuple[np.ndarray, float, dict[str, Any], str]:
    from ..io.dicom import read_series

    vol = read_series(folder, series)
    slices, rows, cols = vol.hu.shape
    dz, dy, dx = vol.spacing
    if rows != cols:
        raise InputError(f"{folder}: images are {rows}×{cols}; only square images are "
                         "supported")
    if abs(dx - dy) > 1e-3 * dx:
        raise InputError(f"{folder}: pixels are {dy}×{dx} mm; only square pixels are "
                         "supported")
    metadata: dict[str, Any] = dict(vol.reference)
    metadata.update(SourceSeriesInstanceUID=vol.series_uid,
                    SourceSeriesDescription=vol.series_description,
                    SliceSpacingMM=float(dz),
                    ImageOrientationPatient=[float(v) for v in vol.orientation],
                    ImagePositionPatient=[float(v) for v in vol.positions[0]],
                    GantryDetectorTilt=float(vol.tilt_deg))
    for note in vol.notes:  # e.g. tilted slices, padding set to air
        print(f"ctflow simulate: note: {folder}: {note}", file=sys.stderr)
    return vol.hu, float(dx), metadata, "dicom"


def _operator(args: argparse.Namespace, size: int, pixel_mm: float):
    from ..operators import FanBeam2D, ParallelBeam2D

    cls = FanBeam2D if args.fan else ParallelBeam2D
    try:
        return cls(image_size=size, views=args.views, pixel_size_mm=pixel_mm,
                   backend=args.backend)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"cannot build the {cls.__name__} operator: {exc}") from exc


def _measure(hu: np.ndarray, op, args: argparse.Namespace) -> tuple[np.ndarray, dict[str, Any]]:
    """Sinograms of every slice (progress bar over slices) and the noise attributes."""
    import torch

    from ..simulate import noise_std, simulate_volume
    from ..units import MU_WATER_PER_MM

    bar = sys.stderr.isatty()  # progress bar over slices on a terminal only
    noisy = args.photons is not None or bool(args.noise)
    clean = simulate_volume(hu, op, seed=args.seed, progress=bar and not noisy)
    sino = simulate_volume(hu, op, photons=args.photons, noise=args.noise, seed=args.seed,
                           progress=bar) if noisy else clean
    std = noise_std(torch.from_numpy(np.asarray(clean)), args.photons, args.noise)
    model = "poisson" if args.photons is not None else "gaussian" if args.noise else "none"
    attrs: dict[str, Any] = {"noise_model": model, "noise_std": float(std), "seed": args.seed,
                             "mu_water_per_mm": MU_WATER_PER_MM}
    if args.photons is not None:
        attrs["photons"] = float(args.photons)
    if args.noise:
        attrs["noise"] = float(args.noise)
    return np.asarray(sino, dtype=np.float32), attrs
