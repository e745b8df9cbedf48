"""DICOM series: write→read round trips, reference pass-through, sorting, rescale and
padding, and refusal of non-CT input.  Validation by dciodvfy: tests/test_dicom_checks.py."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _dicom_edit import retag
from pydicom.data import get_testdata_file

from ctflow.errors import InputError, OutputError
from ctflow.io.dicom import read_series, write_series

CT_SMALL = get_testdata_file("CT_small.dcm")


def volume(seed: int = 0, shape: tuple[int, int, int] = (3, 24, 32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1024.0, 3000.0, shape).astype(np.float32)


def reference_folder(tmp_path: Path) -> Path:
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copy(CT_SMALL, ref / "IM0001")
    return ref


def test_round_trip_within_one_hu_and_geometry(tmp_path):
    hu = volume()
    files = write_series(tmp_path / "out", hu, pixel_spacing_mm=0.7, slice_spacing_mm=2.5,
                         method="fbp", views=60)
    assert len(files) == 3 and all(f.is_file() for f in files)
    back = read_series(tmp_path / "out")
    assert back.hu.shape == hu.shape
    assert np.abs(back.hu - hu).max() <= 0.5 + 1e-4  # int16 rounding only
    assert back.spacing == pytest.approx((2.5, 0.7, 0.7))
    assert np.allclose(np.diff(back.positions[:, 2]), 2.5)


def test_written_attributes(tmp_path):
    files = write_series(tmp_path / "s", volume(1, (2, 16, 16)), 1.0, 1.0, method="cgls",
                         views=45, window=(50.0, 350.0))
    a, b = (pydicom.dcmread(f) for f in files)
    assert list(a.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert a.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert "cgls" in a.DerivationDescription and "45 views" in a.DerivationDescription
    assert a.pixel_array.dtype == np.int16 and a.PixelRepresentation == 1
    assert (float(a.RescaleSlope), float(a.RescaleIntercept)) == (1.0, 0.0)
    assert (float(a.WindowCenter), float(a.WindowWidth)) == (50.0, 350.0)
    assert [float(v) for v in a.PixelSpacing] == [1.0, 1.0]


def test_reference_pass_through(tmp_path):
    ref = read_series(reference_folder(tmp_path))
    src = pydicom.dcmread(CT_SMALL)
    files = write_series(tmp_path / "out", ref.hu + 7.0, 0.5, 5.0, "fbp", 60, reference=ref)
    out = pydicom.dcmread(files[0])
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID",
                "StudyDate"):
        assert str(out[key].value) == str(src[key].value), key
    assert out.SeriesInstanceUID != src.SeriesInstanceUID
    assert out.SOPInstanceUID != src.SOPInstanceUID
    # the new 0.5 mm pixels are centred where the reference's 0.661 mm pixels were
    back = read_series(tmp_path / "out")
    r, c = back.orientation[:3], back.orientation[3:]
    centre_new = back.positions[0] + (r + c) * 0.5 * (128 - 1) / 2
    centre_ref = ref.positions[0] + (r + c) * ref.spacing[2] * (128 - 1) / 2
    assert np.allclose(centre_new, centre_ref, atol=1e-4)
    assert np.abs(back.hu - (ref.hu + 7.0)).max() <= 0.5 + 1e-4


def test_reads_ct_small_with_rescale(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    vol = read_series(reference_folder(tmp_path))
    assert np.array_equal(vol.hu[0], expected.astype(np.float32))
    assert vol.spacing[1:] == pytest.approx((0.661468, 0.661468))
    assert vol.reference["PatientID"] == ds.PatientID


def test_sorted_by_position_not_name_and_non_images_ignored(tmp_path):
    hu = volume(2, (4, 8, 8))
    files = write_series(tmp_path / "s", hu, 1.0, 3.0, "fbp", 10)
    for i, f in enumerate(reversed(files)):  # names now run against the slice order
        f.rename(f.with_name(f"z{i}.dcm"))
    (tmp_path / "s" / "README.txt").write_text("not dicom")
    (tmp_path / "s" / "notes.dcm").write_bytes(b"\x00" * 50)
    back = read_series(tmp_path / "s")
    assert np.abs(back.hu - hu).max() <= 0.5 + 1e-4
    assert np.allclose(back.positions[:, 2], [0.0, 3.0, 6.0, 9.0])


def test_rescale_and_padding_value(tmp_path):
    files = write_series(tmp_path / "s", np.zeros((1, 4, 4), np.float32), 1.0, 1.0, "fbp", 10)
    ds = pydicom.dcmread(files[0])
    stored = np.array([[0, 100, 200, 300]] * 4, dtype=np.int16)
    stored[0, 0] = -2000
    ds.PixelData = stored.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-1024"
    ds.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue
    ds.save_as(files[0])
    back = read_series(tmp_path / "s")
    expected = stored * 2.0 - 1024.0
    expected[0, 0] = -1000.0  # padding becomes air
    assert np.array_equal(back.hu[0], expected)
    assert back.padding_mask is not None and back.padding_mask.sum() == 1


def test_clipping_to_int16_warns(tmp_path):
    hu = np.full((1, 4, 4), 40000.0, np.float32)
    with pytest.warns(UserWarning, match="clipped"):
        write_series(tmp_path / "s", hu, 1.0, 1.0, "fbp", 10)
    assert read_series(tmp_path / "s").hu.max() == 32767.0


@pytest.mark.parametrize("modality", ["MR", "SEG"])
def test_non_ct_refused(tmp_path, modality):
    write_series(tmp_path / "s", volume(3, (1, 8, 8)), 1.0, 1.0, "fbp", 10)
    retag(tmp_path / "s", Modality=modality)
    with pytest.raises(InputError, match=f"modality {modality} is not CT"):
        read_series(tmp_path / "s")


def test_no_pixel_data_refused(tmp_path):
    write_series(tmp_path / "s", volume(3, (1, 8, 8)), 1.0, 1.0, "fbp", 10)
    retag(tmp_path / "s", PixelData=None)
    with pytest.raises(InputError, match="without pixel data"):
        read_series(tmp_path / "s")


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM files"):
        read_series(tmp_path / "empty")
    with pytest.raises(InputError, match="no such folder"):
        read_series(tmp_path / "nope")


def test_two_series_need_a_choice(tmp_path):
    a = write_series(tmp_path / "a", volume(4, (2, 8, 8)), 1.0, 1.0, "fbp", 10)
    b = write_series(tmp_path / "b", volume(5, (1, 8, 8)), 1.0, 1.0, "fbp", 10)
    both = tmp_path / "both"
    both.mkdir()
    for f in a + b:
        shutil.copy(f, both / f"{f.parent.name}{f.name}")
    with pytest.raises(InputError, match="holds 2 series"):
        read_series(both)
    uid = pydicom.dcmread(b[0]).SeriesInstanceUID
    assert read_series(both, series_uid=uid).hu.shape == (1, 8, 8)


def test_no_partial_series_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError):
        write_series(out, np.full((2, 4, 4), np.nan), 1.0, 1.0, "fbp", 10)
    write_series(out, volume(6, (1, 4, 4)), 1.0, 1.0, "fbp", 10)
    with pytest.raises(OutputError, match="already exists"):
        write_series(out, volume(7, (1, 4, 4)), 1.0, 1.0, "fbp", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_series(out, volume(7, (2, 4, 4)), 1.0, 1.0, "fbp", 10, overwrite=True)
    assert read_series(out).hu.shape == (2, 4, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folders left
