"""Fuzz the file readers: seeded mutations of valid examples, each read in a worker process.

Readers:

* ``hdf5``  — the read path of ``ctflow info`` / ``ctflow reconstruct``
  (:func:`ctflow.io.hdf5.file_kind`, then ``read_reconstruction`` or ``read_sinogram``),
  on the sinogram files in data/examples/ plus generated fan-beam, reconstruction,
  DXchange and LoDoPaB-style files;
* ``dicom`` — :func:`ctflow.io.dicom.read_series` on data/examples/phantom_series and on
  pydicom's ``CT_small.dcm`` (one file of the series mutated per case).

Each case is a seeded mutation (bit flips, random bytes, an overwritten 8-byte run, a
truncation, an integer written into a header field near a structure signature or a DICOM
tag, or a semantic edit of an attribute / element value through h5py / pydicom).  Cases
run in a pool of forked worker processes; a case that runs longer than ``--timeout`` is a
hang (its worker is killed and replaced), a worker that dies is a crash.  Outcomes:

  ok         read, and the result is valid (finite data, shapes match the geometry,
             every physical value inside its range in ctflow.io.limits)
  clean      a one-line ctflow error (CtflowError)
  traceback  any other exception
  invalid    read without error but the result is not valid
  hang, crash

Prints one table (and with --messages how often each clean error came), lists clean errors
that a catch-all made of an exception raised in ctflow's own code (likely bugs), and exits
1 on any traceback, invalid, hang or crash.  Needs os.fork.  Usage:
    python scripts/fuzz_readers.py [--cases 1000] [--seed 0] [--readers hdf5,dicom]
                                   [--jobs 2] [--timeout 30] [--messages]
                                   [--save-failures DIR]
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "data" / "examples"
OUTCOMES = ("ok", "clean", "traceback", "invalid", "hang", "crash")
FAILURES = ("traceback", "invalid", "hang", "crash")
KINDS = ("flip", "bytes", "run8", "truncate", "field", "semantic")
INTERESTING_INTS = (0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31,
                    2**32 - 1, 2**63 - 1, 2**64 - 1)
INTERESTING_VALUES: tuple[Any, ...] = (0, -1, 1e-300, 1e300, float("nan"), float("inf"),
                                       -float("inf"), 2**31, 2**62, "", "x", None, [1, 2],
                                       True, 0.5, 1e6)
HDF5_SIGNATURES = (b"TREE", b"HEAP", b"SNOD", b"GCOL", b"OHDR", b"OCHK", b"\x89HDF")
HDF5_NAMES = (b"geometry", b"ctflow_format", b"noise_std", b"mu_water_per_mm", b"sinogram",
              b"angles", b"image", b"units", b"exchange", b"theta", b"data")
DICOM_TAGS = ((0x0002, 0x0010), (0x0008, 0x0060), (0x0020, 0x000E), (0x0020, 0x0032),
              (0x0020, 0x0037), (0x0028, 0x0002), (0x0028, 0x0004), (0x0028, 0x0010),
              (0x0028, 0x0011), (0x0028, 0x0030), (0x0028, 0x0100), (0x0028, 0x0101),
              (0x0028, 0x0102), (0x0028, 0x0103), (0x0028, 0x0120), (0x0028, 0x1052),
              (0x0028, 0x1053), (0x7FE0, 0x0010), (0x0018, 0x0050), (0x0018, 0x0088))
DICOM_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                  "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
                  "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
                  "RescaleSlope", "RescaleIntercept", "PixelPaddingValue", "SliceThickness",
                  "SpacingBetweenSlices", "NumberOfFrames", "Modality", "SeriesInstanceUID",
                  "PixelData")


# ------------------------------------------------------------------------------ the seeds
@dataclass
class Seed:
    """A valid input: the bytes of each file (one for HDF5, a series for DICOM)."""

    name: str
    files: dict[str, bytes]
    preset: str | None = None


def hdf5_seeds(work: Path) -> list[Seed]:
    """The example sinograms plus generated fan, reconstruction, DXchange and LoDoPaB files."""
    import h5py

    from ctflow.io.hdf5 import (
        ReconstructionFile,
        SinogramFile,
        read_sinogram,
        write_reconstruction,
        write_sinogram,
    )
    from ctflow.operators import CTGeometry

    seeds = [Seed(p.name, {p.name: p.read_bytes()}) for p in sorted(EXAMPLES.glob("*.h5"))]
    rng = np.random.default_rng(0)
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    fan = CTGeometry("fan", 16, 1.0, 24, 1.5, 100.0, 50.0, angles)
    write_sinogram(work / "fan.h5", SinogramFile(
        rng.random((2, 12, 24)).astype(np.float32), fan, np.zeros((2, 16, 16), np.float32),
        {"PatientID": "FUZZ", "SliceSpacingMM": 2.0},
        {"noise_model": "gaussian", "noise": 0.01, "noise_std": 0.02, "photons": 1e5,
         "mu_water_per_mm": 0.0192}))
    chest = read_sinogram(EXAMPLES / "chest64_60v.h5")
    write_reconstruction(work / "recon.h5", ReconstructionFile(
        chest.image_hu, chest.geometry, {"PatientID": "FUZZ"}, {"method": "fbp"}))
    with h5py.File(work / "dxchange.h5", "w") as f:
        ex = f.create_group("exchange")
        ex.create_dataset("data", data=rng.integers(100, 900, (12, 2, 16)).astype(np.uint16))
        ex.create_dataset("data_white", data=np.full((2, 2, 16), 1000, np.uint16))
        ex.create_dataset("data_dark", data=np.full((2, 2, 16), 10, np.uint16))
        ex.create_dataset("theta", data=np.linspace(0, 180, 12, endpoint=False))
        ex["theta"].attrs["units"] = "degrees"
    with h5py.File(work / "lodopab.h5", "w") as f:
        f.create_dataset("data", data=rng.random((2, 12, 16)).astype(np.float32),
                         chunks=(1, 12, 16), compression="gzip")
    lodopab = json.dumps({"type": "parallel", "image_size": 16, "pixel_size_mm": 1.0,
                          "det_count": 16, "det_spacing_mm": 1.0, "source_origin_mm": None,
                          "origin_det_mm": None})
    for name in ("fan.h5", "recon.h5", "dxchange.h5", "lodopab.h5"):
        seeds.append(Seed(name, {name: (work / name).read_bytes()},
                          lodopab if name == "lodopab.h5" else None))
    return seeds


def dicom_seeds() -> list[Seed]:
    """The example phantom series and pydicom's CT_small.dcm."""
    seeds = [Seed("phantom_series", {p.name: p.read_bytes()
                                     for p in sorted((EXAMPLES / "phantom_series").iterdir())})]
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("CT_small.dcm")
        if path:
            seeds.append(Seed("CT_small", {"CT_small.dcm": Path(path).read_bytes()}))
    except Exception:  # pydicom's test files are optional
        pass
    return seeds


