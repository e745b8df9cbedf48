"""The cases of the reader fuzz (ctflow.bench.fuzz, scripts/fuzz_readers.py): the valid seed
inputs (example sinograms, generated fan-beam, reconstruction, DXchange and LoDoPaB-style
files, DICOM series) and the seeded mutations of one case (bit flips, random bytes, an
overwritten 8-byte run, a truncation, an integer written into a header field near a
structure signature or a DICOM tag, or a semantic edit of an attribute / element value
through h5py / pydicom).

A case is reproducible from (reader, index, seed) alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the source checkout (data/examples)
EXAMPLES = ROOT / "data" / "examples"
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
