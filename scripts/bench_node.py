"""Throughput of the DICOM node: series per minute through Orthanc → ctflow serve → Orthanc.

Starts a real Orthanc (tests/_orthanc.py: temporary configuration, loopback ports) and a
ctflow node forwarding back to it, uploads copies of a CT series to Orthanc (REST, new
study/series/instance UIDs per copy, pixel data untouched), has Orthanc send each copy to
the node (REST ``/modalities/ctflow/store``), and times from the first send until the node
has forwarded the derived series of every copy.  One untimed copy first warms the node
up (prior loading, projector set-up).  Per method: series per minute, the node's own job
time per series (from its log), and the first (cold) job's time.

Default input: the 20-slice 512² JPEG 2000 series of the real-CT folder
(``totalsegmentator-j2k``; TotalSegmentator test files, Apache-2.0, data set CC BY 4.0,
Wasserthal J. et al., Radiology: AI 2023).  Writes docs/bench_node.md.

    OMP_NUM_THREADS=1 nice python3 scripts/bench_node.py [--repeats 3] [--views 60]
        [--photons 1e5] [--methods fbp conjugate]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import tempfile
import time
from pathlib import Path

import pydicom
import torch
from pydicom.uid import generate_uid

from ctflow.bench.machine import machine_info
from ctflow.io.atomic import atomic_file
from ctflow.node.address import Peer
from ctflow.node.job import parse_job
from ctflow.node.server import Node
from ctflow.node.store import dicom_files
from ctflow.node.worker import WorkerSettings
from ctflow.realct import realct_dir

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "bench_node.md"
SERIES = "totalsegmentator-j2k"


def load_orthanc_helper():
    """tests/_orthanc.py as a module (the same launcher the tests use)."""
    spec = importlib.util.spec_from_file_location("_orthanc", ROOT / "tests" / "_orthanc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_series(source: Path, target: Path) -> Path:
    """A copy of the series with new study, series and instance UIDs (pixels untouched).

    The shipped files have blank Study, Series and SOP Instance UIDs and a blank SOP Class
    UID in the data set (only the file meta holds them): Orthanc could neither index nor
    C-STORE them as they are, so the copy sets them (the SOP class from the file meta)."""
    target.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for path in dicom_files(source):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if not ds.get("SOPClassUID"):  # blank in these files (the file meta has it), and
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID  # Orthanc cannot send it
        ds.save_as(target / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return target


def run_method(helper, method: str, copies: list[Path], args, work: Path) -> dict:
    """Push every copy through Orthanc and the node with a one-method job; timings."""
    port = helper.free_port()
    orthanc = helper.Orthanc(work / f"orthanc-{method}",
                             {"ctflow": ("CTFLOW", "127.0.0.1", port)}).start()
    job = parse_job({"acquisition": {"views": args.views, "photons": args.photons},
                     "methods": [{"name": method}]})
    spool = work / f"spool-{method}"
    node = Node(spool, job, port, host="127.0.0.1",
                forward=Peer(orthanc.aet, "127.0.0.1", orthanc.dicom_port),
                settings=WorkerSettings(idle_s=args.idle_seconds, poll_s=0.1))
    node.start()
    try:
        ids = []
        for folder in copies:
            first = [orthanc.upload(p) for p in dicom_files(folder)][0]
            ids.append(orthanc.get(f"/instances/{first}/series")["ID"])
        log = spool / "node.log"
        push(orthanc, ids[0])
        wait_forwarded(log, 1)  # warm-up, untimed
        start = time.perf_counter()
        for series_id in ids[1:]:
            push(orthanc, series_id)
        wait_forwarded(log, len(ids))
        seconds = time.perf_counter() - start
        jobs = [float(s) for s in re.findall(r"wrote \d+ derived series .* in ([0-9.]+) s",
                                             log.read_text())]
        size_note = next(iter(re.findall(r"runs at (\d+)²", log.read_text())), None)
    finally:
        node.stop()
        orthanc.stop()
    timed = len(ids) - 1
    return {"method": method, "series": timed, "seconds": seconds,
            "per_minute": 60.0 * timed / seconds, "cold_job_s": jobs[0],
            "job_s": sum(jobs[1:]) / max(1, len(jobs) - 1),
            "size": int(size_note) if size_note else None}


def push(orthanc, series_id: str) -> None:
    answer = orthanc.post("/modalities/ctflow/store", {"Resources": [series_id],
                                                       "Synchronous": True})
    if answer.get("FailedInstancesCount"):
        raise RuntimeError(f"Orthanc could not send series {series_id}: {answer}")


def wait_forwarded(log: Path, count: int, timeout_s: float = 3600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8")
        if text.count("forwarded 1 derived series") >= count:
            return
        if "job refused" in text or "giving up" in text:
            raise RuntimeError(f"the node failed; see {log}")
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {count} forwarded series; see {log}")


def report(rows: list[dict], args, shape: tuple[int, ...]) -> str:
    info = machine_info()
    lines = [
        "# DICOM node throughput", "",
        "Produced by `OMP_NUM_THREADS=1 nice python3 scripts/bench_node.py "
        f"--repeats {args.repeats} --views {args.views} --photons {args.photons:g}`.", "",
        f"Input: the {shape[0]}-slice {shape[1]}² JPEG 2000 CT series `{SERIES}` of the "
        "real-CT folder (TotalSegmentator test files, Apache-2.0; data set CC BY 4.0, "
        "Wasserthal J. et al., Radiology: AI 2023), copied with new UIDs per push (the "
        "files' own Study, Series and SOP Instance UIDs and the data set's SOP Class UID "
        "are blank; the copies set them, pixel data untouched).",
        f"Path: Orthanc (REST upload) → C-STORE to `ctflow serve` → job: simulate a "
        f"{args.views}-view parallel-beam acquisition with {args.photons:g} photons/ray and "
        "reconstruct → C-STORE of the derived series back to Orthanc.  Timed: from the "
        f"first of {args.repeats} sends until the last derived series is forwarded, after one "
        f"untimed warm-up series; --idle-seconds {args.idle_seconds:g} (the wait that "
        "declares a series complete) is included.", "",
        "| method | reconstructed at | series timed | seconds | series / minute | "
        "job s / series (warm) | first job s (cold) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        size = f"{r['size']}² (prior's size)" if r["size"] else f"{shape[1]}² (native)"
        lines.append(f"| {r['method']} | {size} | {r['series']} | {r['seconds']:.1f} | "
                     f"{r['per_minute']:.2f} | {r['job_s']:.1f} | {r['cold_job_s']:.1f} |")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines += ["", f"Machine: {info['cpu']}, {info['cores']} cores, load average {load} at "
              f"the end (other work shares the cores: the figures are lower bounds), torch "
              f"threads {torch.get_num_threads()}, no GPU used; ctflow {info['ctflow']}, "
              f"commit {info['git_commit']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed series per method")
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--photons", type=float, default=1e5)
    parser.add_argument("--methods", nargs="+", default=["fbp", "conjugate"])
    parser.add_argument("--idle-seconds", type=float, default=1.0)
    parser.add_argument("--series", type=Path, default=None,
                        help=f"series folder (default: the real-CT folder's {SERIES})")
    parser.add_argument("-o", "--output", type=Path, default=REPORT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = args.series or realct_dir() / SERIES
    helper = load_orthanc_helper()
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        work = Path(tmp)
        copies = [copy_series(source, work / f"copy{k}") for k in range(args.repeats + 1)]
        first = pydicom.dcmread(dicom_files(source)[0], stop_before_pixels=True)
        shape = (len(dicom_files(source)), int(first.Rows))
        rows = []
        for method in args.methods:
            rows.append(run_method(helper, method, copies, args, work))
            print(f"{method}: {rows[-1]['per_minute']:.2f} series/min "
                  f"({rows[-1]['job_s']:.1f} s per job)", flush=True)
    text = report(rows, args, shape)
    with atomic_file(args.output, overwrite=True) as tmp_file:
        tmp_file.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
