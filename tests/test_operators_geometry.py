"""CTGeometry: defaults, JSON round trip (DESIGN §3 keys), validation, ASTRA consistency,
immutability, equality and hashing (angle tolerance), and the disk cache helpers."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle

import astra
import numpy as np
import pytest

from ctflow.operators import CTGeometry, FanBeam2D, GeometryError, ParallelBeam2D, make_geometry
from ctflow.operators.cache import cache_dir, load_arrays, save_arrays

KEYS = {"type", "image_size", "pixel_size_mm", "det_count", "det_spacing_mm",
        "source_origin_mm", "origin_det_mm"}


def test_parallel_defaults_cover_the_diagonal():
    g = ParallelBeam2D(64, 30, pixel_size_mm=0.5).geometry
    assert g.type == "parallel" and g.sinogram_shape == (30, g.det_count)
    assert g.det_spacing_mm == 0.5
    assert g.det_count * g.det_spacing_mm >= 64 * 0.5 * math.sqrt(2)
    assert np.allclose(g.angles, np.arange(30) * np.pi / 30)
    assert g.source_origin_mm is None and g.origin_det_mm is None


def test_fan_defaults():
    g = FanBeam2D(64, 40).geometry
    fov = 64.0
    assert g.source_origin_mm == 4 * fov and g.origin_det_mm == 2 * fov
    assert np.isclose(g.magnification, 1.5) and np.isclose(g.det_spacing_mm, 1.5)
    assert np.allclose(g.angles, np.arange(40) * 2 * np.pi / 40)
    # the detector covers the shadow of the image circle
    gamma = math.asin(g.radius_mm / g.source_origin_mm)
    assert g.det_count * g.det_spacing_mm >= 2 * (g.source_origin_mm + g.origin_det_mm) \
        * math.tan(gamma)


def test_json_roundtrip_and_keys():
    angles = np.array([0.1, 0.5, 2.0])
    g = make_geometry("fan", 32, angles, pixel_size_mm=0.7, source_origin_mm=200.0,
                      origin_det_mm=100.0, det_count=60, det_spacing_mm=1.1)
    text = g.to_json()
    data = json.loads(text)
    assert set(data) == KEYS and "angles" not in data
    back = CTGeometry.from_json(text, angles)
    assert back.to_json() == text and np.array_equal(back.angles, angles)
    par = json.loads(ParallelBeam2D(16, 4).geometry.to_json())
    assert par["type"] == "parallel" and par["source_origin_mm"] is None


def test_astra_vectors_match_our_convention():
    for op in (ParallelBeam2D(16, 7, pixel_size_mm=0.3), FanBeam2D(16, 7)):
        vec = astra.geom_2vec(op.geometry.astra_proj_geom())["Vectors"]
        assert np.allclose(vec, op.geometry.vectors(), atol=1e-12)


@pytest.mark.parametrize("bad", [
    dict(type="cone"),
    dict(image_size=1),
    dict(image_size=16.5),
    dict(pixel_size_mm=-1.0),
    dict(pixel_size_mm=float("nan")),
    dict(det_count=0),
    dict(det_spacing_mm=0.0),
    dict(source_origin_mm=5.0),  # source inside the image circle
    dict(source_origin_mm=None),
    dict(origin_det_mm=-3.0),
    dict(angles=np.array([])),
    dict(angles=np.array([0.0, np.nan])),
    dict(angles=np.zeros((2, 2))),
])
def test_impossible_geometry_is_rejected(bad):
    good = dict(type="fan", image_size=16, pixel_size_mm=1.0, det_count=30,
                det_spacing_mm=1.0, source_origin_mm=60.0, origin_det_mm=30.0,
                angles=np.linspace(0, 6, 8))
    CTGeometry(**good)  # the baseline is valid
    with pytest.raises(GeometryError):
        CTGeometry(**{**good, **bad})


def test_from_json_errors():
    angles = np.zeros(3)
    with pytest.raises(GeometryError, match="JSON"):
        CTGeometry.from_json("{not json", angles)
    with pytest.raises(GeometryError, match="lacks"):
        CTGeometry.from_json('{"type": "parallel"}', angles)
    g = json.loads(ParallelBeam2D(16, 3).geometry.to_json())
    with pytest.raises(GeometryError, match="unknown"):
        CTGeometry.from_json(json.dumps({**g, "pitch": 1}), angles)
    with pytest.raises(GeometryError, match="no source"):
        CTGeometry.from_json(json.dumps({**g, "source_origin_mm": 100.0}), angles)
    with pytest.raises(GeometryError):
        CTGeometry.from_json(json.dumps(g), ["a", "b"])


def test_operator_constructors_reject_bad_geometry():
    with pytest.raises(GeometryError):
        ParallelBeam2D(32, 0)
    with pytest.raises(GeometryError):
        FanBeam2D(32, 10, source_origin_mm=10.0)  # inside the 32 mm image
    with pytest.raises(ValueError):  # GeometryError is a ValueError
        ParallelBeam2D(32, 10, pixel_size_mm=0)


def test_cache_key_and_atomic_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CTFLOW_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CTFLOW_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "ctflow"
    a = ParallelBeam2D(16, 5).geometry
    b = ParallelBeam2D(16, np.linspace(0, np.pi, 5, endpoint=False) + 1e-9).geometry
    assert a.cache_key("m") != b.cache_key("m") and a.cache_key("m") != a.cache_key("n")
    assert a.cache_key("m") == ParallelBeam2D(16, 5).geometry.cache_key("m")
    path = save_arrays(tmp_path / "d" / "f.npz", x=np.arange(4))
    assert np.array_equal(load_arrays(path)["x"], np.arange(4))
    assert [p.name for p in path.parent.iterdir()] == ["f.npz"]  # no temporary left over
    path.write_bytes(b"\x00garbage")
    assert load_arrays(path) is None and load_arrays(tmp_path / "missing.npz") is None


def test_geometry_is_frozen():
    g = ParallelBeam2D(16, 5).geometry
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.det_count = 40
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.angles = np.zeros(5)
    with pytest.raises(ValueError):  # the angles array is read-only too
        g.angles[0] = 1.0
    assert g.det_count != 40 and g.angles[0] == 0.0
    for copied in (pickle.loads(pickle.dumps(g)), copy.deepcopy(g)):
        assert copied == g and not copied.angles.flags.writeable
    changed = dataclasses.replace(g, det_count=40)  # the way to derive a changed copy
    assert changed.det_count == 40 and g.det_count != 40
    with pytest.raises(GeometryError):  # replace validates like the constructor
        dataclasses.replace(g, det_count=0)


def test_geometry_equality_and_hash():
    a = ParallelBeam2D(16, 5).geometry
    b = ParallelBeam2D(16, 5).geometry
    assert a is not b and a == b and hash(a) == hash(b)
    near = dataclasses.replace(a, angles=a.angles + 1e-12)  # within the angle tolerance
    assert near == a and hash(near) == hash(a)
    assert near.cache_key() != a.cache_key()  # the cache key stays exact
    assert dataclasses.replace(a, angles=a.angles + 1e-6) != a
    assert dataclasses.replace(a, det_count=a.det_count + 1) != a
    assert dataclasses.replace(a, pixel_size_mm=0.5) != a
    assert ParallelBeam2D(16, 6).geometry != a  # another number of views
    assert FanBeam2D(16, 5).geometry != a and a != "parallel" and a != a.to_dict()
    # integer-valued inputs are normalised, so equal values compare equal
    assert dataclasses.replace(a, pixel_size_mm=1) == a


def test_geometry_is_usable_as_a_dict_key():
    a = ParallelBeam2D(16, 5).geometry
    table = {a: "par", FanBeam2D(16, 5).geometry: "fan"}
    assert table[ParallelBeam2D(16, 5).geometry] == "par"
    assert table[FanBeam2D(16, 5).geometry] == "fan"
    assert table[dataclasses.replace(a, angles=a.angles - 1e-12)] == "par"
    assert dataclasses.replace(a, det_count=a.det_count + 2) not in table
    assert len({a, ParallelBeam2D(16, 5).geometry, dataclasses.replace(a, det_count=9)}) == 2