# -------------------------------------------------------------------------- the mutations
def mutate_bytes(data: bytes, kind: str, rng: np.random.Generator,
                 anchors: list[int]) -> bytes:
    """One raw mutation of ``data``; ``anchors`` are offsets of header structures."""
    buf = bytearray(data)
    n = len(buf)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            buf[int(rng.integers(n))] ^= 1 << int(rng.integers(8))
    elif kind == "bytes":
        for _ in range(int(rng.integers(1, 9))):
            buf[int(rng.integers(n))] = int(rng.integers(256))
    elif kind == "run8":
        at = int(rng.integers(max(n - 8, 1)))
        fill = rng.choice(["random", "zero", "ones", "big"])
        run = {"random": rng.integers(0, 256, 8).astype(np.uint8).tobytes(),
               "zero": bytes(8), "ones": b"\xff" * 8,
               "big": int(rng.choice([2**31, 2**32 - 1, 2**40, 2**63 - 1])).to_bytes(8, "little")}
        buf[at:at + 8] = run[str(fill)]
    elif kind == "truncate":
        return bytes(buf[:int(rng.integers(n))])
    elif kind == "field":  # an integer into a header field, or near a structure
        base = int(rng.choice(anchors)) if anchors else 0
        width = int(rng.choice([1, 2, 4, 8]))
        shift = 0 if rng.random() < 0.3 else int(rng.integers(-8, 72))
        at = min(max(base + shift, 0), max(n - width, 0))
        value = int(rng.choice(INTERESTING_INTS)) % (1 << (8 * width))
        buf[at:at + width] = value.to_bytes(width, "little")
    return bytes(buf)


