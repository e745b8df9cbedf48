"""ctflow.bench.fuzz (scripts/fuzz_readers.py): a fixed-seed fuzz of the HDF5 and DICOM
readers finds no hang, traceback, invalid result or crash; the harness itself detects each
of them; and the bugs the fuzzer found stay fixed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import ModuleType

import pydicom
import pytest

from ctflow.errors import InputError
from ctflow.io.dicom import read_series

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the fuzzer needs os.fork")


@pytest.fixture(scope="module")
def fuzz() -> ModuleType:
    """The fuzz harness (ctflow.bench.fuzz)."""
    from ctflow.bench import fuzz as module

    return module


def test_fixed_seed_fuzz_has_no_failures(fuzz):
    start = time.monotonic()
    report = fuzz.run(("hdf5", "dicom"), cases=60, seed=0, jobs=2, timeout=30.0)
    failures = [f"{f['reader']} case {f['case']} ({f['what']}): {f['outcome']}: {f['detail']}"
                for f in report.failures]
    assert failures == []
    for reader in ("hdf5", "dicom"):
        counts = report.counts[reader]
        assert sum(counts.values()) == 60
        # the mutations both break files and leave some readable
        assert counts["clean"] >= 10 and counts["ok"] >= 10, (reader, counts)
    assert report.wrapped == []
    print(f"\n{fuzz.table(report)}\n{time.monotonic() - start:.1f} s")


def test_mutations_are_reproducible(fuzz, tmp_path):
    seeds = fuzz.dicom_seeds()
    case = fuzz.Case("dicom", 7, 0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = fuzz.make_case(case, seeds, tmp_path / "a")
    second, _ = fuzz.make_case(case, seeds, tmp_path / "b")
    assert [p.read_bytes() for p in sorted(first.iterdir())] == \
        [p.read_bytes() for p in sorted(second.iterdir())]


def _raise(path, preset):
    raise KeyError("a bug")


def _spin(path, preset):
    while True:
        pass


def _segfault(path, preset):
    os.kill(os.getpid(), signal.SIGSEGV)


def _accept_bad(path, preset):
    from ctflow.bench.fuzz import Invalid

    raise Invalid("NaN accepted")


@pytest.mark.parametrize("reader, outcome", [(_raise, "traceback"), (_spin, "hang"),
                                             (_segfault, "crash"), (_accept_bad, "invalid")])
def test_harness_counts_each_failure(fuzz, monkeypatch, reader, outcome):
    monkeypatch.setitem(fuzz.READERS, "dicom", reader)
    report = fuzz.run(("dicom",), cases=2, seed=0, jobs=2, timeout=1.5)
    assert report.counts["dicom"][outcome] == 2
    assert report.failed() == 2
    assert {f["outcome"] for f in report.failures} == {outcome}


# ------------------------------------------------------------------ bugs the fuzzer found
def test_dicom_rescale_overflowing_float32_is_refused(tmp_path):
    """dicom case 128 of the 1000-case run: RescaleIntercept -1e308 gives finite float64 HU
    that overflow to -inf in the float32 volume."""
    series = Path(__file__).resolve().parents[1] / "data" / "examples" / "phantom_series"
    folder = tmp_path / "series"
    folder.mkdir()
    for path in sorted(series.iterdir()):
        ds = pydicom.dcmread(path)
        if path.name == "CT00001.dcm":
            ds.RescaleIntercept = "-1e308"
        ds.save_as(folder / path.name)
    with pytest.raises(InputError, match=r"CT00001\.dcm: rescaled values are not finite"):
        read_series(folder)
