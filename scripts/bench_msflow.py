"""Benchmark MS-Flow against D-Flow, C-ΠGFM and the classical TV / FBP baselines.

Same tasks and held-out phantoms as ``scripts/bench_conjugate.py`` (``ctflow.tasks``):
sparse-view CT with 30/60 views (noiseless and 1e5 photons), box and random inpainting,
SR ×4 and Gaussian blur.  For every task it prints a Markdown table (mean PSNR / SSIM /
RMSE in HU, seconds and NFE per image), then all rows as CSV and the issue's targets:
MS-Flow ≥ D-Flow in PSNR on every task at ≤ 1/3 of its wall time, and MS-Flow ≥ TV + 2 dB
on ct60.  Methods missing from this build (e.g. ``conjugate``) are skipped with a note.

    python3 scripts/bench_msflow.py --size 64 --images 4 --prior default \
        --tasks ct30 ct60 ct30-1e5 ct60-1e5 inpaint-box inpaint-random sr4 blur

``--prior gaussian`` uses an exact-velocity Gaussian prior fitted to training phantoms
(a smoke test of the solvers when no trained network is available).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

import ctflow
from ctflow.errors import CtflowError
from ctflow.metrics import evaluate
from ctflow.priors import GaussianPrior
from ctflow.tasks import SOLVER_BENCH_TASKS, get_task, heldout_images
from ctflow.units import mu_to_hu

CLASSICAL_ON_CT = ("fbp", "tv")


def gaussian_prior(size: int, count: int = 512) -> GaussianPrior:
    """Mean and PCA covariance of ``count`` training phantoms in a model space with unit
    half-range (variances floored at 1e-4): an exact-velocity stand-in for a network."""
    from ctflow.phantoms import PhantomDataset
    from ctflow.units import hu_to_mu

    data = PhantomDataset.split("train", size=size, length=count)
    mu = torch.stack([hu_to_mu(data[i][0].double()).flatten() for i in range(count)])
    lo, hi = float(mu.min()), float(mu.max())
    scale = 2.0 / (hi - lo)
    offset = -1.0 - scale * lo
    xm = scale * mu + offset
    mean = xm.mean(0)
    _, s, vt = torch.linalg.svd(xm - mean, full_matrices=True)
    var = torch.full((size * size,), 1e-4, dtype=torch.float64)
    var[: len(s)] = (s**2 / (count - 1)).clamp_min(1e-4)
    prior = GaussianPrior(mean.view(size, size), var.view(size, size), basis=vt.T.contiguous())
    prior.scale, prior.offset = scale, offset
    return prior


def run_method(problem, method: str, prior, seed: int, opts: dict[str, Any]
               ) -> dict[str, float] | None:
    """One reconstruction scored on HU; None if the method is not available here."""
    try:
        start = time.perf_counter()
        res = ctflow.reconstruct(problem.y, problem.op, method=method, prior=prior,
                                 noise_std=problem.noise_std or None, seed=seed, **opts)
        seconds = time.perf_counter() - start
    except CtflowError as exc:
        print(f"  [{method}] skipped: {exc}", file=sys.stderr)
        return None
    hu = mu_to_hu(res.image[0, 0].double().cpu().numpy())
    return {**evaluate(hu, problem.gt_hu), "seconds": seconds, "nfe": float(res.nfe)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--split", default="test")
    p.add_argument("--prior", default="default", help="prior name/path, or 'gaussian'")
    p.add_argument("--tasks", nargs="+", default=list(SOLVER_BENCH_TASKS))
    p.add_argument("--methods", nargs="+", default=["msflow", "dflow", "conjugate", "tv", "fbp"])
    p.add_argument("--msflow-opts", default="{}", help="JSON options for msflow")
    p.add_argument("--dflow-opts", default="{}", help="JSON options for dflow")
    p.add_argument("--conjugate-opts", default="{}", help="JSON options for conjugate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--csv", default=None, help="also write the CSV rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    prior = gaussian_prior(args.size) if args.prior == "gaussian" else \
        ctflow.load_prior(args.prior)
    opts = {"msflow": json.loads(args.msflow_opts), "dflow": json.loads(args.dflow_opts),
            "conjugate": json.loads(args.conjugate_opts)}
    images = heldout_images(args.size, args.images, split=args.split)
    rows: list[dict[str, Any]] = []
    for name in args.tasks:
        task = get_task(name)
        scores: dict[str, list[dict[str, float]]] = defaultdict(list)
        for i, gt in enumerate(images):
            problem = task.problem(gt, seed=args.seed + i)
            for method in args.methods:
                if method in CLASSICAL_ON_CT and task.family != "ct":
                    continue
                r = run_method(problem, method, prior, args.seed + i, opts.get(method, {}))
                if r is not None:
                    scores[method].append(r)
        print(f"\n### {name}: {task.description} ({args.size}², {args.images} images)\n")
        print("| method | PSNR | SSIM | RMSE (HU) | s/image | NFE |\n|---|---|---|---|---|---|")
        for method, rs in scores.items():
            m = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
            rows.append({"task": name, "method": method, **m})
            print(f"| {method} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['rmse_hu']:.1f} | "
                  f"{m['seconds']:.2f} | {m['nfe']:.0f} |", flush=True)

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["task", "method", "psnr", "ssim", "rmse_hu", "seconds",
                                        "nfe"])
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"\nmachine: {platform.platform()}, torch {torch.__version__}, prior {args.prior}, "
          f"split {args.split}, options {json.dumps(opts)}\n")
    print(buf.getvalue())
    if args.csv:
        with open(args.csv, "w", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
    print(targets(rows))


def targets(rows: list[dict[str, Any]]) -> str:
    """The issue's targets, one line per task."""
    by = {(r["task"], r["method"]): r for r in rows}
    lines = ["targets:"]
    for task in dict.fromkeys(r["task"] for r in rows):
        ms, df = by.get((task, "msflow")), by.get((task, "dflow"))
        if ms and df:
            ok = ms["psnr"] >= df["psnr"] and ms["seconds"] <= df["seconds"] / 3
            lines.append(f"  {task}: MS-Flow − D-Flow = {ms['psnr'] - df['psnr']:+.2f} dB, "
                         f"time ratio {ms['seconds'] / df['seconds']:.2f} "
                         f"({'met' if ok else 'NOT met'})")
        tv = by.get((task, "tv"))
        if ms and tv and task == "ct60":
            gap = ms["psnr"] - tv["psnr"]
            lines.append(f"  {task}: MS-Flow − TV = {gap:+.2f} dB "
                         f"({'met' if gap >= 2 else 'NOT met'})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
