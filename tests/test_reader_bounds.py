"""Bounded HDF5 reading: a hang-proof probe for corrupt files, declared sizes checked before
anything is allocated, bounded attribute reads, data only from this file, and physical
plausibility of every value read (ctflow.io.limits)."""

from __future__ import annotations

import json
import os
import signal
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

import ctflow.io.limits as limits
from ctflow.cli import main as ctflow
from ctflow.errors import InputError
from ctflow.io import probe
from ctflow.io.hdf5 import SinogramFile, read_sinogram, write_sinogram
from ctflow.operators import CTGeometry

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "examples" / "chest64_60v.h5"
#: The 8 bytes overwritten in chest64_60v.h5 to make the file of the hang report
#: (offset, original value, new value).
REPORTED_EDITS = [(671, 0, 123), (1131, 0, 251), (1204, 95, 114), (1333, 0, 143),
                  (2296, 2, 211), (2874, 0, 27), (2970, 0, 76), (3903, 0, 150)]


def small_file(path: Path, fan: bool = False, **attrs) -> Path:
    """A valid 2-slice sinogram file (16² image, 12 views) with extra root attributes."""
    angles = np.linspace(0, 2 * np.pi if fan else np.pi, 12, endpoint=False)
    geometry = CTGeometry("fan", 16, 1.0, 24, 1.5, 100.0, 50.0, angles) if fan else \
        CTGeometry("parallel", 16, 1.0, 24, 1.0, None, None, angles)
    sino = np.random.default_rng(0).random((2, 12, 24)).astype(np.float32)
    data = SinogramFile(sino, geometry, np.zeros((2, 16, 16), np.float32), {"PatientID": "P"},
                        {"noise_model": "none", "noise_std": 0.0, "mu_water_per_mm": 0.0192,
                         **attrs})
    return write_sinogram(path, data)


def edit_geometry(path: Path, **changes) -> Path:
    with h5py.File(path, "r+") as f:
        spec = json.loads(f.attrs["geometry"])
        spec.update(changes)
        f.attrs["geometry"] = json.dumps(spec)
    return path


# ------------------------------------------------------------------- hang-proof probe
def _heap_object_size_offset(data: bytes, content: bytes) -> int:
    """Offset of the size field of the global heap object holding ``content``."""
    at = data.index(b"GCOL") + 16
    while int.from_bytes(data[at:at + 2], "little") != 0:
        size = int.from_bytes(data[at + 8:at + 16], "little")
        if data[at + 16:at + 16 + size] == content:
            return at + 8
        at += 16 + (size + 7) // 8 * 8
    raise AssertionError(f"no heap object {content!r}")


def test_reported_hang_file_gives_a_clear_error_within_seconds(tmp_path):
    """The reported file: 8 bytes of the example overwritten.  One of them raises the size of
    the global heap object "HU" (2 → 211), which walks the heap parser onto a free-space
    entry of size 0 where its loop stops advancing: any read of a variable-length string,
    such as the root attribute 'geometry', spun for ever."""
    data = bytearray(EXAMPLE.read_bytes())
    if any(data[offset] != old for offset, old, _ in REPORTED_EDITS):
        pytest.skip("data/examples/chest64_60v.h5 was regenerated")
    for offset, _, new in REPORTED_EDITS:
        data[offset] = new
    bad = tmp_path / "hang.h5"
    bad.write_bytes(bytes(data))
    start = time.monotonic()
    with pytest.raises(InputError, match=r"hang\.h5: corrupt HDF5 file \(the HDF5 library "
                                         r"made no progress for 3 s"):
        read_sinogram(bad)
    assert time.monotonic() - start < 30  # 3 s without progress, plus a loaded machine


