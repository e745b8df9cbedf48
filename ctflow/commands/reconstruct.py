"""``ctflow reconstruct``: reconstruct every slice of a sinogram file and write the images
(HU) as HDF5, NumPy, PNG or a DICOM series."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CtflowError, InputError, PriorError
from ..solvers import SOLVERS

FORMATS = {".h5": "h5", ".hdf5": "h5", ".npy": "npy", ".png": "png"}

EPILOG = """\
Output formats (by OUT's extension, or --format):
  .h5 / .hdf5   /image in HU with the geometry, metadata and method attributes
  .npy          float32 HU array (slices, H, W)
  .png          8-bit image windowed by --window, slices side by side
  dicom         a folder holding a CT series (no extension, or --format dicom);
                --reference SERIES_DIR copies patient, study and frame of reference
                (--reference-series picks one series of a folder holding several)
Slices are reconstructed one by one (seed SEED+i for slice i).  The sinogram noise std
is taken from the file (attribute noise_std) unless --noise-std is given; methods with a
photons option (tv, mbir, conjugate, pigfm, otode, msflow, ...) get the file's photons
attribute, i.e. pre-log Poisson weights, unless --opt photons=N (null: unweighted).
When the file holds a ground truth /image, PSNR, SSIM and RMSE (HU) are printed per slice
and averaged.

examples:
  ctflow reconstruct sino.h5 --method fbp -o recon.png
  ctflow reconstruct sino.h5 --method conjugate --nfe 5 -o series/ --format dicom
"""


class FullHelp(argparse.Action):
    """``-h/--help``: the usage and options, then the shipped priors and every method's
    options with their defaults (read only now, so building the parser stays cheap)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from .help_catalog import methods_text, priors_text

        parser.epilog = f"{EPILOG}\n{priors_text()}\n{methods_text()}"
        parser.print_help()
        parser.exit()


HELP = "reconstruct images from a sinogram file"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reconstruct", help=HELP,
        description="Reconstruct the slices of an HDF5 sinogram file (ctflow, LoDoPaB-style "
        "or DXchange) with a classical or flow-prior method.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    p.add_argument("-h", "--help", action=FullHelp,
                   help="show this help, the shipped priors and each method's options, "
                   "then exit")
    p.add_argument("input", metavar="SINO.h5", help="HDF5 sinogram file")
    p.add_argument("--method", default="fbp", choices=list(SOLVERS), metavar="METHOD",
                   help="reconstruction method (default: fbp; methods and their options "
                   "below)")
    p.add_argument("--prior", default="default",
                   help="prior name or checkpoint path for the flow methods; it must serve "
                   "the sinogram's image size (default: default; shipped priors below)")
    p.add_argument("--nfe", type=int, default=None,
                   help="network-evaluation budget of the flow samplers (default: the "
                   "method's nfe, listed below)")
    p.add_argument("--posterior-samples", type=int, default=1, metavar="K",
                   help="flow methods: average this many posterior samples per slice (one "
                   "batch; K times the network work) — the posterior mean, lower error than "
                   "one sample (default: 1)")
    p.add_argument("--iters", type=int, default=None,
                   help="outer iterations of the iterative methods (default: the method's "
                   "iters, listed below)")
    p.add_argument("--seed", type=int, default=0, help="seed of slice 0 (default: 0)")
    p.add_argument("--noise-std", type=float, default=None,
                   help="std of the sinogram noise (default: the file's noise_std)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. w=8 (VALUE read as JSON, else text); "
                   "repeatable")
    p.add_argument("--backend", default="auto",
                   help="projector backend: auto, matrix, astra-cpu, astra-cuda "
                   "(default: auto)")
    p.add_argument("--preset", default=None,
                   help="geometry for files without one: 'lodopab', a geometry JSON text "
                   "or a .json file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (.h5, .npy, .png) or DICOM series folder")
    p.add_argument("--format", choices=["h5", "npy", "png", "dicom"], default=None,
                   help="output format (default: from OUT's extension)")
    p.add_argument("--reference", metavar="SERIES_DIR", default=None,
                   help="DICOM series whose patient, study and frame of reference the "
                   "output series takes (--format dicom only); its matrix size, slice "
                   "count and pixel spacing must match the reconstruction")
    p.add_argument("--reference-series", metavar="UID_OR_DESCRIPTION", default=None,
                   help="with --reference, when its folder holds several series: the one "
                   "to use, by SeriesInstanceUID or SeriesDescription (case-insensitive, "
                   "exact or a unique part); 'ctflow info SERIES_DIR' lists them")
    p.add_argument("--window", default="40,400", metavar="C,W",
                   help="display window centre,width in HU for PNG and DICOM "
                   "(default: 40,400, soft tissue)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--consistency", choices=["auto", "off"], default="auto",
                   help="auto: leave out dead or saturated views and detector columns, with "
                   "a warning; off: use the sinogram as it is (default: auto)")
    p.add_argument("--send", metavar="AE@HOST:PORT", default=None,
                   help="after writing the DICOM series, store it on this PACS by C-STORE "
                   "(--format dicom only; the local series is kept; exit 2 if any instance "
                   "was not stored)")
    p.add_argument("--calling-ae", default="CTFLOW",
                   help="this side's AE title for --send (default: CTFLOW)")
    p.set_defaults(func=run, input_args=("input", "reference", "prior", "preset"))


