"""Pre-log Poisson weights vs a white noise level, per method, on the real validation slices.

For every photon count I0 (default 1e5 and 1e4), CT task operator (ct30-1e5, ct60-1e5:
parallel beam, 30 / 60 views) and method (conjugate, pigfm, msflow, tv at their defaults),
each validation image x_i (``ctflow.realct.validation_images``) is simulated with
``ctflow.simulate(x_i, op, photons=I0, seed=i)`` and reconstructed twice:

* (a) ``noise_std`` = the true white-equivalent σ_i = ``ctflow.simulate.noise_std(op(x_i),
  photons=I0)`` (white data term, the method's noisy defaults);
* (b) ``photons=I0`` (pre-log Poisson weights, σ̄ from the counts; ``noise_std`` None).

Both use seed i, so the paired difference (b) − (a) isolates the weighting.  PSNR in HU
(``ctflow.metrics``).  Writes one Markdown report.  Example (the committed report; about
half an hour of one CPU core at 64²):

    OMP_NUM_THREADS=1 python3 scripts/bench_poisson.py --size 64 --images 8 \\
        --out docs/bench_poisson.md

``--pixel-mm`` replaces the tasks' 1 mm pixels (a 64 mm field of view at 64², line
integrals ≤ 1.4, so the counts vary only ~4× across rays) by a physical pixel size, e.g.
5.5 mm for a 350 mm field of view at 64², where the counts vary ~100× (the same views).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import ctflow  # noqa: E402
from ctflow.bench.tasks import task_operator  # noqa: E402
from ctflow.io.atomic import atomic_file  # noqa: E402
from ctflow.metrics import psnr  # noqa: E402
from ctflow.operators import ParallelBeam2D  # noqa: E402
from ctflow.realct import ATTRIBUTION, validation_images  # noqa: E402
from ctflow.simulate import noise_std  # noqa: E402
from ctflow.units import hu_to_mu, mu_to_hu  # noqa: E402

METHODS = ("conjugate", "pigfm", "msflow", "tv")
TASKS = ("ct30-1e5", "ct60-1e5")


def run_one(method: str, y: torch.Tensor, op: Any, prior: Any, sigma: float | None,
            photons: float | None, seed: int, options: dict[str, Any]) -> np.ndarray:
    """One reconstruction in HU: white (``sigma``) or weighted (``photons``)."""
    extra = {} if photons is None else {"photons": photons}
    res = ctflow.reconstruct(y, op, method=method, prior=prior, noise_std=sigma, seed=seed,
                             **extra, **options)
    return mu_to_hu(res.image.detach().double().numpy()[0, 0])


def operator(task: str, size: int, pixel_mm: float | None) -> Any:
    """The task's operator, or the same views with ``pixel_mm`` pixels."""
    if pixel_mm is None:
        return task_operator(task, size)
    views = int(task.split("-")[0][2:])  # "ct30-1e5" → 30
    return ParallelBeam2D(image_size=size, views=views, pixel_size_mm=pixel_mm)


def bench(size: int, count: int, photon_levels: list[float], tasks: list[str],
          methods: list[str], options: dict[str, dict[str, Any]],
          pixel_mm: float | None = None) -> list[dict[str, Any]]:
    """PSNR of (a) and (b) per (photons, task, method, image)."""
    images = validation_images(size, count)
    prior = ctflow.load_prior("default")
    rows: list[dict[str, Any]] = []
    combos = [(p, t, m) for p in photon_levels for t in tasks for m in methods]
    for photons, task, method in tqdm(combos, desc="bench_poisson"):
        op = operator(task, size, pixel_mm)
        start = time.perf_counter()
        for i, gt in enumerate(images):
            x = torch.from_numpy(hu_to_mu(gt.astype(np.float32)))[None, None]
            y = ctflow.simulate(x, op, photons=photons, seed=i)
            with torch.no_grad():
                sigma = noise_std(op(x), photons=photons)
            opts = options.get(method, {})
            white = run_one(method, y, op, prior, sigma, None, i, opts)
            weighted = run_one(method, y, op, prior, None, photons, i, opts)
            rows.append({"photons": photons, "task": task, "method": method, "image": i,
                         "sigma": sigma, "y_max": float(y.max()),
                         "psnr_white": psnr(white, gt),
                         "psnr_weighted": psnr(weighted, gt)})
        tqdm.write(f"{photons:g} {task} {method}: "
                   f"{summary(rows, photons, task, method)} "
                   f"({time.perf_counter() - start:.0f} s)")
    return rows


def stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Means of (a), (b), the paired difference with its standard error, and wins of (b)."""
    a = np.array([r["psnr_white"] for r in rows])
    b = np.array([r["psnr_weighted"] for r in rows])
    d = b - a
    sem = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"white": float(a.mean()), "weighted": float(b.mean()), "diff": float(d.mean()),
            "sem": sem, "wins": int((d > 0).sum()), "n": len(d)}


def summary(rows: list[dict[str, Any]], photons: float, task: str, method: str) -> str:
    s = stats([r for r in rows if (r["photons"], r["task"], r["method"])
               == (photons, task, method)])
    return (f"white {s['white']:.2f}  weighted {s['weighted']:.2f}  "
            f"Δ {s['diff']:+.2f} ± {s['sem']:.2f} dB")


def report(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    """The Markdown report."""
    pixel = ("the tasks' operators (1 mm pixels)" if args.pixel_mm is None else
             f"the tasks' views with {args.pixel_mm:g} mm pixels")
    y_max = max(r["y_max"] for r in rows)
    lines = [
        "# Pre-log Poisson weights vs a white noise level",
        "",
        f"Real validation slices (`ctflow.realct.validation_images({args.size}, "
        f"{args.images})`), parallel-beam CT on {pixel} (line integrals up to "
        f"{y_max:.1f}, so the counts vary up to {math.exp(y_max):.0f}× across rays), "
        "simulated with `ctflow.simulate(x, op, "
        "photons=I0, seed=i)`; every method at its defaults with the shipped default prior. "
        "(a) white: `noise_std` = the true white-equivalent σ "
        "(`ctflow.simulate.noise_std(op(x), photons=I0)`); (b) weighted: `photons=I0` "
        "(inverse-variance weights w_i = I0·e^{−y_i}, level σ̄ from the counts). "
        "Same seed for both, so Δ = (b) − (a) is paired; ± is its standard error over the "
        "images, 'wins' the images where (b) scores higher.  PSNR in dB on HU images.",
        "",
        "| photons | task | method | (a) white | (b) weighted | Δ (b − a) | wins |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["photons"], r["task"], r["method"]) for r in rows},
                  key=lambda k: (-k[0], k[1], args.methods.index(k[2])))
    for photons, task, method in keys:
        s = stats([r for r in rows if (r["photons"], r["task"], r["method"])
                   == (photons, task, method)])
        lines.append(f"| {photons:g} | {task[:4]} | {method} | {s['white']:.2f} | "
                     f"{s['weighted']:.2f} | {s['diff']:+.2f} ± {s['sem']:.2f} | "
                     f"{s['wins']}/{s['n']} |")
    lines += ["", "Pooled over tasks and photon counts:", "",
              "| method | Δ (b − a) | wins |", "|---|---|---|"]
    for method in args.methods:
        s = stats([r for r in rows if r["method"] == method])
        lines.append(f"| {method} | {s['diff']:+.2f} ± {s['sem']:.2f} | {s['wins']}/{s['n']} |")
    command = ("OMP_NUM_THREADS=1 python3 scripts/bench_poisson.py "
               f"--size {args.size} --images {args.images} "
               f"--photons {' '.join(f'{p:g}' for p in args.photons)} "
               f"--tasks {' '.join(args.tasks)} --methods {' '.join(args.methods)}"
               + (f" --pixel-mm {args.pixel_mm:g}" if args.pixel_mm is not None else "")
               + (f" --options '{json.dumps(args.options)}'" if args.options else "")
               + f" --out {args.out}")
    lines += ["", f"Command: `{command}` ({seconds / 60:.0f} min).", "",
              f"Machine: {platform.platform()}, python {platform.python_version()}, "
              f"torch {torch.__version__}, one thread.", "", ATTRIBUTION]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--photons", type=float, nargs="+", default=[1e5, 1e4])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--options", type=json.loads, default={},
                        help='per-method options as JSON, e.g. \'{"msflow": {"iters": 5}}\'')
    parser.add_argument("--pixel-mm", type=float, default=None,
                        help="pixel size in mm instead of the tasks' 1 mm")
    parser.add_argument("--out", default="docs/bench_poisson.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = bench(args.size, args.images, args.photons, args.tasks, args.methods, args.options,
                 args.pixel_mm)
    text = report(rows, args, time.perf_counter() - start)
    with atomic_file(args.out, overwrite=True) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
