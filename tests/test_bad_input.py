"""Bad input and bad output paths: each gives exit code 2, one line on stderr naming the
file and the problem, no traceback, and nothing written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ctflow.cli import main
from ctflow.io.dicom import write_series

CT_SMALL = get_testdata_file("CT_small.dcm")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.h5"
    assert main(["simulate", "--size", "16", "--views", "8", "-o", str(path)]) == 0
    return path


def fails(capsys, argv: list[str], file: str | Path, *words: str) -> str:
    """Run the CLI; assert exit 2 and one error line naming the file and the problem."""
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    line = lines[0]
    assert line.startswith(f"ctflow {argv[0]}: error: {file}"), line
    assert "Traceback" not in captured.err
    for word in words:
        assert word in line, (word, line)
    return line


def recon(src: Path, out: Path) -> list[str]:
    return ["reconstruct", str(src), "--method", "fbp", "-o", str(out)]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_truncated_hdf5(good, tmp_path, capsys):
    bad = tmp_path / "cut.h5"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    fails(capsys, recon(bad, tmp_path / "o.npy"), bad, "truncated")
    assert listing(tmp_path) == ["cut.h5"]


def test_corrupt_hdf5(good, tmp_path, capsys):
    bad = tmp_path / "corrupt.h5"
    data = bytearray(good.read_bytes())
    data[48:2048] = b"\xa5" * (2048 - 48)  # object headers after the superblock
    bad.write_bytes(bytes(data))
    fails(capsys, recon(bad, tmp_path / "o.npy"), bad, "corrupt")
    assert listing(tmp_path) == ["corrupt.h5"]


def _copy_with(good: Path, dest: Path, edit) -> Path:
    shutil.copy(good, dest)
    with h5py.File(dest, "r+") as f:
        edit(f)
    return dest


def test_missing_sinogram(good, tmp_path, capsys):
    bad = _copy_with(good, tmp_path / "nosino.h5", lambda f: f.__delitem__("sinogram"))
    fails(capsys, recon(bad, tmp_path / "o.npy"), bad, "missing dataset /sinogram")
    assert listing(tmp_path) == ["nosino.h5"]


def test_nan_in_sinogram(good, tmp_path, capsys):
    def poison(f):
        s = f["sinogram"][()]
        s[0, 3, 4] = np.nan
        f["sinogram"][()] = s

    bad = _copy_with(good, tmp_path / "nan.h5", poison)
    fails(capsys, recon(bad, tmp_path / "o.npy"), bad, "NaN")
    assert listing(tmp_path) == ["nan.h5"]


def test_sinogram_shape_not_matching_geometry(good, tmp_path, capsys):
    def shrink(f):
        s = f["sinogram"][()]
        del f["sinogram"]
        f["sinogram"] = s[:, :, :-3]

    bad = _copy_with(good, tmp_path / "shape.h5", shrink)
    fails(capsys, recon(bad, tmp_path / "o.npy"), bad, "does not match the geometry")
    assert listing(tmp_path) == ["shape.h5"]


def test_text_file_named_h5(tmp_path, capsys):
    bad = tmp_path / "notes.h5"
    bad.write_text("this is not HDF5\n")
    fails(capsys, recon(bad, tmp_path / "o.npy"), bad, "not an HDF5 file")
    fails(capsys, ["info", str(bad)], bad, "not an HDF5 file")
    assert listing(tmp_path) == ["notes.h5"]


@pytest.mark.parametrize("modality", ["MR", "SEG"])
def test_non_ct_dicom(tmp_path, capsys, modality):
    folder = tmp_path / "series"
    files = write_series(folder, np.zeros((1, 8, 8)), 1.0, 1.0, "fbp", 10)
    ds = pydicom.dcmread(files[0])
    ds.Modality = modality
    ds.save_as(files[0])
    out = tmp_path / "s.h5"
    line = fails(capsys, ["simulate", "--from-dicom", str(folder), "-o", str(out)],
                 files[0], f"modality {modality} is not CT")
    assert str(files[0]) in line
    assert listing(tmp_path) == ["series"]


def test_dicom_without_pixel_data(tmp_path, capsys):
    folder = tmp_path / "series"
    folder.mkdir()
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    ds.save_as(folder / "IM1")
    fails(capsys, ["simulate", "--from-dicom", str(folder), "-o", str(tmp_path / "s.h5")],
          folder / "IM1", "without pixel data")
    assert listing(tmp_path) == ["series"]


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    fails(capsys, ["simulate", "--from-dicom", str(tmp_path / "empty"),
                   "-o", str(tmp_path / "s.h5")], tmp_path / "empty", "no DICOM files")
    fails(capsys, ["info", str(tmp_path / "empty")], tmp_path / "empty", "no DICOM files")
    assert listing(tmp_path) == ["empty"]


def test_output_in_missing_folder(good, tmp_path, capsys):
    out = tmp_path / "missing" / "o.npy"
    fails(capsys, recon(good, out), out, "does not exist")
    sino = tmp_path / "missing" / "o.h5"
    fails(capsys, ["simulate", "--size", "16", "-o", str(sino)], sino, "does not exist")
    series = tmp_path / "missing" / "series"
    fails(capsys, recon(good, series) + ["--format", "dicom"], series, "does not exist")
    assert listing(tmp_path) == []


def test_output_in_read_only_folder(good, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for out, extra in ((ro / "o.npy", []), (ro / "o.png", []), (ro / "o.h5", []),
                           (ro / "series", ["--format", "dicom"])):
            fails(capsys, recon(good, out) + extra, out, "read-only")
        fails(capsys, ["simulate", "--size", "16", "-o", str(ro / "s.h5")], ro / "s.h5",
              "read-only")
        assert listing(ro) == []
    finally:
        ro.chmod(0o755)


def test_existing_output_needs_overwrite(good, tmp_path, capsys):
    out = tmp_path / "o.npy"
    out.write_bytes(b"keep me")
    fails(capsys, recon(good, out), out, "already exists", "--overwrite")
    assert out.read_bytes() == b"keep me"
    assert main(recon(good, out) + ["--overwrite"]) == 0
    assert np.load(out).shape == (1, 16, 16)
    assert listing(tmp_path) == ["o.npy"]


def test_subprocess_has_no_traceback(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("plain text")
    run = subprocess.run([sys.executable, "-m", "ctflow.cli", "reconstruct", str(bad),
                          "-o", str(tmp_path / "o.npy")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == f"ctflow reconstruct: error: {bad}: not an HDF5 file"
    assert listing(tmp_path) == ["notes.h5"]
