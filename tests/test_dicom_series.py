"""Folders with several series (choice by UID or description, listing when ambiguous, the
CLI's --series / --reference-series and `ctflow info`), and the geometry and value rules of
the reader on synthetic series: slice order along a tilted normal, irregular spacing,
padding ranges, RescaleType."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _dicom_edit import retag

from ctflow.cli import main
from ctflow.errors import InputError
from ctflow.io.dicom import list_series, read_series, write_series

KERNELS = {"B30f": "Thorax 1.0 B30f", "B70f": "Thorax 1.0 B70f"}


def two_kernel_folder(tmp_path: Path, size: int = 16) -> tuple[Path, dict[str, str]]:
    """One folder holding two 2-slice series of one study, different kernels; returns it
    and kernel → SeriesInstanceUID."""
    rng = np.random.default_rng(0)
    both = tmp_path / "both"
    both.mkdir()
    uids = {}
    for kernel, description in KERNELS.items():
        part = write_series(tmp_path / kernel, rng.uniform(-1000, 500, (2, size, size)), 1.0,
                            2.0, "fbp", 10, series_description=description)
        retag(tmp_path / kernel, ConvolutionKernel=kernel)
        uids[kernel] = str(pydicom.dcmread(part[0]).SeriesInstanceUID)
        for f in part:
            shutil.copy(f, both / f"{kernel}_{f.name}")
    return both, uids


def test_ambiguous_folder_lists_every_series_in_one_line(tmp_path):
    both, uids = two_kernel_folder(tmp_path)
    with pytest.raises(InputError) as info:
        read_series(both)
    message = str(info.value)
    assert "\n" not in message and "holds 2 series" in message
    for kernel, uid in uids.items():
        assert uid in message and f"'{KERNELS[kernel]}'" in message
        assert f"kernel {kernel}" in message
    assert message.count("2 slice(s)") == 2


def test_select_by_uid_exact_description_and_unique_substring(tmp_path):
    both, uids = two_kernel_folder(tmp_path)
    by_uid = read_series(both, uids["B70f"])
    assert by_uid.series_uid == uids["B70f"] and by_uid.kernel == "B70f"
    assert read_series(both, "thorax 1.0 b30f").series_uid == uids["B30f"]  # case-insensitive
    assert read_series(both, "B70").series_uid == uids["B70f"]  # unique substring
    assert read_series(both, series_uid=uids["B30f"]).kernel == "B30f"  # older keyword
    with pytest.raises(InputError, match="2 series match 'thorax'; choose one by UID"):
        read_series(both, "thorax")
    with pytest.raises(InputError, match="no series with UID or description 'lung'"):
        read_series(both, "lung")


def test_list_series_describes_each(tmp_path):
    both, uids = two_kernel_folder(tmp_path)
    infos = {i.kernel: i for i in list_series(both)}
    assert set(infos) == {"B30f", "B70f"}
    for kernel, info in infos.items():
        assert info.uid == uids[kernel] and info.modality == "CT"
        assert len(info.files) == 2 and info.size == "16×16"
        assert info.transfer_syntax == "Explicit VR Little Endian" and info.tilt_deg == 0.0


def test_info_lists_both_and_details_one(tmp_path, capsys):
    both, uids = two_kernel_folder(tmp_path)
    assert main(["info", str(both)]) == 0
    text = capsys.readouterr().out
    assert "2 DICOM series" in text and "choose one with --series" in text
    for kernel, uid in uids.items():
        line = next(x for x in text.splitlines() if uid in x)
        for word in (KERNELS[kernel], "CT", "2 slice(s)", "16×16", f"kernel {kernel}",
                     "Explicit VR Little Endian", "tilt 0°"):
            assert word in line, word
    assert main(["info", str(both), "--series", "b70f"]) == 0
    text = capsys.readouterr().out
    assert f"series uid        {uids['B70f']}" in text and "(2, 16, 16)" in text


def test_cli_series_options(tmp_path, capsys):
    both, uids = two_kernel_folder(tmp_path)
    sino = tmp_path / "s.h5"
    assert main(["simulate", "--from-dicom", str(both), "-o", str(sino)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds 2 series" in err[0] and not sino.exists()
    assert main(["simulate", "--from-dicom", str(both), "--series", "B70f", "--views", "12",
                 "-o", str(sino)]) == 0
    import h5py

    with h5py.File(sino) as f:
        assert f["metadata"].attrs["SourceSeriesInstanceUID"] == uids["B70f"]
        truth = f["image"][...]
    assert np.abs(truth - read_series(both, "B70f").hu).max() < 1e-3
    out = tmp_path / "out"
    base = ["reconstruct", str(sino), "--method", "fbp", "--format", "dicom", "-o", str(out),
            "--reference", str(both)]
    capsys.readouterr()
    assert main(base) != 0 and not out.exists()
    assert "holds 2 series" in capsys.readouterr().err
    assert main(base + ["--reference-series", uids["B30f"]]) == 0
    written = pydicom.dcmread(sorted(out.glob("*.dcm"))[0])
    reference = pydicom.dcmread(next(both.glob("B30f_*")))
    assert written.StudyInstanceUID == reference.StudyInstanceUID
    assert written.FrameOfReferenceUID == reference.FrameOfReferenceUID
    assert written.SeriesInstanceUID not in uids.values()
    capsys.readouterr()
    assert main(["simulate", "--phantom", "chest", "--series", "x", "-o",
                 str(tmp_path / "p.h5")]) != 0
    assert "--series applies to --from-dicom only" in capsys.readouterr().err


def test_non_ct_series_in_a_folder_refused_when_chosen(tmp_path):
    both, uids = two_kernel_folder(tmp_path)
    for f in both.glob("B30f_*"):
        ds = pydicom.dcmread(f)
        ds.Modality = "PT"
        ds.save_as(f)
    assert {i.modality for i in list_series(both)} == {"CT", "PT"}
    with pytest.raises(InputError, match="modality PT is not CT"):
        read_series(both, uids["B30f"])
    assert read_series(both, uids["B70f"]).hu.shape == (2, 16, 16)


# ------------------------------------------------------------------------------ geometry
def retag_each(folder: Path, changes: list[dict]) -> None:
    """Apply changes[k] to the k-th written file (CT00001.dcm, …)."""
    for path, change in zip(sorted(folder.glob("*.dcm")), changes, strict=True):
        ds = pydicom.dcmread(path)
        for key, value in change.items():
            setattr(ds, key, value)
        ds.save_as(path)


def test_tilted_series_sorted_along_the_normal_not_z(tmp_path):
    """Column direction tilted 30° and a large in-plane shift per slice: z falls from slice
    to slice while the position along the normal rises by 4 mm; the normal decides."""
    hu = np.stack([np.full((8, 8), 100.0 * k) for k in range(4)])
    write_series(tmp_path / "s", hu, 1.0, 4.0, "fbp", 10)
    a = np.radians(30.0)
    row, col = np.array([1.0, 0, 0]), np.array([0, np.cos(a), -np.sin(a)])
    normal = np.cross(row, col)
    positions = [k * 4.0 * normal + k * 10.0 * col for k in range(4)]
    assert all(np.diff([p[2] for p in positions]) < 0)
    order = [2, 0, 3, 1]  # files hold the slices out of order
    retag_each(tmp_path / "s", [
        {"ImageOrientationPatient": [f"{v:.6f}" for v in (*row, *col)],
         "ImagePositionPatient": [f"{v:.6f}" for v in positions[k]],
         "GantryDetectorTilt": "30", "InstanceNumber": k + 1,
         "PixelData": np.full((8, 8), 100 * k, "<i2").tobytes()} for k in order])
    vol = read_series(tmp_path / "s")
    assert [float(s[0, 0]) for s in vol.hu] == [0.0, 100.0, 200.0, 300.0]
    assert vol.spacing[0] == pytest.approx(4.0, abs=1e-5)
    assert vol.tilt_deg == 30.0 and vol.obliquity_deg == pytest.approx(30.0, abs=1e-3)
    assert any("in-plane shift 10 mm per slice" in n for n in vol.notes)


def test_irregular_spacing_reported_not_refused(tmp_path):
    write_series(tmp_path / "s", np.zeros((3, 8, 8)), 1.0, 2.0, "fbp", 10)
    retag_each(tmp_path / "s", [{"ImagePositionPatient": ["-3.5", "-3.5", z]}
                                for z in ("0", "2", "5")])
    with pytest.warns(UserWarning, match="irregular"):
        vol = read_series(tmp_path / "s")
    assert vol.slice_spacing_range == pytest.approx((2.0, 3.0))
    assert vol.spacing[0] == pytest.approx(2.5)
    assert any("varies from 2 to 3 mm" in n for n in vol.notes)


# ------------------------------------------------------------------------------- values
def stored_series(tmp_path: Path, stored: np.ndarray, **changes) -> Path:
    write_series(tmp_path / "s", np.zeros(stored.shape, np.float32), 1.0, 1.0, "fbp", 10)
    return retag(tmp_path / "s", PixelData=stored.astype("<i2").tobytes(), **changes)


def test_padding_range_limit_maps_to_air(tmp_path):
    stored = np.array([[[-2000, -1800, -1500, -1400, 0, 40]]], dtype=np.int16)
    folder = stored_series(tmp_path, stored)
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue
        ds.add_new(0x00280121, "SS", -1500)  # PixelPaddingRangeLimit
        ds.save_as(f)
    vol = read_series(folder)
    assert vol.hu[0, 0].tolist() == [-1000.0, -1000.0, -1000.0, -1400.0, 0.0, 40.0]
    assert vol.padding_mask[0, 0].tolist() == [True, True, True, False, False, False]


def test_padding_value_written_as_unsigned_is_read_signed(tmp_path):
    """A signed image whose PixelPaddingValue was stored as US 63536 (= −2000 as int16)."""
    stored = np.array([[[-2000, -1000, 0, 50]]], dtype=np.int16)
    folder = stored_series(tmp_path, stored)
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.add_new(0x00280120, "US", 63536)
        ds.save_as(f)
    vol = read_series(folder)
    assert vol.hu[0, 0].tolist() == [-1000.0, -1000.0, 0.0, 50.0]
    assert vol.padding_mask[0, 0].tolist() == [True, False, False, False]


@pytest.mark.parametrize("rescale_type, ok", [("HU", True), ("hu", True), ("", True),
                                               ("US", False), ("OD", False)])
def test_rescale_type(tmp_path, rescale_type, ok):
    folder = stored_series(tmp_path, np.array([[[10, 20]]], dtype=np.int16),
                           RescaleType=rescale_type, RescaleSlope="2", RescaleIntercept="-5")
    if ok:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert read_series(folder).hu[0, 0].tolist() == [15.0, 35.0]
    else:
        with pytest.raises(InputError, match=f"RescaleType '{rescale_type}': the rescaled "
                                             "values are not HU"):
            read_series(folder)