def hdf5_anchors(data: bytes) -> list[int]:
    """Offsets near HDF5 structures: signatures, object names, and the integer fields of
    global heap collections (collection size, each object's index and size)."""
    out = [0] + hdf5_heap_fields(data)
    for needle in HDF5_SIGNATURES + HDF5_NAMES:
        start = data.find(needle)
        while start >= 0 and len(out) < 400:
            out.append(start)
            start = data.find(needle, start + 1)
    return out


def hdf5_heap_fields(data: bytes) -> list[int]:
    """Offsets of the integer fields of each global heap collection ("GCOL" blocks)."""
    out = []
    start = data.find(b"GCOL")
    while start >= 0:
        size = int.from_bytes(data[start + 8:start + 16], "little")
        out.append(start + 8)
        at, end = start + 16, min(start + size, len(data))
        while at + 16 <= end and len(out) < 200:
            out += [at, at + 8]  # object index, object size
            index = int.from_bytes(data[at:at + 2], "little")
            length = int.from_bytes(data[at + 8:at + 16], "little")
            if index == 0 or length > end - at:
                break
            at += 16 + (length + 7) // 8 * 8
        start = data.find(b"GCOL", start + 4)
    return out


def dicom_anchors(data: bytes) -> list[int]:
    out = [132]
    for group, element in DICOM_TAGS:
        at = data.find(group.to_bytes(2, "little") + element.to_bytes(2, "little"))
        if at >= 0:
            out += [at + 4, at + 6, at + 8]  # VR, length, value (explicit VR little endian)
    return out


def mutate_hdf5_semantic(path: Path, rng: np.random.Generator) -> None:
    """Edit an attribute, a dataset or a link of an HDF5 file in place through h5py."""
    import h5py

    value = INTERESTING_VALUES[int(rng.integers(len(INTERESTING_VALUES)))]
    action = int(rng.integers(8))
    with h5py.File(path, "r+") as f:
        main = "exchange/data" if "exchange" in f else "data" if "data" in f else "sinogram"
        if action == 0 and "geometry" in f.attrs:  # one geometry value
            spec = json.loads(f.attrs["geometry"])
            spec[str(rng.choice(sorted(spec)))] = value
            f.attrs["geometry"] = json.dumps(spec)
        elif action == 1:  # a physical attribute
            key = str(rng.choice(["noise_std", "mu_water_per_mm", "photons", "noise",
                                  "ctflow_format", "content"]))
            f.attrs[key] = value if value is not None else "none"
        elif action == 2:  # a huge declared dataset with no data
            shape = tuple(int(v) for v in rng.choice([[20000, 50000], [2**20, 2**20],
                                                      [3, 2**31], [1, 60, 2**40]]))
            del f[main]
            f.create_dataset(main, shape=shape, dtype=np.float32, chunks=True)
        elif action == 3:  # NaN / huge values in a dataset
            data = f[main][()].astype(np.float64)
            data.flat[int(rng.integers(data.size))] = float(rng.choice([np.nan, np.inf, 1e300]))
            del f[main]
            f.create_dataset(main, data=data)
        elif action == 4:  # angles
            key = "exchange/theta" if "exchange" in f else "angles"
            if key in f:
                data = f[key][()]
                data.flat[int(rng.integers(data.size))] = float(rng.choice(
                    [np.nan, np.inf, 1e300, -1e30]))
                del f[key]
                f.create_dataset(key, data=data)
        elif action == 5:  # a soft or external link instead of the data
            del f[main]
            if rng.random() < 0.5:
                f[main] = h5py.SoftLink("/nowhere")
            else:
                f[main] = h5py.ExternalLink(os.devnull, "/x")
        elif action == 6:  # an odd dtype
            shape = f[main].shape
            del f[main]
            kind = int(rng.integers(3))
            if kind == 0:
                f.create_dataset(main, shape=shape, dtype=h5py.string_dtype())
            elif kind == 1:
                f.create_dataset(main, shape=shape, dtype=[("a", "<f4"), ("b", "<i2")])
            else:
                f.create_dataset(main, data=np.zeros(shape, np.complex64))
        else:  # a big or odd attribute
            key = str(rng.choice(["geometry", "noise_model", "units", "extra"]))
            obj = f["exchange/theta"] if key == "units" and "exchange" in f else f
            kind = int(rng.integers(3))
            if kind == 0:
                obj.attrs[key] = np.zeros(2**12)
            elif kind == 1:
                obj.attrs[key] = "[" * 5000 + "]" * 5000
            else:
                obj.attrs[key] = np.zeros(3, dtype=[("a", "<f4"), ("b", "<i2")])


