"""The projector cache trusts no file by its name: entries of another geometry, version or
description, with a wrong checksum, NaN or a zero singular value are logged and rebuilt; an
unwritable cache folder warns once and works in memory; concurrent builders build once;
temporary files of dead writers are removed."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ctflow.operators import ParallelBeam2D, astra_backends
from ctflow.operators import cache as cache_module
from ctflow.operators import svd as svd_module

pytestmark = pytest.mark.usefixtures("one_thread")

N = 16
VIEWS = 6  # 138 rays < 256 pixels: P is far from the identity, so a wrong entry shows
ANGLES_A = np.linspace(0, np.pi, VIEWS, endpoint=False)
ANGLES_B = ANGLES_A + np.pi / (2 * VIEWS)  # same shapes, other geometry


def _op(angles: np.ndarray = ANGLES_A) -> ParallelBeam2D:
    return ParallelBeam2D(N, angles, backend="matrix", projection="svd")


def _probe() -> torch.Tensor:
    return torch.randn(2, 1, N, N, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)


def _new_file(folder: Path, pattern: str, fn) -> Path:
    """Run fn and return the one cache file matching pattern that it created."""
    before = set(folder.glob(pattern))
    fn()
    (path,) = set(folder.glob(pattern)) - before
    return path


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("ctflow.operators") and r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Geometry A's singular values and projector of a probe, built in a private cache."""
    old = os.environ.get("CTFLOW_CACHE_DIR")
    os.environ["CTFLOW_CACHE_DIR"] = str(tmp_path_factory.mktemp("fresh"))
    try:
        op = _op()
        svd = op.svd()
        return {"sigma": svd.singular_values.copy(), "projected": op.projector(_probe()),
                "matrix": astra_backends.system_matrix(op.geometry).toarray()}
    finally:
        if old is None:
            os.environ.pop("CTFLOW_CACHE_DIR", None)
        else:
            os.environ["CTFLOW_CACHE_DIR"] = old


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CTFLOW_CACHE_DIR", str(folder))
    monkeypatch.setattr(cache_module, "_warned_folders", set(), raising=False)
    folder.mkdir()
    return folder


def _assert_fresh(op: ParallelBeam2D, fresh) -> None:
    svd = op.svd()
    assert svd.rank == fresh["sigma"].size
    np.testing.assert_allclose(svd.singular_values, fresh["sigma"], rtol=1e-10)
    assert torch.allclose(op.projector(_probe()), fresh["projected"], atol=1e-5)


def _bad_svd_entry(case: str, path_a: Path, path_b: Path) -> None:
    """Overwrite A's SVD entry with a bad one of the given kind."""
    if case == "other geometry":  # B's entry copied over A's
        shutil.copyfile(path_b, path_a)
        return
    if case == "no header":  # B's factors in an entry of an older ctflow
        with np.load(path_b, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ("vectors", "sigma", "tail_vectors", "tail_sigma")}
        cache_module.save_arrays(path_a, **arrays)
        return
    head_a, arrays_a = cache_module.read_entry(path_a)
    head_b, arrays_b = cache_module.read_entry(path_b)
    write = cache_module.write_entry
    if case == "older version":  # B's factors, as if an older discretisation made them
        write(path_a, "svd", head_a["key"], head_a["description"], head_a["version"] - 1,
              arrays_b)
    elif case == "other description":
        write(path_a, "svd", head_a["key"], head_b["description"], head_a["version"], arrays_b)
    elif case == "wrong checksum":  # A's header, one value changed
        arrays_a["vectors"][0, 0] += 0.5
        blob = np.load(path_a, allow_pickle=False)[cache_module.HEADER]
        cache_module.save_arrays(path_a, **{cache_module.HEADER: blob}, **arrays_a)
    elif case in ("nan", "zero sigma", "unsorted sigma"):  # valid header and checksums
        if case == "nan":
            arrays_a["vectors"][5, 3] = np.nan
        elif case == "zero sigma":
            arrays_a["sigma"][-1] = 0.0
        else:
            arrays_a["sigma"][[0, 1]] = arrays_a["sigma"][[1, 0]]
        write(path_a, "svd", head_a["key"], head_a["description"], head_a["version"], arrays_a)
    else:
        raise AssertionError(case)


