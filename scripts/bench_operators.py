"""Throughput of the CT projection backends (images per second), forward and adjoint.

Compares, per image size / number of views / batch size:

* ``matrix``      ctflow ParallelBeam2D, batched sparse CSR products
* ``astra-cpu``   ctflow ParallelBeam2D, one ASTRA call per slice on a persistent projector
* ``astra-call``  plain per-call ASTRA (``astra.create_sino`` / ``create_backprojection``:
                  data objects created and freed on every call), the usual way to use it
* ``skimage``     ``skimage.transform.radon`` / unfiltered ``iradon`` (batch 1 only)
* on a GPU also ``matrix`` and ``astra-cuda`` on CUDA tensors.

Prints one Markdown table (``--csv`` for CSV) plus the machine; ``speedup`` is images/s
relative to ``astra-call`` at the same size, views, batch and direction.  Timings are the
best of a few repeats after one warm-up call.  Usage:

    python scripts/bench_operators.py [--csv] [--sizes 64 128 256] [--views 30 60 180]
                                      [--batches 1 16] [--threads 1] [--min-time 0.3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

import astra
import numpy as np
import skimage
import torch
from skimage.transform import iradon, radon

from ctflow.operators import ParallelBeam2D


def best_seconds(fn: Callable[[], object], min_time: float, max_repeats: int = 5) -> float:
    """Best wall time of fn() over repeats (one warm-up call first)."""
    fn()
    best, spent, n = float("inf"), 0.0, 0
    while n < max_repeats and (n < 2 or spent < min_time):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best


def per_call_astra(op: ParallelBeam2D) -> tuple[Callable, Callable]:
    """Forward / adjoint of a batch by ordinary per-call ASTRA (new data objects each call)."""
    pid = astra.create_projector("linear", op.geometry.astra_proj_geom(),
                                 op.geometry.astra_vol_geom())

    def fwd(x: np.ndarray) -> np.ndarray:
        out = []
        for img in x:
            sid, sino = astra.create_sino(img, pid)
            astra.data2d.delete(sid)
            out.append(sino)
        return np.stack(out)

    def adj(y: np.ndarray) -> np.ndarray:
        out = []
        for sino in y:
            vid, img = astra.create_backprojection(sino, pid)
            astra.data2d.delete(vid)
            out.append(img)
        return np.stack(out)

    return fwd, adj


def bench_case(size: int, views: int, batch: int, min_time: float, cuda: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, size, size, generator=gen)
    rows = []

    def add(backend: str, direction: str, seconds: float | None) -> None:
        rows.append({"size": size, "views": views, "batch": batch, "backend": backend,
                     "direction": direction,
                     "images_per_s": None if seconds is None else batch / seconds})

    for backend in ("matrix", "astra-cpu"):
        op = ParallelBeam2D(size, views, backend=backend)
        y = op(x)
        add(backend, "forward", best_seconds(lambda op=op: op(x), min_time))
        add(backend, "adjoint", best_seconds(lambda op=op, y=y: op.T(y), min_time))
    op = ParallelBeam2D(size, views, backend="astra-cpu")
    fwd, adj = per_call_astra(op)
    xn = x[:, 0].numpy()
    yn = op(x)[:, 0].numpy()
    add("astra-call", "forward", best_seconds(lambda: fwd(xn), min_time))
    add("astra-call", "adjoint", best_seconds(lambda: adj(yn), min_time))
    if batch == 1:
        theta = np.rad2deg(op.geometry.angles)
        img = xn[0].astype(np.float64)
        sino = radon(img, theta=theta, circle=False)
        add("skimage", "forward",
            best_seconds(lambda: radon(img, theta=theta, circle=False), min_time, 3))
        add("skimage", "adjoint", best_seconds(
            lambda: iradon(sino, theta=theta, filter_name=None, circle=False,
                           output_size=size), min_time, 3))
    if cuda:
        xc = x.cuda()
        for backend in ("matrix", "astra-cuda"):
            opc = ParallelBeam2D(size, views, backend=backend)
            yc = opc(xc)

            def sync(fn: Callable) -> Callable:
                return lambda: (fn(), torch.cuda.synchronize())

            add(f"{backend} (cuda)", "forward", best_seconds(sync(lambda o=opc: o(xc)), min_time))
            add(f"{backend} (cuda)", "adjoint",
                best_seconds(sync(lambda o=opc, y=yc: o.T(y)), min_time))
    base = {r["direction"]: r["images_per_s"] for r in rows if r["backend"] == "astra-call"}
    for r in rows:
        r["speedup"] = None if r["images_per_s"] is None else r["images_per_s"] / \
            base[r["direction"]]
    return rows


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.platform()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"astra {astra.__version__}, scikit-image {skimage.__version__}, "
            f"cuda {torch.cuda.is_available()}, load average at start {load:.1f}")


def print_table(rows: list[dict], csv: bool) -> None:
    cols = ["size", "views", "batch", "backend", "direction", "images_per_s", "speedup"]

    def fmt(r: dict, c: str) -> str:
        v = r[c]
        if v is None:
            return "n/a"
        if c == "images_per_s":
            return f"{v:.1f}"
        if c == "speedup":
            return f"{v:.2f}"
        return str(v)

    if csv:
        print(",".join(cols))
        for r in rows:
            print(",".join(fmt(r, c) for c in cols))
        return
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r, c) for c in cols) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", action="store_true", help="print CSV instead of Markdown")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256],
                        help="image sizes in pixels (default: %(default)s)")
    parser.add_argument("--views", type=int, nargs="+", default=[30, 60, 180],
                        help="numbers of projection views (default: %(default)s)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16],
                        help="batch sizes; skimage runs at batch 1 only (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="seconds of timed calls per measurement: at least 2 repeats, then "
                             "more until this many seconds, at most 5 (skimage 3) "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    rows: list[dict] = []
    started = time.perf_counter()
    for size in args.sizes:
        for views in args.views:
            for batch in args.batches:
                rows += bench_case(size, views, batch, args.min_time, cuda)
                print(f"done {size}² {views} views batch {batch} "
                      f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print(f"Machine: {machine()}\n")
    print_table(rows, args.csv)
    target = [r for r in rows if (r["size"], r["views"], r["batch"], r["backend"],
                                  r["direction"]) == (128, 60, 16, "matrix", "forward")]
    if target:
        print(f"\nmatrix vs per-call ASTRA at 128², 60 views, batch 16 (forward): "
              f"{target[0]['speedup']:.1f}x (target >= 5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