def mutate_dicom_semantic(path: Path, rng: np.random.Generator) -> None:
    """Set one element of a DICOM file to an odd value through pydicom."""
    import pydicom

    ds = pydicom.dcmread(path)
    keyword = str(rng.choice(DICOM_KEYWORDS))
    odd = [0, 1, 65535, -1, "nan", "inf", "-1e308", "1e-300", "", "x\\y", 2**31 - 1]
    value = odd[int(rng.integers(len(odd)))]
    try:
        if keyword == "PixelData":
            ds.PixelData = ds.PixelData[:int(rng.integers(len(ds.PixelData)))]
        elif keyword in ("PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient"):
            count = len(ds[keyword].value) if keyword in ds else 2
            values = [str(v) for v in ds[keyword].value] if keyword in ds else ["1"] * count
            values[int(rng.integers(count))] = str(value)
            setattr(ds, keyword, values)
        elif keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                         "PixelRepresentation", "SamplesPerPixel", "PixelPaddingValue",
                         "NumberOfFrames"):
            setattr(ds, keyword, int(value) if isinstance(value, int) else 0)
        else:
            setattr(ds, keyword, str(value))
        ds.save_as(path, enforce_file_format=False)
    except Exception:  # pydicom refused the value: leave the file as it was
        pass


# ---------------------------------------------------------------------------- one case
@dataclass
class Case:
    reader: str
    index: int
    seed: int

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0 if self.reader == "hdf5" else 1, self.index])


def plan(case: Case, seeds: list[Seed]) -> tuple[np.random.Generator, Seed, str, str]:
    """The case's draws: (its generator for the mutation, seed, file to mutate, kind)."""
    rng = case.rng()
    seed = seeds[int(rng.integers(len(seeds)))]
    kind = KINDS[int(rng.integers(len(KINDS)))]
    target = sorted(seed.files)[int(rng.integers(len(seed.files)))]
    return rng, seed, target, kind


