"""Property: random byte corruptions and truncations of a valid HDF5 sinogram file or DICOM
file never make the readers fail with anything but ctflow's typed InputError."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ctflow.errors import InputError
from ctflow.io.dicom import DicomVolume, read_series, write_series
from ctflow.io.hdf5 import SinogramFile, read_sinogram, write_sinogram
from ctflow.operators import ParallelBeam2D

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_hdf5() -> bytes:
    op = ParallelBeam2D(image_size=8, views=6)
    rng = np.random.default_rng(0)
    data = SinogramFile(
        sinogram=rng.standard_normal((2, *op.geometry.sinogram_shape)).astype(np.float32),
        geometry=op.geometry, image_hu=np.zeros((2, 8, 8), np.float32),
        metadata={"PatientID": "X"}, attrs={"noise_model": "none", "noise_std": 0.0})
    with tempfile.TemporaryDirectory() as d:
        write_sinogram(Path(d) / "v.h5", data)
        return (Path(d) / "v.h5").read_bytes()


def _valid_dicom() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        files = write_series(Path(d) / "s", np.arange(64.0).reshape(1, 8, 8), 1.0, 1.0, "fbp", 6)
        return files[0].read_bytes()


HDF5 = _valid_hdf5()
DICOM = _valid_dicom()


def corruption(size: int) -> st.SearchStrategy:
    """A list of (offset, byte) overwrites and an optional truncation length."""
    edits = st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1,
                     max_size=12)
    return st.tuples(edits, st.one_of(st.none(), st.integers(0, size)))


def corrupt(data: bytes, spec) -> bytes:
    edits, cut = spec
    buf = bytearray(data)
    for offset, value in edits:
        buf[offset] = value
    return bytes(buf[:cut] if cut is not None else buf)


@SETTINGS
@given(spec=corruption(len(HDF5)))
def test_hdf5_reader_raises_only_input_error(tmp_path, spec):
    path = tmp_path / "c.h5"
    path.write_bytes(corrupt(HDF5, spec))
    try:
        data = read_sinogram(path)
    except InputError as exc:
        assert str(exc).startswith(str(path))
        assert "\n" not in str(exc)
        return
    assert isinstance(data, SinogramFile)
    assert np.isfinite(data.sinogram).all()
    assert data.sinogram.shape[1:] == tuple(data.geometry.sinogram_shape)


@SETTINGS
@given(spec=corruption(len(DICOM)))
@example(spec=([(945, 0)], None))  # an unknown VR in SeriesInstanceUID, parsed lazily
def test_dicom_reader_raises_only_input_error(tmp_path, spec):
    folder = tmp_path / "series"
    folder.mkdir(exist_ok=True)
    (folder / "IM1").write_bytes(corrupt(DICOM, spec))
    try:
        vol = read_series(folder)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(vol, DicomVolume)
    assert vol.hu.ndim == 3 and np.isfinite(vol.hu).all()


def test_uncorrupted_files_read():
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "v.h5").write_bytes(HDF5)
        assert read_sinogram(Path(d) / "v.h5").sinogram.shape[0] == 2
        (Path(d) / "s").mkdir()
        (Path(d) / "s" / "IM1").write_bytes(DICOM)
        assert np.array_equal(read_series(Path(d) / "s").hu[0], np.arange(64.0).reshape(8, 8))


@pytest.mark.parametrize("cut", [0, 1, 8, 100, 500])
def test_hdf5_truncations(tmp_path, cut):
    (tmp_path / "t.h5").write_bytes(HDF5[:cut])
    with pytest.raises(InputError):
        read_sinogram(tmp_path / "t.h5")


def test_segfaulting_file_gives_input_error(tmp_path):
    """Found by this property test: one byte in the datatype message of the string attribute
    /image@units makes libhdf5 segfault while reading attributes.  The forked probe takes
    the crash; the caller gets an InputError."""
    buf = bytearray(HDF5)
    buf[HDF5.index(b"units\x00") + 9] = 5
    (tmp_path / "crash.h5").write_bytes(bytes(buf))
    with pytest.raises(InputError, match="corrupt HDF5"):
        read_sinogram(tmp_path / "crash.h5")


def test_probe_reports_a_crash(tmp_path, monkeypatch):
    import os
    import signal

    import ctflow.io.hdf5 as hdf5

    (tmp_path / "v.h5").write_bytes(HDF5)
    assert hdf5.probe_in_child(tmp_path / "v.h5") is None
    monkeypatch.setattr(hdf5, "_read_everything", lambda path: os.kill(os.getpid(),
                                                                          signal.SIGSEGV))
    assert "crashed" in hdf5.probe_in_child(tmp_path / "v.h5")
    with pytest.raises(InputError, match=r"v\.h5: corrupt HDF5 file \(the HDF5 library crashed"):
        read_sinogram(tmp_path / "v.h5")
