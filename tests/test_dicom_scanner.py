"""Reading what scanners send: the real compressed and tilted series of the licensed pool,
every transfer syntax that can be encoded here (decoded HU equal to the uncompressed
series, or within a stated tolerance when lossy), and one-line refusals of pixel data that
cannot be decoded.

Encoders: pydicom itself (RLE, deflate), pylibjpeg-openjpeg (JPEG 2000) and dcmtk
(``dcmcjpeg``, ``dcmcjpls``, ``dcmconv``: JPEG baseline/extended/lossless, JPEG-LS, big
endian; those cases skip when dcmtk is absent; CI installs it)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from ctflow.cli import main
from ctflow.errors import InputError
from ctflow.io.dicom import read_series
from ctflow.realct import realct_dir

CT_SMALL = get_testdata_file("CT_small.dcm")
J2K = realct_dir() / "totalsegmentator-j2k"
GE_TILT = realct_dir() / "ge-head-tilt"
needs_j2k = pytest.mark.skipif(not J2K.is_dir(), reason=f"real-CT folder absent ({J2K})")
needs_ge = pytest.mark.skipif(not GE_TILT.is_dir(), reason=f"real-CT folder absent ({GE_TILT})")
DCMTK = shutil.which("dcmcjpeg") is not None and shutil.which("dcmcjpls") is not None \
    and shutil.which("dcmconv") is not None
needs_dcmtk = pytest.mark.skipif(not DCMTK, reason="dcmtk is not installed (apt-get install "
                                 "dcmtk): its encoders make the JPEG, JPEG-LS and big endian "
                                 "test files")


# ------------------------------------------------------------------------- real pool series
@needs_j2k
def test_real_jpeg2000_series_loads_in_order_with_plausible_hu():
    vol = read_series(J2K)
    assert vol.hu.shape == (20, 512, 512)
    assert "JPEG 2000" in vol.transfer_syntax
    normal = np.cross(vol.orientation[:3], vol.orientation[3:])
    along = vol.positions @ normal
    assert np.all(np.diff(along) > 0)  # monotonic along the slice normal
    assert vol.spacing[0] == pytest.approx(2.0, abs=1e-6)
    assert vol.slice_spacing_range == pytest.approx((2.0, 2.0), abs=1e-6)
    assert vol.tilt_deg == 0.0 and vol.obliquity_deg == pytest.approx(0.0, abs=1e-6)
    corner = vol.hu[:, :16, :16]  # outside the body: air
    assert abs(float(corner.mean()) + 1000.0) < 50.0
    centre = vol.hu[:, 240:272, 240:272]  # mediastinum / upper abdomen: soft tissue
    assert -100.0 < float(centre.mean()) < 100.0
    for k in (0, 19):  # pydicom's own decode of that file × slope + intercept
        ds = pydicom.dcmread(vol.files[k])
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(vol.hu[k], expected.astype(np.float32))


@needs_ge
def test_real_tilted_gantry_series_loads_with_padding_as_air():
    vol = read_series(GE_TILT)
    assert vol.hu.shape == (4, 512, 512)
    assert vol.tilt_deg == pytest.approx(18.5)
    assert vol.obliquity_deg == pytest.approx(18.5, abs=0.05)
    assert [f.name for f in vol.files] == ["11.dcm", "12.dcm", "13.dcm", "14.dcm"]
    normal = np.cross(vol.orientation[:3], vol.orientation[3:])
    assert np.all(np.diff(vol.positions @ normal) > 0)
    # spacing along the normal (4.22 mm table steps × cos 18.5°), not the table step
    assert vol.spacing[0] == pytest.approx(4.22 * np.cos(np.radians(18.5)), abs=2e-3)
    raw = np.stack([pydicom.dcmread(f).pixel_array for f in vol.files])
    padded = raw == -1500
    assert padded.sum() > 100_000  # the corners outside the 25 cm field of view
    assert vol.padding_mask is not None and np.array_equal(vol.padding_mask, padded)
    assert np.all(vol.hu[padded] == -1000.0)
    assert vol.hu.min() >= -1024.0  # no −1500-derived values left
    assert np.array_equal(vol.hu[~padded], raw[~padded].astype(np.float32))  # slope 1, 0
    assert any("tilted" in n and "nothing is resampled" in n for n in vol.notes)
    assert any("padding" in n for n in vol.notes)


@needs_ge
def test_info_reports_tilt_and_padding(capsys):
    assert main(["info", str(GE_TILT)]) == 0
    text = capsys.readouterr().out
    assert "tilt 18.5°" in text and "gantry tilt       18.5°" in text
    assert "each slice is reconstructed in its own plane" in text
    assert "padding pixels    248720" in text or "padding pixels" in text


# ---------------------------------------------------------------------- transfer syntaxes
def source_series(folder: Path, unsigned: bool = False) -> list[Path]:
    """Two uncompressed CT files (Explicit VR Little Endian) from CT_small: the original
    and a mirrored copy 5 mm further.  ``unsigned``: stored as 12-bit unsigned values with
    intercept −2048 (as many scanners store CT), the same HU."""
    folder.mkdir(parents=True)
    paths = []
    for k in range(2):
        ds = pydicom.dcmread(CT_SMALL)
        pixels = ds.pixel_array if k == 0 else ds.pixel_array[:, ::-1]
        if unsigned:
            pixels = (pixels.astype(np.int32) + 1024).astype(np.uint16)
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
            ds.RescaleIntercept = "-2048"
            for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
                if keyword in ds:
                    delattr(ds, keyword)
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 5.0 * k]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        paths.append(folder / f"IM{k}.dcm")
        ds.save_as(paths[-1])
    return paths


def with_pydicom(syntax: str, **kwargs) -> Callable[[Path, Path], None]:
    def encode(src: Path, dst: Path) -> None:
        ds = pydicom.dcmread(src)
        ds.compress(syntax, **kwargs)
        ds.save_as(dst)
    return encode


def deflate(src: Path, dst: Path) -> None:
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(dst, enforce_file_format=True)


def with_dcmtk(*argv: str) -> Callable[[Path, Path], None]:
    def encode(src: Path, dst: Path) -> None:
        subprocess.run([*argv, str(src), str(dst)], check=True, capture_output=True,
                       timeout=60)
    return encode


# name, encoder, expected transfer syntax UID, source stored unsigned, max |ΔHU| (None:
# lossy, checked by mean error and PSNR), needs dcmtk
CASES = [
    ("rle", with_pydicom(RLELossless), "1.2.840.10008.1.2.5", False, 0, False),
    ("deflate", deflate, "1.2.840.10008.1.2.1.99", False, 0, False),
    ("j2k-lossless", with_pydicom(JPEG2000Lossless), "1.2.840.10008.1.2.4.90", False, 0,
     False),
    ("j2k-lossless-u12", with_pydicom(JPEG2000Lossless), "1.2.840.10008.1.2.4.90", True, 0,
     False),
    ("j2k-lossy", with_pydicom(JPEG2000, j2k_cr=[10]), "1.2.840.10008.1.2.4.91", False,
     None, False),
    ("big-endian", with_dcmtk("dcmconv", "+tb"), "1.2.840.10008.1.2.2", False, 0, True),
    ("jpeg-lossless-p14", with_dcmtk("dcmcjpeg", "+el"), "1.2.840.10008.1.2.4.57", False, 0,
     True),
    ("jpeg-lossless-sv1", with_dcmtk("dcmcjpeg", "+e1"), "1.2.840.10008.1.2.4.70", False, 0,
     True),
    ("jpeg-baseline", with_dcmtk("dcmcjpeg", "+eb"), "1.2.840.10008.1.2.4.50", False, None,
     True),
    ("jpeg-extended", with_dcmtk("dcmcjpeg", "+ee"), "1.2.840.10008.1.2.4.51", False, None,
     True),
    ("jpeg-ls-lossless", with_dcmtk("dcmcjpls", "+el"), "1.2.840.10008.1.2.4.80", False, 0,
     True),
    ("jpeg-ls-near", with_dcmtk("dcmcjpls", "+en", "+md", "2"), "1.2.840.10008.1.2.4.81",
     True, 2, True),
]


@pytest.mark.parametrize("name, encode, uid, unsigned, max_error, dcmtk", CASES,
                         ids=[c[0] for c in CASES])
def test_every_transfer_syntax_decodes_to_the_same_hu(tmp_path, name, encode, uid, unsigned,
                                                      max_error, dcmtk):
    if dcmtk and not DCMTK:
        pytest.skip("dcmtk is not installed (apt-get install dcmtk): its encoders make "
                    "this test file")
    sources = source_series(tmp_path / "plain", unsigned)
    reference = read_series(tmp_path / "plain")
    (tmp_path / "coded").mkdir()
    for src in sources:
        encode(src, tmp_path / "coded" / src.name)
    for f in (tmp_path / "coded").iterdir():  # the files really are in that syntax
        assert pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID == uid
    vol = read_series(tmp_path / "coded")
    assert pydicom.uid.UID(uid).name in vol.transfer_syntax
    assert vol.hu.shape == reference.hu.shape == (2, 128, 128)
    assert np.allclose(vol.positions, reference.positions)
    error = np.abs(vol.hu.astype(np.float64) - reference.hu)
    lossy_only = uid in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                         "1.2.840.10008.1.2.4.81")
    assert any("lossy compressed" in n for n in vol.notes) == lossy_only
    if max_error is not None:
        assert error.max() <= max_error
        return
    data_range = float(reference.hu.max() - reference.hu.min())
    psnr = 20 * np.log10(data_range / np.sqrt(np.mean(error ** 2)))
    assert error.max() > 0  # really lossy: a lossless path would not need this branch
    assert error.mean() < 25.0 and psnr > 35.0, (error.mean(), psnr)


# --------------------------------------------------------- undecodable or corrupt pixel data
def j2k_file(folder: Path) -> Path:
    folder.mkdir()
    ds = pydicom.dcmread(CT_SMALL)
    ds.compress(JPEG2000Lossless)
    path = folder / "IM0.dcm"
    ds.save_as(path)
    return path


def test_transfer_syntax_without_decoder_is_named_in_one_line(tmp_path, capsys):
    path = j2k_file(tmp_path / "s")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.93"  # JPEG 2000 Part 2 MC
    ds.save_as(path)
    with pytest.raises(InputError) as info:
        read_series(tmp_path / "s")
    message = str(info.value)
    assert "\n" not in message
    assert "JPEG 2000 Part 2 Multi-component Image Compression" in message
    assert "1.2.840.10008.1.2.4.93" in message and "cannot be decoded" in message
    assert main(["info", str(tmp_path / "s")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1.2.840.10008.1.2.4.93" in err[0]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_compressed_frame_is_one_line_error(tmp_path, damage):
    path = j2k_file(tmp_path / "s")
    ds = pydicom.dcmread(path)
    frame = b"".join(next(generate_fragmented_frames(ds.PixelData)))
    rng = np.random.default_rng(0)
    bad = frame[: len(frame) // 8] if damage == "truncated" else \
        frame[:40] + rng.integers(0, 256, len(frame) - 40, dtype=np.uint8).tobytes()
    broken = copy.deepcopy(ds)
    broken.PixelData = encapsulate([bad])
    broken.save_as(path)
    with pytest.raises(InputError) as info:
        read_series(tmp_path / "s")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "cannot decode pixel data (transfer syntax JPEG 2000" in message


def test_unknown_transfer_syntax_refused(tmp_path):
    source_series(tmp_path / "s")
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"  # not a transfer syntax
        ds.save_as(f)
    with pytest.raises(InputError, match="unknown transfer syntax 1.2.3.4.5.6.7"):
        read_series(tmp_path / "s")
