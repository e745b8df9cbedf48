"""The ``ctflow simulate / reconstruct / info`` commands end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _dciodvfy import dciodvfy_findings, requires_dciodvfy
from PIL import Image
from pydicom.data import get_testdata_file

from ctflow.cli import main
from ctflow.commands.reconstruct import window_uint8
from ctflow.io.dicom import read_series, write_series
from ctflow.io.hdf5 import read_reconstruction, read_sinogram
from ctflow.metrics import psnr
from ctflow.phantoms import phantom

CT_SMALL = get_testdata_file("CT_small.dcm")


@pytest.fixture(scope="module")
def sino(tmp_path_factory) -> Path:
    """A noisy 2-slice 32² chest sinogram with 24 views."""
    path = tmp_path_factory.mktemp("cli") / "sino.h5"
    assert main(["simulate", "--phantom", "chest", "--size", "32", "--views", "24",
                 "--photons", "1e5", "--slices", "2", "--seed", "3", "-o", str(path)]) == 0
    return path


def test_simulate_writes_ground_truth_and_noise_attrs(sino):
    data = read_sinogram(sino)
    assert data.sinogram.shape == (2, 24, data.geometry.det_count)
    assert data.geometry.type == "parallel" and data.geometry.image_size == 32
    assert np.array_equal(data.image_hu[0], phantom("chest", 32, 3))
    assert np.array_equal(data.image_hu[1], phantom("chest", 32, 4))
    assert data.attrs["noise_model"] == "poisson" and data.attrs["photons"] == 1e5
    assert 0 < data.attrs["noise_std"] < 0.1
    assert data.attrs["seed"] == 3


def test_simulate_is_reproducible_by_seed(tmp_path):
    args = ["simulate", "--size", "16", "--views", "8", "--noise", "0.05"]
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert main(args + ["--seed", seed, "-o", str(tmp_path / f"{name}.h5")]) == 0
    a, b, c = (read_sinogram(tmp_path / f"{n}.h5").sinogram for n in "abc")
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_reconstruct_formats_agree_and_metrics_printed(sino, tmp_path, capsys):
    out_npy, out_h5, out_png = tmp_path / "r.npy", tmp_path / "r.h5", tmp_path / "r.png"
    assert main(["reconstruct", str(sino), "--method", "fbp", "-o", str(out_npy)]) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "mean" in printed
    hu = np.load(out_npy)
    assert hu.shape == (2, 32, 32) and hu.dtype == np.float32
    gt = read_sinogram(sino).image_hu
    assert psnr(hu[0], gt[0]) > 18.0
    assert main(["reconstruct", str(sino), "--method", "fbp", "-o", str(out_h5)]) == 0
    rec = read_reconstruction(out_h5)
    assert rec.image_hu.tobytes() == hu.tobytes()
    assert rec.attrs["method"] == "fbp" and rec.attrs["source_file"] == "sino.h5"
    assert main(["reconstruct", str(sino), "--method", "fbp", "--window", "0,1000",
                 "-o", str(out_png)]) == 0
    png = np.asarray(Image.open(out_png))
    assert png.shape == (32, 64)
    assert np.array_equal(png, np.concatenate(list(window_uint8(hu, (0.0, 1000.0))), axis=1))


def test_iterative_method_beats_fbp(sino, tmp_path, capsys):
    gt = read_sinogram(sino).image_hu
    assert main(["reconstruct", str(sino), "--method", "fbp", "-o", str(tmp_path / "f.npy")]) \
        == 0
    assert main(["reconstruct", str(sino), "--method", "cgls", "--iters", "15",
                 "-o", str(tmp_path / "c.npy")]) == 0
    fbp, cgls = np.load(tmp_path / "f.npy"), np.load(tmp_path / "c.npy")
    assert psnr(cgls[0], gt[0]) > 18.0
    assert not np.array_equal(fbp, cgls)


@requires_dciodvfy
def test_reconstruct_dicom_with_reference(sino, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(CT_SMALL, study / "IM1")
    ref = tmp_path / "ref"  # a 2-slice 32² series (1 mm pixels) in CT_small's study
    write_series(ref, np.zeros((2, 32, 32)), 1.0, 2.0, "fbp", 10,
                 reference=read_series(study))
    out = tmp_path / "series"
    assert main(["reconstruct", str(sino), "--method", "fbp", "--format", "dicom",
                 "--reference", str(ref), "-o", str(out)]) == 0
    assert main(["reconstruct", str(sino), "--method", "fbp", "-o", str(tmp_path / "r.npy")]) \
        == 0
    vol = read_series(out)
    assert np.abs(vol.hu - np.load(tmp_path / "r.npy")).max() <= 0.5 + 1e-3
    assert vol.spacing[1:] == pytest.approx((1.0, 1.0))  # the phantom's 1 mm pixels
    src = pydicom.dcmread(CT_SMALL)
    files = sorted(out.glob("*.dcm"))
    first = pydicom.dcmread(files[0])
    assert first.StudyInstanceUID == src.StudyInstanceUID and first.PatientID == src.PatientID
    assert "fbp" in first.DerivationDescription and "24 views" in first.DerivationDescription
    for f in files:
        assert dciodvfy_findings(f) == []


def test_simulate_from_dicom_passes_metadata_through(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copy(CT_SMALL, ref / "IM1")
    assert main(["simulate", "--from-dicom", str(ref), "--views", "16",
                 "-o", str(tmp_path / "s.h5")]) == 0
    data = read_sinogram(tmp_path / "s.h5")
    src = pydicom.dcmread(CT_SMALL)
    assert data.geometry.image_size == 128
    assert data.geometry.pixel_size_mm == pytest.approx(float(src.PixelSpacing[0]))
    assert data.metadata["StudyInstanceUID"] == src.StudyInstanceUID
    assert data.metadata["SourceSeriesInstanceUID"] == src.SeriesInstanceUID
    assert np.array_equal(data.image_hu, read_series(ref).hu)
    out = tmp_path / "series"
    assert main(["reconstruct", str(tmp_path / "s.h5"), "--method", "fbp", "--format", "dicom",
                 "-o", str(out)]) == 0
    written = pydicom.dcmread(next(out.glob("*.dcm")))  # not the marker
    assert written.StudyInstanceUID == src.StudyInstanceUID
    assert written.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert written.SeriesInstanceUID != src.SeriesInstanceUID


def test_fan_beam_round_trip(tmp_path):
    assert main(["simulate", "--size", "32", "--views", "40", "--fan",
                 "-o", str(tmp_path / "f.h5")]) == 0
    data = read_sinogram(tmp_path / "f.h5")
    assert data.geometry.type == "fan"
    assert main(["reconstruct", str(tmp_path / "f.h5"), "--method", "fbp",
                 "-o", str(tmp_path / "f.npy")]) == 0
    assert psnr(np.load(tmp_path / "f.npy")[0], data.image_hu[0]) > 18.0


def test_info_describes_files_and_series(sino, tmp_path, capsys):
    assert main(["info", str(sino)]) == 0
    text = capsys.readouterr().out
    for word in ("(2, 24,", "parallel", "pixel_size_mm", "mm", "ground truth", "(2, 32, 32)",
                 "HU", "poisson", "photons"):
        assert word in text, word
    assert main(["reconstruct", str(sino), "--method", "fbp", "-o", str(tmp_path / "r.h5")]) \
        == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "r.h5")]) == 0
    assert "reconstruction" in capsys.readouterr().out
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copy(CT_SMALL, ref / "IM1")
    assert main(["info", str(ref)]) == 0
    text = capsys.readouterr().out
    assert "DICOM CT series" in text and "(1, 128, 128)" in text and "0.6615" in text


@pytest.mark.parametrize("command", ["simulate", "reconstruct", "info"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"ctflow {command}" in text and "--" in text


@requires_dciodvfy
def test_shell_end_to_end_dicom(tmp_path):
    """`ctflow simulate … && ctflow reconstruct … --format dicom` as a user runs it."""
    exe = shutil.which("ctflow")
    cmd = [exe] if exe else [sys.executable, "-m", "ctflow.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sim = subprocess.run(cmd + ["simulate", "--phantom", "abdomen", "--size", "32", "--views",
                                "20", "-o", str(tmp_path / "s.h5")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert sim.returncode == 0, sim.stderr
    rec = subprocess.run(cmd + ["reconstruct", str(tmp_path / "s.h5"), "--method", "fbp",
                                "-o", str(tmp_path / "out"), "--format", "dicom"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert rec.returncode == 0, rec.stderr
    assert "PSNR" in rec.stdout
    files = sorted((tmp_path / "out").glob("*.dcm"))
    assert len(files) == 1
    assert dciodvfy_findings(files[0]) == []