def make_case(case: Case, seeds: list[Seed], folder: Path) -> tuple[Path, str | None]:
    """Write the case's input under ``folder``; returns (path to read, preset)."""
    rng, seed, target, kind = plan(case, seeds)
    if case.reader == "hdf5":
        path = folder / target
    else:
        path = folder / "series"
        path.mkdir()
    for name, data in seed.files.items():
        (path if case.reader == "hdf5" else path / name).write_bytes(data)
    victim = path if case.reader == "hdf5" else path / target
    if kind == "semantic":
        edit = mutate_hdf5_semantic if case.reader == "hdf5" else mutate_dicom_semantic
        try:
            edit(victim, rng)
        except Exception:  # the library refused the edit: a raw mutation instead
            kind = "bytes"
    if kind != "semantic":
        data = victim.read_bytes()
        anchors = hdf5_anchors(data) if case.reader == "hdf5" else dicom_anchors(data)
        victim.write_bytes(mutate_bytes(data, kind, rng, anchors))
    return path, seed.preset


def describe(case: Case, seeds: list[Seed]) -> str:
    _, seed, target, kind = plan(case, seeds)
    return f"{seed.name}/{target} {kind}" if len(seed.files) > 1 else f"{seed.name} {kind}"


class Invalid(Exception):
    """A reader returned a result that is not valid."""


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise Invalid(what)


def read_hdf5(path: Path, preset: str | None) -> None:
    """The read path of ``ctflow info`` / ``reconstruct``; Invalid if the result is not
    valid (shapes, finite data, every physical value inside its plausible range)."""
    from ctflow.io.hdf5 import file_kind, read_reconstruction, read_sinogram
    from ctflow.io.limits import QUANTITIES

    if file_kind(path) == "reconstruction":
        rec = read_reconstruction(path)
        arrays, geometry, attrs = [rec.image_hu], rec.geometry, rec.attrs
        expect(rec.image_hu.shape[1:] == geometry.image_shape, "image shape")
    else:
        data = read_sinogram(path, preset=preset)
        arrays, geometry, attrs = [data.sinogram], data.geometry, data.attrs
        expect(data.sinogram.ndim == 3, "sinogram rank")
        expect(data.sinogram.shape[1:] == tuple(geometry.sinogram_shape), "sinogram shape")
        if data.image_hu is not None:
            arrays.append(data.image_hu)
            expect(data.image_hu.shape == (data.sinogram.shape[0], *geometry.image_shape),
                   "image shape")
    expect(all(np.isfinite(a).all() for a in arrays), "NaN or Inf in the data")
    values = {k: getattr(geometry, k) for k in ("pixel_size_mm", "det_spacing_mm",
                                                "source_origin_mm", "origin_det_mm")}
    values.update({k: attrs[k] for k in ("noise_std", "mu_water_per_mm", "photons", "noise")
                   if k in attrs})
    for key, value in values.items():
        if value is not None:
            q = QUANTITIES[key]
            expect(isinstance(value, (int, float)) and q.lo <= value <= q.hi,
                   f"implausible {key} = {value!r} accepted")
    expect(np.isfinite(geometry.angles).all(), "angles")


def read_dicom(path: Path, preset: str | None) -> None:
    """``read_series``; Invalid if the volume is not valid."""
    from ctflow.io.dicom import read_series

    vol = read_series(path)
    expect(vol.hu.ndim == 3 and vol.hu.size > 0, "volume shape")
    expect(np.isfinite(vol.hu).all(), "NaN or Inf in the volume")
    expect(all(math.isfinite(s) and s > 0 for s in vol.spacing), f"spacing {vol.spacing}")
    expect(len(vol.files) == vol.hu.shape[0], "files")


READERS: dict[str, Callable[[Path, str | None], None]] = {"hdf5": read_hdf5,
                                                          "dicom": read_dicom}