def run(args: argparse.Namespace) -> int:
    from ..io.atomic import check_output
    from ..io.hdf5 import read_sinogram
    from ..io.limits import check_quantity

    fmt = output_format(args.output, args.format)
    window = parse_window(args.window)
    options = parse_options(args.opt)
    if args.iters is not None:
        options["iters"] = args.iters
    if args.reference_series is not None and args.reference is None:
        raise InputError("--reference-series applies to --reference only")
    if args.reference is not None and fmt != "dicom":
        raise InputError("--reference applies to --format dicom only")
    peer = None
    if args.send is not None:  # a bad address fails before any reconstruction
        from ..node.address import check_ae_title, parse_peer

        if fmt != "dicom":
            raise InputError("--send applies to --format dicom only")
        peer = parse_peer(args.send)
        check_ae_title(args.calling_ae, "--calling-ae")
    if args.noise_std is not None:  # finite and >= 0 (ctflow.io.limits)
        args.noise_std = check_quantity("noise_std", args.noise_std, "--noise-std", "value")
    check_output(args.output, args.overwrite, folder=fmt == "dicom")
    reference = None
    if args.reference is not None:
        from ..io.dicom import read_series

        reference = read_series(args.reference, args.reference_series)
    data = read_sinogram(args.input, preset=args.preset)
    if reference is not None:  # an unrelated series is refused before any reconstruction
        from ..io.dicom import check_reference

        size = int(data.geometry.image_size)
        check_reference(reference, (int(data.sinogram.shape[0]), size, size),
                        float(data.geometry.pixel_size_mm), args.reference, args.input)
    for note in data.notes:  # e.g. which unit DXchange angles were assumed to be in
        print(f"ctflow reconstruct: note: {args.input}: {note}", file=sys.stderr)
    hu, records = reconstruct_slices(data, args, options)
    _report(args.input, hu, data.image_hu, records)
    write_output(args, fmt, hu, data, records, reference, window)
    print(f"wrote {args.output} ({fmt}, {hu.shape[0]} slice(s), method {args.method}, "
          f"{sum(r['seconds'] for r in records):.2f} s)")
    if peer is not None:
        from .send import send_folder

        print(send_folder(args.output, peer, argparse.Namespace(
            calling_ae=args.calling_ae, retries=2, backoff=1.0, timeout=30.0)))
    return 0


def output_format(output: str, fmt: str | None) -> str:
    """The output format: --format, else from the extension (none = DICOM folder)."""
    if fmt is not None:
        return fmt
    suffix = Path(output).suffix.lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    if suffix == "" or Path(output).is_dir():
        return "dicom"
    raise InputError(f"{output}: unknown output extension {suffix!r} (use .h5, .npy, .png, "
                     "or a folder with --format dicom)")


def parse_window(text: str) -> tuple[float, float]:
    """'C,W' → (centre, width) in HU; the width must be positive."""
    try:
        centre, width = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise InputError(f"--window {text!r}: expected CENTRE,WIDTH in HU, e.g. 40,400") from exc
    if not (np.isfinite(centre) and np.isfinite(width) and width > 0):
        raise InputError(f"--window {text!r}: width must be positive and values finite")
    return centre, width


