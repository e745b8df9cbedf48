"""DICOM checks: rescale and geometry plausibility on reading, the --reference match check of
`ctflow reconstruct`, zero dciodvfy findings on every series ctflow writes, and the
skip/fail behaviour of the dciodvfy tests."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _dciodvfy import dciodvfy_findings, requires_dciodvfy
from _dicom_edit import retag
from pydicom.data import get_testdata_file

import ctflow.commands.reconstruct as reconstruct_command
import ctflow.io.dicom as dicom
from ctflow.cli import main
from ctflow.errors import InputError
from ctflow.realct import realct_dir

CT_SMALL = get_testdata_file("CT_small.dcm")
TESTS = Path(__file__).parent

# the tests write invalid values on purpose (DS "nan"); pydicom warns about them
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


def one_slice(folder: Path, slices: int = 1, **changes) -> Path:
    """A small written series with ``changes`` applied to every file (None deletes)."""
    dicom.write_series(folder, np.full((slices, 8, 8), 40.0), 0.8, 2.0, "fbp", 10)
    return retag(folder, **changes)


# ------------------------------------------------------------------------ rescale on reading
@pytest.mark.parametrize("keyword", ["RescaleSlope", "RescaleIntercept"])
def test_missing_rescale_refused(tmp_path, keyword):
    folder = one_slice(tmp_path / "s", **{keyword: None})
    with pytest.raises(InputError, match=rf"CT00001.dcm: {keyword} is missing"):
        dicom.read_series(folder)


@pytest.mark.parametrize("keyword", ["RescaleSlope", "RescaleIntercept"])
def test_empty_rescale_refused(tmp_path, keyword):
    folder = one_slice(tmp_path / "s", **{keyword: ""})
    with pytest.raises(InputError, match=rf"CT00001.dcm: {keyword} is missing"):
        dicom.read_series(folder)


def test_zero_slope_refused(tmp_path):
    folder = one_slice(tmp_path / "s", RescaleSlope="0")
    with pytest.raises(InputError, match=r"CT00001.dcm: RescaleSlope is 0"):
        dicom.read_series(folder)


@pytest.mark.parametrize("keyword,value", [("RescaleSlope", "NaN"), ("RescaleSlope", "inf"),
                                           ("RescaleIntercept", "-inf")])
def test_non_finite_rescale_refused(tmp_path, keyword, value):
    folder = one_slice(tmp_path / "s", **{keyword: value})
    with pytest.raises(InputError, match=rf"CT00001.dcm: {keyword} .* is not finite"):
        dicom.read_series(folder)


# ----------------------------------------------------------------------- geometry on reading
@pytest.mark.parametrize("spacing", [["0", "0.8"], ["-0.8", "-0.8"], ["0.8", "150"]])
def test_implausible_pixel_spacing_refused(tmp_path, spacing):
    folder = one_slice(tmp_path / "s", PixelSpacing=spacing)
    with pytest.raises(InputError, match=r"CT00001.dcm: implausible PixelSpacing"):
        dicom.read_series(folder)


def test_pixel_spacing_must_agree_across_slices(tmp_path):
    folder = one_slice(tmp_path / "s", slices=2)
    ds = pydicom.dcmread(folder / "CT00002.dcm")
    ds.PixelSpacing = ["0.9", "0.9"]
    ds.save_as(folder / "CT00002.dcm")
    with pytest.raises(InputError, match=r"PixelSpacing differs from the rest"):
        dicom.read_series(folder)


def test_implausible_position_refused(tmp_path):
    folder = one_slice(tmp_path / "s", ImagePositionPatient=["0", "0", "1e9"])
    with pytest.raises(InputError, match=r"CT00001.dcm: implausible ImagePositionPatient"):
        dicom.read_series(folder)


def test_implausible_slice_spacing_refused(tmp_path):
    folder = one_slice(tmp_path / "s", slices=2)
    ds = pydicom.dcmread(folder / "CT00002.dcm")
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], "500"]
    ds.save_as(folder / "CT00002.dcm")
    with pytest.raises(InputError, match=r"s: implausible slice spacing .*500 mm"):
        dicom.read_series(folder)


@pytest.mark.parametrize("value", ["nan", "-2", "1000"])
def test_implausible_single_slice_thickness_refused(tmp_path, value):
    folder = one_slice(tmp_path / "s", SpacingBetweenSlices=value)
    with pytest.raises(InputError, match=r"CT00001.dcm: implausible SpacingBetweenSlices"):
        dicom.read_series(folder)


def test_writer_refuses_implausible_spacing(tmp_path):
    for pixel, slice_mm in ((float("inf"), 1.0), (1.0, 0.0), (500.0, 1.0)):
        with pytest.raises(InputError, match="implausible"):
            dicom.write_series(tmp_path / "w", np.zeros((1, 4, 4)), pixel, slice_mm, "fbp", 6)
    assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------- the --reference check
def series_like(folder: Path, slices: int, size: int, pixel_mm: float,
                anonymised: bool = False) -> Path:
    """A reference series in CT_small's patient and study with the given matrix; with
    ``anonymised`` its IDs, study UID and dates are emptied and the name is a bare word, as
    in anonymised public data."""
    src = folder.parent / f"{folder.name}-src"
    src.mkdir()
    shutil.copy(CT_SMALL, src / "IM1")
    study = dicom.read_series(src)
    shutil.rmtree(src)
    rng = np.random.default_rng(size)
    dicom.write_series(folder, rng.uniform(-1000, 1000, (slices, size, size)), pixel_mm, 2.0,
                       "fbp", 10, reference=study)
    if anonymised:
        for f in folder.glob("*.dcm"):
            ds = pydicom.dcmread(f)
            ds.PatientName, ds.PatientID, ds.StudyID = "REMOVED", "", ""
            ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = "", "", ""
            ds.save_as(f)
    return folder


def test_check_reference_names_every_difference(tmp_path):
    ref = dicom.read_series(series_like(tmp_path / "ref", 1, 16, 0.5))
    dicom.check_reference(ref, (1, 16, 16), 0.5 * (1 + 5e-5), "ref", "s.h5")  # within 1e-4
    with pytest.raises(InputError) as exc:
        dicom.check_reference(ref, (2, 32, 32), 1.0, "ref", "s.h5")
    message = str(exc.value)
    assert message.startswith("ref: reference series does not match the reconstruction of "
                              "s.h5")
    assert "matrix 16×16 vs 32×32" in message and "1 vs 2 slice(s)" in message
    assert "pixel spacing 0.5×0.5 mm vs 1 mm" in message and "\n" not in message
    with pytest.raises(InputError, match=r"\(reference vs reconstruction: pixel spacing "):
        dicom.check_reference(ref, (1, 16, 16), 0.5 * 1.001, "ref", "s.h5")


@pytest.fixture(scope="module")
def sino64(tmp_path_factory) -> Path:
    """A noiseless 2-slice 64² chest sinogram (1 mm pixels, 30 views)."""
    path = tmp_path_factory.mktemp("sino") / "chest64.h5"
    assert main(["simulate", "--phantom", "chest", "--size", "64", "--views", "30",
                 "--slices", "2", "-o", str(path)]) == 0
    return path


@pytest.mark.parametrize("slices,size,pixel_mm,words", [
    (1, 128, 0.661468, ["matrix 128×128 vs 64×64", "1 vs 2 slice(s)", "pixel spacing"]),
    (2, 64, 0.7, ["pixel spacing 0.7×0.7 mm vs 1 mm"]),
    (3, 64, 1.0, ["3 vs 2 slice(s)"]),
])
def test_cli_refuses_unrelated_reference_before_reconstructing(sino64, tmp_path, capsys,
                                                               monkeypatch, slices, size,
                                                               pixel_mm, words):
    ref = series_like(tmp_path / "ref", slices, size, pixel_mm)

    def no_reconstruction(*args, **kwargs):
        raise AssertionError("reconstruction started despite a mismatched --reference")

    monkeypatch.setattr(reconstruct_command, "reconstruct_slices", no_reconstruction)
    out = tmp_path / "series"
    capsys.readouterr()
    assert main(["reconstruct", str(sino64), "--method", "fbp", "--format", "dicom",
                 "--reference", str(ref), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"ctflow reconstruct: error: {ref}: reference series does not "
                             f"match the reconstruction of {sino64}")
    for word in words:
        assert word in err[0]
    assert not out.exists()


# ------------------------------------------------------------------- dciodvfy: zero findings
@requires_dciodvfy
@pytest.mark.parametrize("reference", [None, "ct_small", "anonymised"])
def test_cli_series_have_no_dciodvfy_findings(sino64, tmp_path, reference):
    """`ctflow reconstruct` of a 64² sinogram, without and with a (matching) reference."""
    argv = ["reconstruct", str(sino64), "--method", "fbp", "--format", "dicom",
            "-o", str(tmp_path / "out")]
    if reference is not None:
        ref = series_like(tmp_path / "ref", 2, 64, 1.0, anonymised=reference == "anonymised")
        argv += ["--reference", str(ref)]
    assert main(argv) == 0
    files = sorted((tmp_path / "out").glob("*.dcm"))
    assert len(files) == 2
    assert [line for f in files for line in dciodvfy_findings(f)] == []
    first = pydicom.dcmread(files[0])
    assert "Laterality" not in first and first.ImageLaterality == "U"
    if reference == "ct_small":
        src = pydicom.dcmread(CT_SMALL)
        assert first.StudyInstanceUID == src.StudyInstanceUID
        assert first.PatientID == src.PatientID
    if reference == "anonymised":  # empty IDs, UID and dates are replaced, the name kept
        assert first.PatientID.startswith("CTFLOW-") and first.StudyInstanceUID
        assert first.StudyDate and first.StudyTime and first.StudyID == "1"
        assert str(first.PatientName) == "REMOVED^"


@requires_dciodvfy
def test_written_series_have_no_dciodvfy_findings(tmp_path):
    """write_series directly: a plain volume, CT_small as reference (128², other pixel size),
    and a reference from the right side of the body."""
    ref_folder = tmp_path / "ref"
    ref_folder.mkdir()
    shutil.copy(CT_SMALL, ref_folder / "IM1")
    ref = dicom.read_series(ref_folder)
    rng = np.random.default_rng(0)
    written = dicom.write_series(tmp_path / "a", rng.uniform(-1024, 3000, (3, 24, 32)), 0.7,
                                 2.5, "fbp", 60)
    written += dicom.write_series(tmp_path / "b", ref.hu + 7.0, 0.5, 5.0, "fbp", 60,
                                  reference=ref)
    right = dataclasses.replace(ref, reference={**ref.reference, "Laterality": "R"})
    written += dicom.write_series(tmp_path / "c", ref.hu, 0.5, 5.0, "fbp", 60, reference=right)
    assert [line for f in written for line in dciodvfy_findings(f)] == []
    assert pydicom.dcmread(written[-1]).ImageLaterality == "R"


@requires_dciodvfy
def test_findings_counted_wherever_dciodvfy_puts_them(tmp_path):
    """dciodvfy reports a value-representation mismatch after the attribute's name
    ("(0x0043,0x106d) US Area Size  - Warning - …"): such lines count too."""
    path = dicom.write_series(tmp_path / "s", np.zeros((1, 8, 8)), 1.0, 1.0, "fbp", 10)[0]
    assert dciodvfy_findings(path) == []
    ds = pydicom.dcmread(path)
    ds.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")  # GE private block
    ds.add_new((0x0043, 0x106D), "DS", "1")  # GE's dictionary says US
    ds.save_as(path)
    findings = dciodvfy_findings(path)
    assert len(findings) == 1 and "Area Size  - Warning - " in findings[0]


REALCT = realct_dir()


@requires_dciodvfy
@pytest.mark.parametrize("name", ["totalsegmentator-j2k", "ge-head-tilt"])
def test_series_derived_from_real_scanner_series_have_no_findings(tmp_path, name):
    """A derived series with a real scanner series as reference (JPEG 2000 Siemens; GE
    with an 18.5° gantry tilt): zero dciodvfy errors and warnings, DERIVED\\SECONDARY,
    a new series in the reference's study, the caller's description and number, and the
    reference's (tilted) slice planes."""
    if not (REALCT / name).is_dir():
        pytest.skip(f"real-CT folder absent ({REALCT / name})")
    ref = dicom.read_series(REALCT / name)
    description = "ctflow conjugate nfe=5 w=8\\lam=0.5 " + "x" * 80
    files = dicom.write_series(tmp_path / "out", ref.hu[:2] + 1.0, ref.spacing[1],
                               ref.spacing[0], "conjugate", 60,
                               reference=dataclasses.replace(ref, hu=ref.hu[:2],
                                                             positions=ref.positions[:2]),
                               series_description=description, series_number=77)
    assert [line for f in files for line in dciodvfy_findings(f)] == []
    out = pydicom.dcmread(files[0])
    src = pydicom.dcmread(ref.files[0], stop_before_pixels=True)
    assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert out.SeriesInstanceUID != src.get("SeriesInstanceUID", "")
    if src.get("StudyInstanceUID"):
        assert out.StudyInstanceUID == src.StudyInstanceUID
    assert out.SeriesDescription == ("ctflow conjugate nfe=5 w=8/lam=0.5 " + "x" * 80)[:64]
    assert out.SeriesNumber == 77
    back = dicom.read_series(tmp_path / "out")
    assert np.allclose(back.orientation, ref.orientation)
    assert np.allclose(back.positions, ref.positions[:2], atol=1e-5)
    assert back.obliquity_deg == pytest.approx(ref.obliquity_deg, abs=1e-3)
    assert np.abs(back.hu - (ref.hu[:2] + 1.0)).max() <= 0.5 + 1e-4