def run_case(case: Case, seeds: list[Seed], root: Path) -> dict[str, Any]:
    """Make and read one case; returns its outcome and a one-line detail."""
    from ctflow.errors import CtflowError

    folder = Path(tempfile.mkdtemp(prefix=f"{case.reader}{case.index}-", dir=root))
    try:
        what = describe(case, seeds)
        path, preset = make_case(case, seeds, folder)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                READERS[case.reader](path, preset)
            return {"outcome": "ok", "what": what, "detail": ""}
        except Invalid as exc:
            return {"outcome": "invalid", "what": what, "detail": f"{exc}"}
        except CtflowError as exc:
            outcome = "clean" if "\n" not in str(exc) else "traceback"
            return {"outcome": outcome, "what": what, "detail": str(exc)[:300],
                    "wrapped": _wrapped_bug(exc)}
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            return {"outcome": "traceback", "what": what,
                    "detail": f"{type(exc).__name__}: {str(exc)[:200]} "
                              f"({Path(where.filename).name}:{where.lineno})"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


CATCH_ALLS = ("corrupt or unreadable HDF5 content (", "corrupt DICOM file (",
              "inconsistent or corrupt series (")


def _wrapped_bug(exc: Exception) -> str:
    """For a catch-all error ("corrupt ... (...)") whose cause was raised by ctflow's own
    code rather than by a library: "TypeError at hdf5.py:123", else ""."""
    cause = exc.__cause__
    if cause is None or not any(text in str(exc) for text in CATCH_ALLS):
        return ""
    frames = traceback.extract_tb(cause.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    parts = Path(last.filename).parts
    if "ctflow" in parts or "operators" in parts:
        return f"{type(cause).__name__} at {Path(last.filename).name}:{last.lineno}"
    return ""


# ------------------------------------------------------------------------------ the pool
def _worker(conn: Connection, seeds: dict[str, list[Seed]], root: str) -> None:
    """Worker loop: receive a case as JSON, send back its outcome as JSON; an empty message
    ends it."""
    faulthandler.disable()  # a crash is the parent's to report, quietly
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            break
        if not message:
            break
        case = Case(**json.loads(message))
        conn.send_bytes(json.dumps(run_case(case, seeds[case.reader], Path(root))).encode())
    os._exit(0)


@dataclass
class Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    case: Case | None = None
    started: float = 0.0


@dataclass
class Report:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    wrapped: list[dict[str, Any]] = field(default_factory=list)  # see _wrapped_bug
    messages: Counter[str] = field(default_factory=Counter)  # clean errors, file name cut
    seconds: dict[str, float] = field(default_factory=dict)

    def failed(self) -> int:
        return sum(c[o] for c in self.counts.values() for o in FAILURES)


def run(readers: tuple[str, ...] = ("hdf5", "dicom"), cases: int = 1000, seed: int = 0,
        jobs: int = 2, timeout: float = 30.0, save: Path | None = None) -> Report:
    """Fuzz each reader with ``cases`` cases; returns the outcome counts and failures."""
    ctx = multiprocessing.get_context("fork")
    report = Report()
    with tempfile.TemporaryDirectory(prefix="ctflow-fuzz-") as tmp:
        root = Path(tmp)
        (root / "seeds").mkdir()
        seeds = {"hdf5": hdf5_seeds(root / "seeds") if "hdf5" in readers else [],
                 "dicom": dicom_seeds() if "dicom" in readers else []}

        def spawn() -> Worker:
            parent, child = ctx.Pipe()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                process = ctx.Process(target=_worker, args=(child, seeds, str(root)),
                                      daemon=True)
                process.start()
            child.close()
            return Worker(process, parent)

        for reader in readers:
            begin = time.perf_counter()
            report.counts[reader] = _fuzz(reader, cases, seed, jobs, timeout, spawn,
                                          seeds[reader], report, save)
            report.seconds[reader] = time.perf_counter() - begin
    return report


def _fuzz(reader: str, cases: int, seed: int, jobs: int, timeout: float,
          spawn: Callable[[], Worker], seeds: list[Seed], report: Report,
          save: Path | None) -> dict[str, int]:
    """Run one reader's cases on a pool of ``jobs`` workers; returns the outcome counts."""
    counts = dict.fromkeys(OUTCOMES, 0)
    todo = [Case(reader, i, seed) for i in range(cases)][::-1]
    pool = [spawn() for _ in range(max(1, min(jobs, cases)))]

    def record(case: Case, result: dict[str, Any]) -> None:
        counts[result["outcome"]] += 1
        if result["outcome"] == "clean":
            text = result["detail"].split(": ", 1)[-1]
            short = text.split(" while")[0] if "(the HDF5 library" in text else text.split("(")[0]
            report.messages[f"{reader}: {short.strip()[:90]}"] += 1
        if result.get("wrapped"):
            report.wrapped.append({"reader": reader, "case": case.index, **result})
        if result["outcome"] in FAILURES:
            report.failures.append({"reader": reader, "case": case.index, **result})
            if save is not None:
                _save(case, seeds, save)

    while sum(counts.values()) < cases:
        for w in pool:
            if w.case is None and todo:
                w.case, w.started = todo.pop(), time.monotonic()
                w.conn.send_bytes(json.dumps(w.case.__dict__).encode())
        busy = [w for w in pool if w.case is not None]
        deadline = min(w.started for w in busy) + timeout
        ready = wait([w.conn for w in busy], max(0.0, deadline - time.monotonic()))
        for i, w in enumerate(pool):
            if w.case is None:
                continue
            if w.conn in ready:
                try:
                    result = json.loads(w.conn.recv_bytes())
                except (EOFError, OSError):  # the worker died: a crash
                    w.process.join()
                    record(w.case, {"outcome": "crash", "what": describe(w.case, seeds),
                                    "detail": f"worker exit code {w.process.exitcode}"})
                    pool[i] = spawn()
                    continue
                record(w.case, result)
                w.case = None
            elif time.monotonic() - w.started > timeout:  # a hang: kill and replace
                w.process.kill()
                w.process.join()
                record(w.case, {"outcome": "hang", "what": describe(w.case, seeds),
                                "detail": f"no result after {timeout:g} s"})
                pool[i] = spawn()
    for w in pool:
        w.conn.send_bytes(b"")
        w.conn.close()
        w.process.join(timeout=5)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
    return counts


def _save(case: Case, seeds: list[Seed], folder: Path) -> None:
    """Keep a failing case's input under ``folder`` for triage."""
    target = folder / f"{case.reader}-{case.index}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    make_case(case, seeds, target)


def table(report: Report) -> str:
    head = f"| reader | cases | {' | '.join(OUTCOMES)} | seconds |"
    lines = [head, "|" + "---|" * (len(OUTCOMES) + 3)]
    for reader, counts in report.counts.items():
        lines.append(f"| {reader} | {sum(counts.values())} | "
                     + " | ".join(str(counts[o]) for o in OUTCOMES)
                     + f" | {report.seconds[reader]:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000, help="cases per reader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readers", default="hdf5,dicom", help="comma-separated: hdf5,dicom")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    parser.add_argument("--messages", action="store_true",
                        help="also list the clean error messages and how often each came")
    parser.add_argument("--save-failures", type=Path, default=None, metavar="DIR",
                        help="write the input of each failing case into DIR")
    args = parser.parse_args(argv)
    readers = tuple(r.strip() for r in args.readers.split(",") if r.strip())
    unknown = [r for r in readers if r not in READERS]
    if unknown or not hasattr(os, "fork"):
        parser.error(f"unknown reader(s) {unknown}" if unknown else "needs os.fork")
    report = run(readers, args.cases, args.seed, args.jobs, args.timeout, args.save_failures)
    print(table(report))
    for failure in report.failures[:30]:
        print(f"{failure['reader']} case {failure['case']} ({failure['what']}): "
              f"{failure['outcome']}: {failure['detail']}")
    if args.messages:
        for text, count in report.messages.most_common():
            print(f"{count:6d}  {text}")
    if report.wrapped:
        print(f"{len(report.wrapped)} clean error(s) wrap an exception raised in ctflow code:")
        for item in report.wrapped[:30]:
            print(f"  {item['reader']} case {item['case']} ({item['what']}): {item['wrapped']}"
                  f": {item['detail']}")
    return 1 if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
