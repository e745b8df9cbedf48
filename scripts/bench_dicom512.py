"""A real 512² DICOM series end to end through the CLI, timed: simulate a sparse-view
low-dose scan of it, reconstruct it with each method into a DICOM series that references
it, and check the result (PSNR against the original slices, dciodvfy findings).

    OMP_NUM_THREADS=1 python3 scripts/bench_dicom512.py -o docs/bench_dicom512.md

Input: ``../shared/data/realct/totalsegmentator-j2k`` (20 native 512² JPEG 2000 slices,
TotalSegmentator test files: Apache-2.0, data CC BY 4.0) unless ``--series`` names another.
The projector cache starts empty (a temporary ``CTFLOW_CACHE_DIR``), so the first flow
reconstruction includes building the exact projector of the geometry; its time is reported
separately from the per-slice solve time the CLI prints.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctflow.bench.machine import machine_info
from ctflow.io.atomic import atomic_file
from ctflow.realct import realct_dir


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run a CLI command; (wall seconds, its stdout); exits on failure."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def mean_row(stdout: str) -> str:
    """The ' mean ...' line of ctflow reconstruct's score table."""
    rows = [line for line in stdout.splitlines() if line.strip().startswith("mean")]
    return rows[-1].split(maxsplit=1)[1] if rows else "–"


def dciodvfy_findings(folder: Path) -> str:
    """Errors and warnings dciodvfy reports over the series (or why it could not run)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        return "dciodvfy not installed"
    errors = warnings = 0
    for path in sorted(folder.glob("*.dcm")):
        out = subprocess.run([tool, str(path)], capture_output=True, text=True)
        text = out.stdout + out.stderr
        errors += text.count("Error - ")
        warnings += text.count("Warning - ")
    return f"{errors} errors, {warnings} warnings"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", required=True, help="Markdown report")
    p.add_argument("--series", default=None, help="DICOM series folder (default: the J2K one)")
    p.add_argument("--views", type=int, default=60)
    p.add_argument("--photons", default="1e5")
    p.add_argument("--methods", nargs="+", default=["fbp", "tv", "conjugate"])
    args = p.parse_args(argv)
    series = Path(args.series) if args.series else realct_dir() / "totalsegmentator-j2k"
    if not series.is_dir():
        sys.exit(f"{series}: no such series folder")
    scratch = Path(tempfile.mkdtemp(prefix="ctflow-dicom512-"))
    env = {**os.environ, "CTFLOW_CACHE_DIR": str(scratch / "cache")}
    sino = scratch / "sino.h5"
    rows = []
    try:
        wall, _ = run(["ctflow", "simulate", "--from-dicom", str(series), "--views",
                       str(args.views), "--photons", args.photons, "--seed", "0", "-o",
                       str(sino)], env)
        rows.append(("simulate", f"{wall:.1f}", "–", "–", "–"))
        for method in args.methods:
            out = scratch / f"out_{method}"
            wall, stdout = run(["ctflow", "reconstruct", str(sino), "--method", method,
                                "-o", str(out), "--format", "dicom", "--reference",
                                str(series)], env)
            solve = stdout.split(f"method {method}, ")[-1].split(" s)")[0]
            rows.append((f"reconstruct --method {method}", f"{wall:.1f}", solve,
                         mean_row(stdout), dciodvfy_findings(out)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    info = machine_info()
    lines = ["# A real 512² DICOM series end to end", "",
             f"Command: `python3 scripts/bench_dicom512.py {shlex.join(argv or sys.argv[1:])}`",
             "", f"Series: `{series.name}` (20 native 512² JPEG 2000 slices; TotalSegmentator "
             "test files, Apache-2.0, data CC BY 4.0); simulated "
             f"{args.views} parallel views, {args.photons} photons, seed 0; the projector "
             "cache starts empty. Machine: " + json.dumps({k: info.get(k) for k in
                                                           ("cpu", "cores", "torch_threads")}),
             "", "| step | wall s (whole command) | solve s (all slices) | "
             "mean PSNR dB · SSIM · RMSE HU | dciodvfy |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    text = "\n".join(lines) + "\n"
    with atomic_file(args.out, overwrite=True) as tmp:
        tmp.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