@pytest.mark.parametrize("case, state", [
    ("other geometry", "stale"), ("older version", "stale"), ("other description", "stale"),
    ("no header", "stale"), ("wrong checksum", "corrupt"), ("nan", "corrupt"),
    ("zero sigma", "corrupt"), ("unsorted sigma", "corrupt")])
def test_bad_svd_entry_is_logged_and_rebuilt(cache, fresh, caplog, case, state):
    path_a = _new_file(cache, "svd-*.npz", lambda: _op().svd())
    path_b = _new_file(cache, "svd-*.npz", lambda: _op(ANGLES_B).svd())
    _bad_svd_entry(case, path_a, path_b)
    with caplog.at_level(logging.INFO, logger="ctflow"):
        _assert_fresh(_op(), fresh)
    (message,) = _warnings(caplog)
    assert message.startswith(f"cache entry {path_a} is {state} ({_reason(case)}")
    assert message.endswith("); rebuilding")
    # the entry was replaced: the next operator loads it without a word
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ctflow"):
        _assert_fresh(_op(), fresh)
    assert not _warnings(caplog)


def _reason(case: str) -> str:
    """The logged reason of each case (its start where it names a hash key)."""
    return {"other geometry": "written for another geometry or settings ('svd' entry, key",
            "older version": "version 2, expected 3",
            "other description": "written for another geometry or settings (angles differs)",
            "no header": "no header: written by an older ctflow",
            "wrong checksum": "checksum of array 'vectors' is wrong",
            "nan": "vectors contains NaN or Inf",
            "zero sigma": "kept singular values are not all > 0",
            "unsorted sigma": "kept singular values are not in decreasing order"}[case]


def test_swapped_system_matrix_of_same_shape_is_rebuilt(cache, fresh, caplog):
    geo_a, geo_b = _op().geometry, _op(ANGLES_B).geometry
    path_a = _new_file(cache, "matrix-*.npz", lambda: astra_backends.system_matrix(geo_a))
    path_b = _new_file(cache, "matrix-*.npz", lambda: astra_backends.system_matrix(geo_b))
    assert astra_backends.system_matrix(geo_b).shape == fresh["matrix"].shape
    shutil.copyfile(path_b, path_a)
    with caplog.at_level(logging.INFO, logger="ctflow"):
        got = astra_backends.system_matrix(geo_a).toarray()
    np.testing.assert_array_equal(got, fresh["matrix"])
    (message,) = _warnings(caplog)
    assert message.startswith(f"cache entry {path_a} is stale (written for another geometry")


def test_matrix_version_bump_rebuilds_matrix_and_svd(cache, fresh, monkeypatch, caplog):
    _op().svd()
    builds = []
    compute = svd_module.TruncatedSVD.compute.__func__
    monkeypatch.setattr(svd_module.TruncatedSVD, "compute",
                        classmethod(lambda cls, *a: builds.append(1) or compute(cls, *a)))
    _op().svd()
    assert builds == []  # loaded
    monkeypatch.setattr(astra_backends, "MATRIX_VERSION", astra_backends.MATRIX_VERSION + 1)
    with caplog.at_level(logging.INFO, logger="ctflow"):
        _assert_fresh(_op(), fresh)
    assert builds == [1]
    matrix, svd = sorted(_warnings(caplog))
    assert matrix.startswith(f"cache entry {cache}/matrix-")
    assert matrix.endswith(" is stale (version 1, expected 2); rebuilding")
    assert svd.startswith(f"cache entry {cache}/svd-")
    assert svd.endswith(" is stale (written for another geometry or settings "
                        "(matrix_version differs)); rebuilding")


