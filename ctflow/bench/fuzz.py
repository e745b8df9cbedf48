"""Fuzz the file readers: seeded mutations of valid examples, each read in a worker process.

Readers:

* ``hdf5``  — the read path of ``ctflow info`` / ``ctflow reconstruct``
  (:func:`ctflow.io.hdf5.file_kind`, then ``read_reconstruction`` or ``read_sinogram``),
  on the sinogram files in data/examples/ plus generated fan-beam, reconstruction,
  DXchange and LoDoPaB-style files;
* ``dicom`` — :func:`ctflow.io.dicom.read_series` on data/examples/phantom_series and on
  pydicom's ``CT_small.dcm`` (one file of the series mutated per case).

Each case is a seeded mutation (bit flips, random bytes, an overwritten 8-byte run, a
truncation, an integer written into a header field near a structure signature or a DICOM
tag, or a semantic edit of an attribute / element value through h5py / pydicom).  The seeds
and the mutations are in ctflow/bench/fuzz_cases.py.  Cases
run in a pool of forked worker processes; a case that runs longer than ``--timeout`` is a
hang (its worker is killed and replaced), a worker that dies is a crash.  Outcomes:

  ok         read, and the result is valid (finite data, shapes match the geometry,
             every physical value inside its range in ctflow.io.limits)
  clean      a one-line ctflow error (CtflowError)
  traceback  any other exception
  invalid    read without error but the result is not valid
  hang, crash

:func:`run` returns a :class:`Report`; ``scripts/fuzz_readers.py`` is its command line.
Needs os.fork and a source checkout (the seeds read data/examples/).
"""

from __future__ import annotations

import faulthandler
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from .fuzz_cases import Case, Seed, describe, dicom_seeds, hdf5_seeds, make_case

OUTCOMES = ("ok", "clean", "traceback", "invalid", "hang", "crash")
FAILURES = ("traceback", "invalid", "hang", "crash")


class Invalid(Exception):
    """A reader returned a result that is not valid."""


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise Invalid(what)


def read_hdf5(path: Path, preset: str | None) -> None:
    """The read path of ``ctflow info`` / ``reconstruct``; Invalid if the result is not
    valid (shapes, finite data, every physical value inside its plausible range)."""
    from ctflow.io.hdf5 import file_kind, read_reconstruction, read_sinogram
    from ctflow.io.limits import QUANTITIES

    if file_kind(path) == "reconstruction":
        rec = read_reconstruction(path)
        arrays, geometry, attrs = [rec.image_hu], rec.geometry, rec.attrs
        expect(rec.image_hu.shape[1:] == geometry.image_shape, "image shape")
    else:
        data = read_sinogram(path, preset=preset)
        arrays, geometry, attrs = [data.sinogram], data.geometry, data.attrs
        expect(data.sinogram.ndim == 3, "sinogram rank")
        expect(data.sinogram.shape[1:] == tuple(geometry.sinogram_shape), "sinogram shape")
        if data.image_hu is not None:
            arrays.append(data.image_hu)
            expect(data.image_hu.shape == (data.sinogram.shape[0], *geometry.image_shape),
                   "image shape")
    expect(all(np.isfinite(a).all() for a in arrays), "NaN or Inf in the data")
    values = {k: getattr(geometry, k) for k in ("pixel_size_mm", "det_spacing_mm",
                                                "source_origin_mm", "origin_det_mm")}
    values.update({k: attrs[k] for k in ("noise_std", "mu_water_per_mm", "photons", "noise")
                   if k in attrs})
    for key, value in values.items():
        if value is not None:
            q = QUANTITIES[key]
            expect(isinstance(value, (int, float)) and q.lo <= value <= q.hi,
                   f"implausible {key} = {value!r} accepted")
    expect(np.isfinite(geometry.angles).all(), "angles")


def read_dicom(path: Path, preset: str | None) -> None:
    """``read_series``; Invalid if the volume is not valid."""
    from ctflow.io.dicom import read_series

    vol = read_series(path)
    expect(vol.hu.ndim == 3 and vol.hu.size > 0, "volume shape")
    expect(np.isfinite(vol.hu).all(), "NaN or Inf in the volume")
    expect(all(math.isfinite(s) and s > 0 for s in vol.spacing), f"spacing {vol.spacing}")
    expect(len(vol.files) == vol.hu.shape[0], "files")


READERS: dict[str, Callable[[Path, str | None], None]] = {"hdf5": read_hdf5,
                                                          "dicom": read_dicom}


