"""Benchmark C-ΠGFM / C-ΠGDM against the Euler baselines ΠGFM / OT-ODE (and FBP / TV on CT).

For each task (``ctflow.tasks``) and held-out phantom (DESIGN §5, split ``test`` by default)
it reconstructs with

* ``conjugate`` and ``conjugate-diffusion`` at NFE 5, 10, 20 (``--conj-nfe``),
* ``pigfm`` and ``otode`` at NFE 5, 10, 20, 50, 100 (``--base-nfe``),
* ``fbp`` and ``tv`` on CT tasks (skipped with a note if not available in this build),

for each ``--jacobian`` setting of the guided samplers, and prints one Markdown table per task
(mean PSNR / SSIM / RMSE in HU, seconds per image, NFE per image) followed by all rows as CSV,
then the targets of the issue (C-ΠGFM@5 − ΠGFM@5 ≥ 1 dB; C-ΠGFM@5 within 0.5 dB of ΠGFM's
best at ≥ 50 NFE; on ct60, C-ΠGFM@5 − TV ≥ 2 dB).

    python scripts/bench_conjugate.py --size 64 --images 4 --prior default \
        --tasks ct30 ct60 ct30-1e5 ct60-1e5 inpaint-box inpaint-random sr4 blur

``--tune`` instead grid-searches (w, τ) of ``conjugate`` (and ``conjugate-diffusion``) at
``--tune-nfe`` on the *validation* split and prints the best setting per task family as
JSON for ``ctflow/solvers/conjugate_defaults.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import platform
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

import ctflow
import ctflow.priors
from ctflow.errors import CtflowError
from ctflow.metrics import evaluate
from ctflow.tasks import get_task, heldout_images
from ctflow.units import mu_to_hu

GUIDED = ("conjugate", "conjugate-diffusion", "pigfm", "otode")
FAMILY_TASK = {"ct": "ct60", "inpainting": "inpaint-box", "sr": "sr4", "blur": "blur"}


def fitted_gaussian_prior(size: int, count: int = 1024) -> ctflow.priors.GaussianPrior:
    """An exact-velocity Gaussian prior fitted (mean, PCA covariance) to ``count`` *training*
    phantoms in a standardised model space — a smoke-test prior for when no trained network
    is available; its numbers compare integrators, not priors."""
    from ctflow.phantoms import PhantomDataset
    from ctflow.units import hu_to_mu

    data = PhantomDataset.split("train", size=size, length=count)
    mu = torch.stack([hu_to_mu(data[i][0].double()) for i in range(count)]).flatten(1)
    scale = float(1.0 / (2 * mu.std()))
    offset = float(-scale * mu.mean())
    xm = scale * mu + offset
    mean = xm.mean(0)
    _, svals, vt = torch.linalg.svd(xm - mean, full_matrices=True)
    var = torch.full((size * size,), 1e-4, dtype=torch.float64)
    var[: len(svals)] = torch.clamp(svals**2 / (count - 1), min=1e-4)
    prior = ctflow.priors.GaussianPrior(mean.view(size, size), var.view(size, size),
                                        basis=vt.T.contiguous())
    prior.scale, prior.offset = scale, offset
    return prior


def solve(problem, method: str, prior, seed: int, **opts: Any) -> dict[str, float] | None:
    """Reconstruct one problem; metrics on HU, or None if the method is unavailable."""
    try:
        res = ctflow.reconstruct(problem.y, problem.op, method=method, prior=prior,
                                 noise_std=problem.noise_std or None, seed=seed, **opts)
    except CtflowError as exc:
        print(f"  [{method}] skipped: {exc}", file=sys.stderr)
        return None
    hu = mu_to_hu(res.image[0, 0].double().cpu().numpy())
    out = evaluate(hu, problem.gt_hu)
    out.update(seconds=res.seconds, nfe=res.nfe)
    return out


def runs(task_name: str, args) -> list[tuple[str, dict[str, Any]]]:
    """(label, options) of every reconstruction of one task."""
    out: list[tuple[str, dict[str, Any]]] = []
    jac_settings = {"both": (False, True), "false": (False,), "true": (True,)}[args.jacobian]
    for jac in jac_settings:
        tag = "+vjp" if jac else ""
        for method in ("conjugate", "conjugate-diffusion"):
            if method in args.methods:
                out += [(f"{method}{tag}", {"method": method, "nfe": k, "jacobian": jac})
                        for k in args.conj_nfe]
        for method in ("pigfm", "otode"):
            if method in args.methods:
                out += [(f"{method}{tag}", {"method": method, "nfe": k, "jacobian": jac})
                        for k in args.base_nfe]
    if get_task(task_name).family == "ct":
        out += [(m, {"method": m}) for m in ("fbp", "tv") if m in args.methods]
    return out


def bench(args, prior) -> list[dict[str, Any]]:
    rows = []
    images = heldout_images(args.size, args.images, split=args.split)
    for task_name in args.tasks:
        task = get_task(task_name)
        problems = [task.problem(img, seed=i) for i, img in enumerate(images)]
        for label, opts in runs(task_name, args):
            opts = dict(opts)
            method = opts.pop("method")
            scores = [solve(p, method, prior, args.seed, **opts) for p in problems]
            if any(s is None for s in scores):
                continue
            row = {"task": task_name, "size": args.size, "method": label,
                   "nfe_budget": opts.get("nfe", 0), "images": len(scores)}
            for key in ("psnr", "ssim", "rmse_hu", "seconds", "nfe"):
                row[key] = float(np.mean([s[key] for s in scores]))
            row["psnr_std"] = float(np.std([s["psnr"] for s in scores]))
            rows.append(row)
            print(f"  {task_name:15s} {label:24s} nfe={row['nfe']:5.1f} "
                  f"psnr={row['psnr']:6.2f} ssim={row['ssim']:.3f} s={row['seconds']:.2f}",
                  file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        lines += [f"\n### {task} ({rows[0]['size']}², {rows[0]['images']} images)\n",
                  "| method | NFE | PSNR (dB) | SSIM | RMSE (HU) | s/image |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["task"] == task):
            lines.append(f"| {r['method']} | {r['nfe']:.0f} | {r['psnr']:.2f} ± "
                         f"{r['psnr_std']:.2f} | {r['ssim']:.3f} | {r['rmse_hu']:.1f} | "
                         f"{r['seconds']:.2f} |")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> str:
    """The issue's three targets, per task, for the default (first) jacobian setting."""
    by = defaultdict(dict)
    for r in rows:
        by[r["task"]][(r["method"], r["nfe_budget"])] = r["psnr"]
    lines = ["\n### Targets (PSNR differences in dB)\n"]
    for task, d in by.items():
        c5, p5 = d.get(("conjugate", 5)), d.get(("pigfm", 5))
        best = max((v for (m, k), v in d.items() if m.startswith("pigfm") and k >= 50),
                   default=None)
        parts = []
        if c5 is not None and p5 is not None:
            parts.append(f"C-ΠGFM@5 − ΠGFM@5 = {c5 - p5:+.2f} "
                         f"({'met' if c5 - p5 >= 1 else 'NOT met'})")
        if c5 is not None and best is not None:
            parts.append(f"C-ΠGFM@5 − best ΠGFM@≥50 = {c5 - best:+.2f} "
                         f"({'met' if c5 - best >= -0.5 else 'NOT met'})")
        tv = d.get(("tv", 0))
        if task == "ct60" and c5 is not None and tv is not None:
            parts.append(f"C-ΠGFM@5 − TV = {c5 - tv:+.2f} "
                         f"({'met' if c5 - tv >= 2 else 'NOT met'})")
        lines.append(f"- {task}: " + ("; ".join(parts) or "not measured"))
    return "\n".join(lines)