def parse_options(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings → options; VALUE read as JSON (numbers, true/false), else text."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"--opt {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def reconstruct_slices(data, args: argparse.Namespace,
                       options: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Reconstruct each slice (progress bar over slices); returns HU (slices, H, W).  Methods
    with a ``task_family`` option get "ct" unless --opt sets it."""
    import torch
    from tqdm import tqdm

    from .. import load_prior, reconstruct
    from ..operators import make_ct_operator
    from ..solvers import get_solver
    from ..solvers.options import option_names
    from ..units import MU_WATER_PER_MM, mu_to_hu

    _, spec = get_solver(args.method)
    declared = option_names(spec.options)
    if "task_family" not in options and "task_family" in declared:
        options = {**options, "task_family": "ct"}  # sinograms: the CT-tuned defaults
    photons = data.attrs.get("photons")  # pre-log Poisson weights, unless --opt photons=...
    if photons is not None and "photons" not in options \
            and "photons" in declared:
        options = {**options, "photons": float(photons)}
    try:
        op = make_ct_operator(data.geometry, backend=args.backend)
    except (ValueError, RuntimeError) as exc:
        raise CtflowError(f"{args.input}: cannot build the projector ({exc})") from exc
    prior = load_prior(args.prior) if spec.needs_prior else None
    if prior is not None and not prior.supports_size(int(data.geometry.image_size)):
        from .help_catalog import size_mismatch_message

        raise PriorError(size_mismatch_message(args.input, args.prior, prior.sizes(),
                                               int(data.geometry.image_size)))
    noise_std = args.noise_std if args.noise_std is not None else data.attrs.get("noise_std")
    mu_water = float(data.attrs.get("mu_water_per_mm", MU_WATER_PER_MM))
    images, records = [], []
    for i in tqdm(range(data.sinogram.shape[0]), desc="reconstruct", unit="slice",
                  disable=None):
        y = torch.from_numpy(np.ascontiguousarray(data.sinogram[i]))[None, None]
        res = reconstruct(y, op, method=args.method, prior=prior, nfe=args.nfe,
                          noise_std=None if noise_std is None else float(noise_std),
                          seed=args.seed + i, posterior_samples=args.posterior_samples,
                          **{"consistency": args.consistency, **options})
        for warning in res.info.get("warnings", []):  # e.g. dead views left out
            tqdm.write(f"ctflow: warning: {args.input}: slice {i}: {warning}", file=sys.stderr)
        for note in res.info.get("notes", []):  # e.g. the noise level estimated from the data
            tqdm.write(f"ctflow: {args.input}: slice {i}: {note}", file=sys.stderr)
        mu = res.image.detach().cpu().double().numpy()[0, 0]
        images.append(mu_to_hu(mu, mu_water).astype(np.float32))
        records.append({"nfe": int(res.nfe), "seconds": float(res.seconds)})
    return np.stack(images), records


def _report(source: str, hu: np.ndarray, gt: np.ndarray | None,
            records: list[dict[str, Any]]) -> None:
    """Print PSNR / SSIM / RMSE per slice and their means when a ground truth exists."""
    if gt is None:
        return
    from ..metrics import evaluate

    scores = [evaluate(x, g) for x, g in zip(hu, gt, strict=True)]
    for record, score in zip(records, scores, strict=True):
        record.update(score)
    print(f"{'slice':>5} {'PSNR dB':>8} {'SSIM':>6} {'RMSE HU':>8}")
    for i, s in enumerate(scores):
        print(f"{i:>5} {s['psnr']:8.2f} {s['ssim']:6.3f} {s['rmse_hu']:8.1f}")
    mean = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    print(f"{'mean':>5} {mean['psnr']:8.2f} {mean['ssim']:6.3f} {mean['rmse_hu']:8.1f}")


def window_uint8(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Linear display window: [C − W/2, C + W/2] → [0, 255], clipped, rounded."""
    centre, width = window
    scaled = (hu.astype(np.float64) - (centre - width / 2)) / width * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def write_output(args: argparse.Namespace, fmt: str, hu: np.ndarray, data,
                 records: list[dict[str, Any]], reference, window: tuple[float, float]) -> None:
    """Write the HU volume atomically in the chosen format."""
    from ..io.atomic import atomic_file

    if fmt == "dicom":
        from ..io.dicom import write_series

        slice_mm = float(reference.spacing[0] if reference is not None
                         else data.metadata.get("SliceSpacingMM", data.geometry.pixel_size_mm))
        write_series(args.output, hu, float(data.geometry.pixel_size_mm), slice_mm,
                     method=args.method, views=int(data.sinogram.shape[1]),
                     reference=reference if reference is not None else data.metadata,
                     series_description=f"ctflow {args.method} reconstruction",
                     window=window, overwrite=args.overwrite)
    elif fmt == "h5":
        from ..io.hdf5 import ReconstructionFile, write_reconstruction

        attrs = {"method": args.method, "source_file": Path(args.input).name,
                 "nfe": [r["nfe"] for r in records],
                 "seconds": [r["seconds"] for r in records], "seed": args.seed,
                 "options": json.dumps({"nfe": args.nfe, **parse_options(args.opt),
                                        "iters": args.iters})}
        if args.method in SOLVERS and SOLVERS[args.method].needs_prior:
            attrs["prior"] = args.prior
        write_reconstruction(args.output, ReconstructionFile(hu, data.geometry, data.metadata,
                                                             attrs), args.overwrite)
    elif fmt == "npy":
        with atomic_file(args.output, args.overwrite) as tmp, open(tmp, "wb") as fh:
            np.save(fh, hu.astype(np.float32))
    else:
        from PIL import Image

        mosaic = np.concatenate(list(window_uint8(hu, window)), axis=1)
        with atomic_file(args.output, args.overwrite) as tmp, open(tmp, "wb") as fh:
            Image.fromarray(mosaic).save(fh, format="PNG")