# ------------------------------------------------------ dciodvfy absent: skip, or fail in CI
def run_without_dciodvfy(tmp_path: Path, require: bool) -> subprocess.CompletedProcess:
    """Run a dciodvfy-marked test in a fresh pytest with a PATH that has no dciodvfy."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_marked.py").write_text(
        "from _dciodvfy import dciodvfy_findings, requires_dciodvfy\n\n\n"
        "@requires_dciodvfy\n"
        "def test_marked(tmp_path):\n"
        "    assert dciodvfy_findings(tmp_path / 'x.dcm') == []\n")
    (tmp_path / "bin").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CTFLOW_REQUIRE_DCIODVFY"}
    env.update(PATH=str(tmp_path / "bin"), PYTHONPATH=str(TESTS),
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")  # plain pytest: starts in ~1 s
    if require:
        env["CTFLOW_REQUIRE_DCIODVFY"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider",
                           "test_marked.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def test_dciodvfy_tests_skip_when_absent(tmp_path):
    result = run_without_dciodvfy(tmp_path, require=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "dciodvfy (dicom3tools) is not installed" in result.stdout


def test_dciodvfy_tests_fail_when_required_and_absent(tmp_path):
    result = run_without_dciodvfy(tmp_path, require=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    assert "CTFLOW_REQUIRE_DCIODVFY=1 requires it" in result.stdout
