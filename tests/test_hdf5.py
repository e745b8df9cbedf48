"""HDF5 sinogram files: bit-exact round trips of the version-1 layout, LoDoPaB-style and
DXchange reading, atomic writes."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from ctflow.errors import InputError, OutputError
from ctflow.io.hdf5 import (
    LODOPAB_MU_MAX_PER_M,
    ReconstructionFile,
    SinogramFile,
    file_kind,
    read_reconstruction,
    read_sinogram,
    write_reconstruction,
    write_sinogram,
)
from ctflow.operators import FanBeam2D, ParallelBeam2D


def sample(fan: bool = False, slices: int = 2, seed: int = 0) -> SinogramFile:
    op = (FanBeam2D if fan else ParallelBeam2D)(image_size=16, views=10, pixel_size_mm=0.8)
    views, det = op.geometry.sinogram_shape
    rng = np.random.default_rng(seed)
    return SinogramFile(
        sinogram=rng.standard_normal((slices, views, det)).astype(np.float32),
        geometry=op.geometry,
        image_hu=rng.uniform(-1000, 1000, (slices, 16, 16)).astype(np.float32),
        metadata={"PatientID": "P-1", "StudyInstanceUID": "1.2.3.4", "SliceSpacingMM": 2.5,
                  "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]},
        attrs={"noise_model": "poisson", "photons": 1e5, "noise_std": 0.0123, "seed": 7,
               "source": "phantom:chest"},
    )


@pytest.mark.parametrize("fan", [False, True])
def test_round_trip_is_bit_exact(tmp_path, fan):
    data = sample(fan)
    write_sinogram(tmp_path / "s.h5", data)
    back = read_sinogram(tmp_path / "s.h5")
    assert back.layout == "ctflow-v1"
    assert back.sinogram.dtype == np.float32
    assert back.sinogram.tobytes() == data.sinogram.tobytes()
    assert back.image_hu.tobytes() == data.image_hu.tobytes()
    assert back.geometry.to_json() == data.geometry.to_json()
    assert np.asarray(back.geometry.angles).tobytes() == \
        np.asarray(data.geometry.angles, dtype=np.float64).tobytes()
    assert back.metadata == data.metadata
    assert back.attrs == data.attrs
    assert file_kind(tmp_path / "s.h5") == "sinogram"


def test_layout_on_disk(tmp_path):
    write_sinogram(tmp_path / "s.h5", sample(slices=1))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert int(f.attrs["ctflow_format"]) == 1
        spec = json.loads(f.attrs["geometry"])
        assert spec["type"] == "parallel" and spec["image_size"] == 16
        assert f["sinogram"].dtype == np.float32 and f["sinogram"].ndim == 3
        assert f["angles"].dtype == np.float64
        assert f["metadata"].attrs["PatientID"] == "P-1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no temp file left


def test_two_dimensional_sinogram_reads_as_one_slice(tmp_path):
    data = sample(slices=1)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.attrs["ctflow_format"] = 1
        f.attrs["geometry"] = data.geometry.to_json()
        f["sinogram"] = data.sinogram[0]
        f["angles"] = np.asarray(data.geometry.angles, dtype=np.float64)
    back = read_sinogram(tmp_path / "s.h5")
    assert back.sinogram.shape == data.sinogram.shape
    assert np.array_equal(back.sinogram, data.sinogram)
    assert back.image_hu is None and back.metadata == {}


def test_reconstruction_round_trip(tmp_path):
    data = sample()
    rec = ReconstructionFile(image_hu=data.image_hu, geometry=data.geometry,
                             metadata=data.metadata, attrs={"method": "fbp", "nfe": [0, 0]})
    write_reconstruction(tmp_path / "r.h5", rec)
    back = read_reconstruction(tmp_path / "r.h5")
    assert back.image_hu.tobytes() == data.image_hu.tobytes()
    assert back.geometry.to_json() == data.geometry.to_json()
    assert back.attrs["method"] == "fbp" and back.attrs["nfe"] == [0, 0]
    assert file_kind(tmp_path / "r.h5") == "reconstruction"
    with pytest.raises(InputError, match="ctflow reconstruction"):
        read_sinogram(tmp_path / "r.h5")


def test_existing_output_kept_without_overwrite(tmp_path):
    write_sinogram(tmp_path / "s.h5", sample(seed=1))
    before = (tmp_path / "s.h5").read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        write_sinogram(tmp_path / "s.h5", sample(seed=2))
    assert (tmp_path / "s.h5").read_bytes() == before
    write_sinogram(tmp_path / "s.h5", sample(seed=2), overwrite=True)
    assert np.array_equal(read_sinogram(tmp_path / "s.h5").sinogram, sample(seed=2).sinogram)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_lodopab_needs_a_geometry_and_uses_the_preset(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 0.05, (1, 1000, 513)).astype(np.float32)
    with h5py.File(tmp_path / "obs.hdf5", "w") as f:
        f["data"] = data
    with pytest.raises(InputError, match="needs a geometry"):
        read_sinogram(tmp_path / "obs.hdf5")
    back = read_sinogram(tmp_path / "obs.hdf5", preset="lodopab")
    assert back.layout == "lodopab"
    g = back.geometry
    assert (g.type, g.image_size, g.det_count) == ("parallel", 362, 513)
    assert g.pixel_size_mm == pytest.approx(260 / 362)
    assert np.allclose(g.angles, (np.arange(1000) + 0.5) * np.pi / 1000)
    assert np.allclose(back.sinogram, data * LODOPAB_MU_MAX_PER_M, rtol=1e-6)


def test_lodopab_with_geometry_json(tmp_path):
    op = ParallelBeam2D(image_size=16, views=12)
    views, det = op.geometry.sinogram_shape
    with h5py.File(tmp_path / "obs.hdf5", "w") as f:
        f["data"] = np.ones((2, views, det), np.float32)
    spec = op.geometry.to_json()
    back = read_sinogram(tmp_path / "obs.hdf5", preset=spec)
    assert back.sinogram.shape == (2, views, det)
    assert np.allclose(back.geometry.angles, np.arange(views) * np.pi / views)
    (tmp_path / "g.json").write_text(spec)
    assert read_sinogram(tmp_path / "obs.hdf5", preset=str(tmp_path / "g.json")).layout \
        == "lodopab"
    with pytest.raises(InputError, match="unknown geometry preset"):
        read_sinogram(tmp_path / "obs.hdf5", preset="nope")


def _dxchange(path, theta, units=None, dark=True):
    rng = np.random.default_rng(1)
    views, rows, cols = len(theta), 3, 20
    p = rng.uniform(0.0, 3.0, (views, rows, cols))
    white = rng.uniform(900, 1100, (4, rows, cols))
    darkf = rng.uniform(5, 15, (2, rows, cols)) if dark else np.zeros((1, rows, cols))
    flat, dk = white.mean(0), darkf.mean(0)
    counts = dk + (flat - dk) * np.exp(-p)
    with h5py.File(path, "w") as f:
        ex = f.create_group("exchange")
        ex["data"] = counts
        ex["data_white"] = white
        if dark:
            ex["data_dark"] = darkf
        ex["theta"] = theta
        if units:
            ex["theta"].attrs["units"] = units
    return p.transpose(1, 0, 2)


def test_dxchange_flat_dark_log_and_degrees(tmp_path):
    theta = np.linspace(0.0, 180.0, 15, endpoint=False)
    expected = _dxchange(tmp_path / "dx.h5", theta)
    back = read_sinogram(tmp_path / "dx.h5")
    assert back.layout == "dxchange"
    assert back.sinogram.shape == (3, 15, 20)
    assert np.allclose(back.sinogram, expected, atol=1e-5)
    assert np.allclose(back.geometry.angles, np.deg2rad(theta))
    assert any("assumed in degrees" in n for n in back.notes)


def test_dxchange_radians_detected_and_units_attribute(tmp_path):
    theta = np.linspace(0.0, np.pi, 15, endpoint=False)
    _dxchange(tmp_path / "r.h5", theta, dark=False)
    back = read_sinogram(tmp_path / "r.h5")
    assert np.allclose(back.geometry.angles, theta)
    assert any("assumed in radians" in n for n in back.notes)
    assert any("dark field assumed 0" in n for n in back.notes)
    small_degrees = np.linspace(0.0, 3.0, 15)  # ambiguous by range: the attribute decides
    _dxchange(tmp_path / "d.h5", small_degrees, units="degrees")
    back = read_sinogram(tmp_path / "d.h5")
    assert np.allclose(back.geometry.angles, np.deg2rad(small_degrees))
    assert any("'units' attribute" in n for n in back.notes)