def tune(args, prior) -> dict[str, Any]:
    """Grid search of (w, τ) at --tune-nfe on the validation split; best mean PSNR per family."""
    images = heldout_images(args.size, args.images, split="val")
    grid = list(itertools.product(args.tune_w, args.tune_tau))
    result: dict[str, Any] = {}
    for method in ("conjugate", "conjugate-diffusion"):
        result[method] = {}
        for family in args.tune_families:
            task = get_task(FAMILY_TASK[family])
            problems = [task.problem(img, seed=i) for i, img in enumerate(images)]
            scores = {}
            for w, tau in grid:
                vals = [solve(p, method, prior, args.seed, nfe=args.tune_nfe, w=w, tau=tau,
                              lam=0.0) for p in problems]
                scores[(w, tau)] = float(np.mean([v["psnr"] for v in vals]))
                print(f"  tune {method} {family} w={w} tau={tau}: {scores[(w, tau)]:.2f}",
                      file=sys.stderr, flush=True)
            (w, tau), best = max(scores.items(), key=lambda kv: kv[1])
            result[method][family] = {"w": w, "tau": tau, "lam": 0.0, "psnr_val": best}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--prior", default="default",
                   help="prior name for ctflow.load_prior, or 'gaussian-fit' (smoke test)")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", nargs="+", default=["ct30", "ct60", "ct30-1e5", "ct60-1e5",
                                                   "inpaint-box", "inpaint-random", "sr4",
                                                   "blur"])
    p.add_argument("--methods", nargs="+", default=[*GUIDED, "fbp", "tv"])
    p.add_argument("--conj-nfe", nargs="+", type=int, default=[5, 10, 20])
    p.add_argument("--base-nfe", nargs="+", type=int, default=[5, 10, 20, 50, 100])
    p.add_argument("--jacobian", choices=("false", "true", "both"), default="false")
    p.add_argument("--csv", help="also write the CSV rows to this file")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tune", action="store_true")
    p.add_argument("--tune-nfe", type=int, default=5)
    p.add_argument("--tune-w", nargs="+", type=float, default=[5.0, 10.0, 20.0, 40.0])
    p.add_argument("--tune-tau", nargs="+", type=float, default=[0.2, 0.4, 0.6])
    p.add_argument("--tune-families", nargs="+", default=list(FAMILY_TASK))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.prior == "gaussian-fit":
        prior = fitted_gaussian_prior(args.size)
    else:
        prior = ctflow.load_prior(args.prior.replace("{size}", str(args.size)))
    print(f"machine: {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, threads {args.threads}, prior {args.prior}", file=sys.stderr)
    start = time.perf_counter()
    if args.tune:
        print(json.dumps(tune(args, prior), indent=2))
        return 0
    rows = bench(args, prior)
    print(markdown(rows))
    print(targets(rows))
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("\n```csv\n" + buf.getvalue() + "```")
    if args.csv:
        with open(args.csv, "w", encoding="utf-8", newline="") as fh:
            fh.write(buf.getvalue())
    print(f"\ntotal {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