@pytest.mark.parametrize("how", ["read-only folder", "under a regular file"])
def test_unwritable_cache_warns_once_and_works_in_memory(tmp_path, monkeypatch, fresh, caplog,
                                                         how):
    monkeypatch.setattr(cache_module, "_warned_folders", set(), raising=False)
    if how == "read-only folder":
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)  # read-only even for root: nobody has write permission bits
    else:
        (tmp_path / "file").write_text("x")
        folder = tmp_path / "file" / "ctflow"
    monkeypatch.setenv("CTFLOW_CACHE_DIR", str(folder))
    try:
        with caplog.at_level(logging.INFO, logger="ctflow"):
            _assert_fresh(_op(), fresh)  # the matrix and the SVD: two entries, one warning
            _assert_fresh(_op(), fresh)
        (message,) = _warnings(caplog)
        assert message.startswith(f"cache folder {folder} is not writable")
        if how == "read-only folder":
            assert list(folder.iterdir()) == []
    finally:
        if how == "read-only folder":
            folder.chmod(0o755)


def _child_build(barrier, ranks) -> None:
    barrier.wait(timeout=60)  # both processes ask for the projector at the same moment
    ranks.put(_op().svd().rank)


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_two_processes_build_one_geometry_once(cache, tmp_path, fresh, monkeypatch):
    counter = tmp_path / "builds.txt"
    compute = svd_module.TruncatedSVD.compute.__func__

    def slow(cls, *args):
        with open(counter, "a") as fh:
            fh.write(f"built by {os.getpid()}\n")
        time.sleep(1.5)  # a long build: the other process must wait, not build too
        return compute(cls, *args)

    monkeypatch.setattr(svd_module.TruncatedSVD, "compute", classmethod(slow))
    ctx = mp.get_context("fork")  # the children inherit the imports and the patch
    barrier, ranks = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_child_build, args=(barrier, ranks)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    assert [ranks.get(timeout=5) for _ in procs] == [fresh["sigma"].size] * 2
    assert len(counter.read_text().splitlines()) == 1
    assert list(cache.glob("svd-*.npz")) and not list(cache.glob("*.tmp"))


def test_lock_timeout_falls_back_to_building(cache, monkeypatch, caplog):
    import fcntl

    monkeypatch.setattr(cache_module, "LOCK_TIMEOUT_S", 0.3)
    path = cache_module.cache_path("demo", "k")
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a builder that hangs
        start = time.monotonic()
        with caplog.at_level(logging.INFO, logger="ctflow"):
            got = cache_module.load_or_build("demo", "k", {"a": 1}, 1,
                                             lambda: {"x": np.arange(3.0)})
        assert 0.3 <= time.monotonic() - start < 5
    finally:
        os.close(fd)
    np.testing.assert_array_equal(got["x"], np.arange(3.0))
    (message,) = _warnings(caplog)
    assert message.startswith("waited 0 s for another process building demo-k.npz")
    assert cache_module.load_or_build("demo", "k", {"a": 1}, 1, lambda: {})["x"].size == 3


def test_stale_temporary_files_are_removed(cache, fresh):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stem = "svd-0123456789abcdef01234567"
    dead_tmp = cache / f"{cache_module.temp_prefix(stem, dead.pid)}abc.tmp"
    live_tmp = cache / f"{cache_module.temp_prefix(stem)}def.tmp"
    old_tmp = cache / f".{stem}~otherhost~1~ghi.tmp"
    old_format_tmp = cache / f".{stem}-jkl.npz.tmp"  # ctflow before verified entries
    recent_other_host = cache / f".{stem}~otherhost~1~mno.tmp"
    unrelated = cache / ".notes.tmp"
    for f in (dead_tmp, live_tmp, old_tmp, old_format_tmp, recent_other_host, unrelated):
        f.write_bytes(b"partial")
    day_ago = time.time() - 2 * 86400
    for f in (old_tmp, old_format_tmp, unrelated):
        os.utime(f, (day_ago, day_ago))
    _assert_fresh(_op(), fresh)
    assert sorted(p.name for p in cache.glob(".*.tmp")) == sorted(
        p.name for p in (live_tmp, recent_other_host, unrelated))