def run_case(case: Case, seeds: list[Seed], root: Path) -> dict[str, Any]:
    """Make and read one case; returns its outcome and a one-line detail."""
    from ctflow.errors import CtflowError

    folder = Path(tempfile.mkdtemp(prefix=f"{case.reader}{case.index}-", dir=root))
    try:
        what = describe(case, seeds)
        path, preset = make_case(case, seeds, folder)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                READERS[case.reader](path, preset)
            return {"outcome": "ok", "what": what, "detail": ""}
        except Invalid as exc:
            return {"outcome": "invalid", "what": what, "detail": f"{exc}"}
        except CtflowError as exc:
            outcome = "clean" if "\n" not in str(exc) else "traceback"
            return {"outcome": outcome, "what": what, "detail": str(exc)[:300],
                    "wrapped": _wrapped_bug(exc)}
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            return {"outcome": "traceback", "what": what,
                    "detail": f"{type(exc).__name__}: {str(exc)[:200]} "
                              f"({Path(where.filename).name}:{where.lineno})"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


CATCH_ALLS = ("corrupt or unreadable HDF5 content (", "corrupt DICOM file (",
              "inconsistent or corrupt series (")


def _wrapped_bug(exc: Exception) -> str:
    """For a catch-all error ("corrupt ... (...)") whose cause was raised by ctflow's own
    code rather than by a library: "TypeError at hdf5.py:123", else ""."""
    cause = exc.__cause__
    if cause is None or not any(text in str(exc) for text in CATCH_ALLS):
        return ""
    frames = traceback.extract_tb(cause.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    parts = Path(last.filename).parts
    if "ctflow" in parts or "operators" in parts:
        return f"{type(cause).__name__} at {Path(last.filename).name}:{last.lineno}"
    return ""


# ------------------------------------------------------------------------------ the pool
def _worker(conn: Connection, seeds: dict[str, list[Seed]], root: str) -> None:
    """Worker loop: receive a case as JSON, send back its outcome as JSON; an empty message
    ends it."""
    faulthandler.disable()  # a crash is the parent's to report, quietly
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            break
        if not message:
            break
        case = Case(**json.loads(message))
        conn.send_bytes(json.dumps(run_case(case, seeds[case.reader], Path(root))).encode())
    os._exit(0)


@dataclass
class Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    case: Case | None = None
    started: float = 0.0


@dataclass
class Report:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    wrapped: list[dict[str, Any]] = field(default_factory=list)  # see _wrapped_bug
    messages: Counter[str] = field(default_factory=Counter)  # clean errors, file name cut
    seconds: dict[str, float] = field(default_factory=dict)

    def failed(self) -> int:
        return sum(c[o] for c in self.counts.values() for o in FAILURES)


def run(readers: tuple[str, ...] = ("hdf5", "dicom"), cases: int = 1000, seed: int = 0,
        jobs: int = 2, timeout: float = 30.0, save: Path | None = None) -> Report:
    """Fuzz each reader with ``cases`` cases; returns the outcome counts and failures."""
    ctx = multiprocessing.get_context("fork")
    report = Report()
    with tempfile.TemporaryDirectory(prefix="ctflow-fuzz-") as tmp:
        root = Path(tmp)
        (root / "seeds").mkdir()
        seeds = {"hdf5": hdf5_seeds(root / "seeds") if "hdf5" in readers else [],
                 "dicom": dicom_seeds() if "dicom" in readers else []}

        def spawn() -> Worker:
            parent, child = ctx.Pipe()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                process = ctx.Process(target=_worker, args=(child, seeds, str(root)),
                                      daemon=True)
                process.start()
            child.close()
            return Worker(process, parent)

        for reader in readers:
            begin = time.perf_counter()
            report.counts[reader] = _fuzz(reader, cases, seed, jobs, timeout, spawn,
                                          seeds[reader], report, save)
            report.seconds[reader] = time.perf_counter() - begin
    return report


def _fuzz(reader: str, cases: int, seed: int, jobs: int, timeout: float,
          spawn: Callable[[], Worker], seeds: list[Seed], report: Report,
          save: Path | None) -> dict[str, int]:
    """Run one reader's cases on a pool of ``jobs`` workers; returns the outcome counts."""
    counts = dict.fromkeys(OUTCOMES, 0)
    todo = [Case(reader, i, seed) for i in range(cases)][::-1]
    pool = [spawn() for _ in range(max(1, min(jobs, cases)))]

    def record(case: Case, result: dict[str, Any]) -> None:
        counts[result["outcome"]] += 1
        if result["outcome"] == "clean":
            text = result["detail"].split(": ", 1)[-1]
            short = text.split(" while")[0] if "(the HDF5 library" in text else text.split("(")[0]
            report.messages[f"{reader}: {short.strip()[:90]}"] += 1
        if result.get("wrapped"):
            report.wrapped.append({"reader": reader, "case": case.index, **result})
        if result["outcome"] in FAILURES:
            report.failures.append({"reader": reader, "case": case.index, **result})
            if save is not None:
                _save(case, seeds, save)

    while sum(counts.values()) < cases:
        for w in pool:
            if w.case is None and todo:
                w.case, w.started = todo.pop(), time.monotonic()
                w.conn.send_bytes(json.dumps(w.case.__dict__).encode())
        busy = [w for w in pool if w.case is not None]
        deadline = min(w.started for w in busy) + timeout
        ready = wait([w.conn for w in busy], max(0.0, deadline - time.monotonic()))
        for i, w in enumerate(pool):
            if w.case is None:
                continue
            if w.conn in ready:
                try:
                    result = json.loads(w.conn.recv_bytes())
                except (EOFError, OSError):  # the worker died: a crash
                    w.process.join()
                    record(w.case, {"outcome": "crash", "what": describe(w.case, seeds),
                                    "detail": f"worker exit code {w.process.exitcode}"})
                    pool[i] = spawn()
                    continue
                record(w.case, result)
                w.case = None
            elif time.monotonic() - w.started > timeout:  # a hang: kill and replace
                w.process.kill()
                w.process.join()
                record(w.case, {"outcome": "hang", "what": describe(w.case, seeds),
                                "detail": f"no result after {timeout:g} s"})
                pool[i] = spawn()
    for w in pool:
        w.conn.send_bytes(b"")
        w.conn.close()
        w.process.join(timeout=5)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
    return counts


def _save(case: Case, seeds: list[Seed], folder: Path) -> None:
    """Keep a failing case's input under ``folder`` for triage."""
    target = folder / f"{case.reader}-{case.index}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    make_case(case, seeds, target)


def table(report: Report) -> str:
    head = f"| reader | cases | {' | '.join(OUTCOMES)} | seconds |"
    lines = [head, "|" + "---|" * (len(OUTCOMES) + 3)]
    for reader, counts in report.counts.items():
        lines.append(f"| {reader} | {sum(counts.values())} | "
                     + " | ".join(str(counts[o]) for o in OUTCOMES)
                     + f" | {report.seconds[reader]:.1f} |")
    return "\n".join(lines)