def test_heap_object_size_hang_in_the_cli(tmp_path, capsys, monkeypatch):
    """The one edit that hangs, made on a freshly written file: `ctflow info` and
    `ctflow reconstruct` answer with one line, exit 2, and write nothing."""
    good = small_file(tmp_path / "good.h5")
    data = bytearray(good.read_bytes())
    at = _heap_object_size_offset(bytes(data), b"HU")
    data[at:at + 8] = (211).to_bytes(8, "little")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(data))
    monkeypatch.setenv("CTFLOW_HDF5_PROBE_TIMEOUT", "1")
    start = time.monotonic()
    assert ctflow(["info", str(bad)]) == 2
    assert ctflow(["reconstruct", str(bad), "--method", "fbp",
                   "-o", str(tmp_path / "out.npy")]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ctflow {cmd}: error: {bad}: corrupt HDF5 file (the HDF5 library made no "
                   "progress for 1 s while reading its metadata)"
                   for cmd in ("info", "reconstruct")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5", "good.h5"]


def test_run_in_child_kills_a_loop_and_reports_a_crash():
    def spin() -> None:
        while True:
            pass

    start = time.monotonic()
    assert probe.run_in_child(spin, idle_timeout_s=0.5) == "made no progress for 0.5 s"
    assert time.monotonic() - start < 10
    assert probe.run_in_child(lambda: os.kill(os.getpid(), signal.SIGSEGV)) == \
        "crashed (signal 11)"
    assert probe.run_in_child(lambda: os._exit(3)) == "exited with status 3"
    assert probe.run_in_child(lambda: None) is None


def test_run_in_child_waits_while_the_child_makes_progress():
    def slow_but_busy() -> None:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            probe.tick()
            time.sleep(0.02)

    def busy_for_ever() -> None:
        while True:
            probe.tick()
            time.sleep(0.02)

    assert probe.run_in_child(slow_but_busy, idle_timeout_s=0.5) is None
    assert probe.run_in_child(busy_for_ever, idle_timeout_s=0.5, total_timeout_s=1.0) == \
        "was still running after 1 s"


def _gone(pid: int) -> bool:
    """The process no longer runs (exited, or a zombie nobody reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in "ZX"
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_probe_child_does_not_outlive_a_killed_parent(tmp_path):
    """A reader killed while its probe child spins in a C loop (timeout, kill -9) must not
    leave the child spinning for ever."""
    pidfile = tmp_path / "child.pid"

    def spin() -> None:
        pidfile.write_text(str(os.getpid()))
        while True:
            pass

    parent = os.fork()
    if parent == 0:
        try:
            probe.run_in_child(spin, idle_timeout_s=600)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pidfile.read_text())
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    deadline = time.monotonic() + 10
    while not _gone(child):
        assert time.monotonic() < deadline, "the probe child outlived its parent"
        time.sleep(0.05)


def test_probe_opens_the_reader_names_when_iteration_fails(tmp_path, monkeypatch):
    """The probe reads the attributes the readers open by name even when iterating over the
    attributes fails (as in the reported file)."""
    path = small_file(tmp_path / "s.h5")
    seen = []
    real = probe._probe_attribute
    monkeypatch.setattr(h5py.AttributeManager, "keys",
                        lambda self: (_ for _ in ()).throw(RuntimeError("broken")))
    monkeypatch.setattr(probe, "_probe_attribute",
                        lambda obj, name: (seen.append((obj.name, name)), real(obj, name)))
    probe.walk_hdf5(path, ("sinogram",), ("geometry", "content"))
    assert ("/", "geometry") in seen and ("/sinogram", "geometry") in seen


# ------------------------------------------------------------- declared sizes and memory
def _peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


def test_giant_declared_sinogram_is_refused_before_reading(tmp_path):
    """A ~160 KB file declaring a 20000×50000 float32 sinogram (4 GB, a few chunks written)
    with a geometry that matches it."""
    path = tmp_path / "giant.h5"
    angles = np.linspace(0, np.pi, 20000, endpoint=False)
    geometry = CTGeometry("parallel", 512, 1.0, 50000, 1.0, None, None, angles)
    with h5py.File(path, "w") as f:
        f.attrs["ctflow_format"] = 1
        f.attrs["geometry"] = geometry.to_json()
        f.create_dataset("angles", data=angles)
        ds = f.create_dataset("sinogram", shape=(20000, 50000), dtype=np.float32,
                              chunks=(100, 100))
        ds[:100, :100] = 1.0
    assert path.stat().st_size < 300_000

    def read() -> None:
        with pytest.raises(InputError, match=r"giant\.h5: /sinogram declares shape \(20000, "
                                             r"50000\): 50000 detectors is outside"):
            read_sinogram(path)

    assert _peak_mb(read) < 50


def test_giant_compressed_dataset_mostly_unwritten(tmp_path):
    """(4, 10000, 16000) float32 (2.6 GB) within every axis limit, gzip chunks, one of 400
    chunks written: the rest would read as fill values."""
    path = tmp_path / "sparse.h5"
    angles = np.linspace(0, np.pi, 10000, endpoint=False)
    geometry = CTGeometry("parallel", 512, 1.0, 16000, 1.0, None, None, angles)
    with h5py.File(path, "w") as f:
        f.attrs["ctflow_format"] = 1
        f.attrs["geometry"] = geometry.to_json()
        f.create_dataset("angles", data=angles)
        ds = f.create_dataset("sinogram", shape=(4, 10000, 16000), dtype=np.float32,
                              chunks=(1, 100, 16000), compression="gzip")
        ds[0, :100] = 1.0

    def read() -> None:
        with pytest.raises(InputError, match=r"sparse\.h5: /sinogram declares shape \(4, "
                                             r"10000, 16000\) but stores only 1 of its 400 "
                                             "chunks"):
            read_sinogram(path)

    assert _peak_mb(read) < 50


def test_chunked_dataset_without_data_is_refused(tmp_path):
    path = small_file(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        del f["sinogram"]
        f.create_dataset("sinogram", shape=(2, 12, 24), dtype=np.float32, chunks=(1, 12, 24))
    with pytest.raises(InputError, match=r"/sinogram declares shape \(2, 12, 24\) but stores "
                                         "(no data|only 0 of its 2 chunks)"):
        read_sinogram(path)


def test_memory_budget(tmp_path, monkeypatch):
    path = small_file(tmp_path / "s.h5")
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 2000)
    with pytest.raises(InputError, match=r"s\.h5: reading /sinogram needs 4\.5 KB, more "
                                         r"than the memory budget 1000 B \(50% of the 2\.0 KB "
                                         r"available\)"):
        read_sinogram(path)
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 10**9)
    assert read_sinogram(path).sinogram.shape == (2, 12, 24)


def test_available_memory_is_known_here():
    available = limits.available_memory_bytes()
    assert available is not None and 2**26 < available < 2**50


# -------------------------------------------------------------- attributes and links
def test_oversized_attributes_are_refused(tmp_path):
    """A 2 MB numeric attribute is refused before it is read (its storage size); a 2 MB
    variable-length string (stored in the global heap, bounded by the file) once read.
    Attributes over 64 KB need the newer file format (dense attribute storage)."""
    small = small_file(tmp_path / "small.h5")
    path = tmp_path / "s.h5"
    with h5py.File(small, "r") as a, h5py.File(path, "w", libver="latest") as b:
        b.attrs.update(a.attrs)
        for key in a:
            a.copy(a[key], b, key)
        b.attrs["noise_model"] = np.zeros(2**18)
    with pytest.raises(InputError, match=r"s\.h5: attribute 'noise_model' of / is implausibly "
                                         r"large \(2097152 bytes\)"):
        read_sinogram(path)
    with h5py.File(path, "r+") as f:
        f.attrs["noise_model"] = "none"
        f.attrs["geometry"] = "{" + " " * 2**21 + "}"
    with pytest.raises(InputError, match=r"attribute 'geometry' of / is implausibly large "
                                         r"\(2097154 bytes\)"):
        read_sinogram(path)


def test_attribute_of_an_unsupported_type_is_refused(tmp_path):
    path = small_file(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["extra"] = np.zeros(2, dtype=[("a", "<f4"), ("b", "<i2")])
    with pytest.raises(InputError, match=r"attribute 'extra' of / has unsupported type"):
        read_sinogram(path)


def test_data_in_other_files_is_refused(tmp_path):
    """An external link would make the reader open any file the link names; external raw
    storage would read any file's bytes as data."""
    other = small_file(tmp_path / "other.h5")
    linked = small_file(tmp_path / "linked.h5")
    with h5py.File(linked, "r+") as f:
        del f["sinogram"]
        f["sinogram"] = h5py.ExternalLink(str(other), "/sinogram")
    with pytest.raises(InputError, match=r"linked\.h5: /sinogram is a link to another file"):
        read_sinogram(linked)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.ones((2, 12, 24), np.float32).tobytes())
    external = small_file(tmp_path / "external.h5")
    with h5py.File(external, "r+") as f:
        del f["sinogram"]
        f.create_dataset("sinogram", shape=(2, 12, 24), dtype=np.float32,
                         external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(InputError, match=r"external\.h5: /sinogram keeps its data in other "
                                         "files"):
        read_sinogram(external)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"pipe\.h5: not a regular file"):
        read_sinogram(fifo)


# --------------------------------------------------------------------- plausibility
@pytest.mark.parametrize("attrs, message", [
    ({"mu_water_per_mm": 0.0}, r"attribute mu_water_per_mm = 0 /mm is not a plausible linear "
                               r"attenuation of water \(expected 0\.005–0\.1 /mm\)"),
    ({"mu_water_per_mm": 1.0}, r"mu_water_per_mm = 1 /mm is not a plausible"),
    ({"noise_std": -1.0}, r"attribute noise_std = -1 is not a plausible sinogram noise std"),
    ({"noise_std": float("nan")}, r"attribute noise_std must be a finite number, got nan"),
    ({"noise_std": "0.1"}, r"attribute noise_std must be a number, got '0\.1'"),
    ({"photons": 0.0}, r"attribute photons = 0 photons per ray is not a plausible"),
    ({"noise": float("inf")}, r"attribute noise must be a finite number, got inf"),
])
def test_implausible_attributes(tmp_path, attrs, message):
    path = small_file(tmp_path / "s.h5", **attrs)
    with pytest.raises(InputError, match=message):
        read_sinogram(path)


@pytest.mark.parametrize("fan, changes, message", [
    (False, {"pixel_size_mm": 1e-300}, r"geometry pixel_size_mm = 1e-300 mm is not a "
                                       r"plausible pixel size \(expected 0\.001–100 mm\)"),
    (False, {"pixel_size_mm": 1e300}, r"geometry pixel_size_mm = 1e\+300 mm"),
    (False, {"det_spacing_mm": 1e-300}, r"geometry det_spacing_mm = 1e-300 mm"),
    (True, {"source_origin_mm": 1e300}, r"geometry source_origin_mm = 1e\+300 mm"),
    (True, {"origin_det_mm": 1e300}, r"geometry origin_det_mm = 1e\+300 mm"),
    (False, {"image_size": 100000}, r"geometry image_size = 100000 is outside"),
])
def test_implausible_geometry(tmp_path, fan, changes, message):
    path = edit_geometry(small_file(tmp_path / "s.h5", fan=fan), **changes)
    with pytest.raises(InputError, match=r"s\.h5: " + message):
        read_sinogram(path)


def test_implausible_angles_and_metadata(tmp_path):
    path = small_file(tmp_path / "a.h5")
    with h5py.File(path, "r+") as f:
        angles = f["angles"][()]
        angles[3] = 1e300
        del f["angles"]
        f["angles"] = angles
    with pytest.raises(InputError, match=r"a\.h5: angle = 1e\+300 rad is not a plausible "
                                         "projection angle"):
        read_sinogram(path)
    path = small_file(tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        f["metadata"].attrs["SliceSpacingMM"] = 0.0
    with pytest.raises(InputError, match=r"m\.h5: /metadata SliceSpacingMM = 0 mm is not a "
                                         "plausible slice spacing"):
        read_sinogram(path)


def test_plausible_values_pass_unchanged(tmp_path):
    data = read_sinogram(small_file(tmp_path / "s.h5", fan=True, photons=1e5, noise=0.01))
    assert data.attrs["mu_water_per_mm"] == 0.0192 and data.attrs["photons"] == 1e5
    assert data.geometry.source_origin_mm == 100.0


def test_check_quantity_table():
    assert limits.check_quantity("noise_std", np.float32(0.5), "x") == 0.5
    assert limits.check_quantity("noise_std", 0, "x") == 0.0
    for bad in (True, None, [1.0], 1 + 2j, float("-inf")):
        with pytest.raises(InputError, match=r"^src: noise_std must be a"):
            limits.check_quantity("noise_std", bad, "src")


def test_cli_refuses_implausible_file_values_and_writes_nothing(tmp_path, capsys):
    path = small_file(tmp_path / "s.h5", mu_water_per_mm=0.0)
    out = tmp_path / "out.npy"
    assert ctflow(["reconstruct", str(path), "--method", "fbp", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ctflow reconstruct: error: {path}: attribute mu_water_per_mm = 0 /mm is "
                   "not a plausible linear attenuation of water (expected 0.005–0.1 /mm)")
    assert not out.exists()


@pytest.mark.parametrize("value, message", [
    ("inf", "--noise-std: value must be a finite number, got inf"),
    ("nan", "--noise-std: value must be a finite number, got nan"),
    ("-1", "--noise-std: value = -1 is not a plausible sinogram noise std (expected 0–1e+06)"),
])
def test_cli_noise_std_flag(tmp_path, capsys, value, message):
    path = small_file(tmp_path / "s.h5")
    out = tmp_path / "out.npy"
    assert ctflow(["reconstruct", str(path), "--method", "fbp", "--noise-std", value,
                   "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"ctflow reconstruct: error: {message}"
    assert not out.exists()


def test_cli_simulate_refuses_implausible_flags(tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert ctflow(["simulate", "--size", "16", "--views", "8", "--pixel-size", "1e300",
                   "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        "ctflow simulate: error: --pixel-size: value = 1e+300 mm is not a plausible pixel "
        "size (expected 0.001–100 mm)")
    assert ctflow(["simulate", "--size", "16", "--views", "8", "--photons", "inf",
                   "-o", str(out)]) == 2
    assert "--photons: value must be a finite number, got inf" in capsys.readouterr().err
    assert not out.exists()
