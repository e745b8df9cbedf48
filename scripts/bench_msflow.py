"""Benchmark MS-Flow against D-Flow, C-ΠGFM and the classical TV / FBP baselines.

Same tasks and held-out phantoms as ``scripts/bench_conjugate.py`` (``ctflow.tasks``):
sparse-view CT with 30/60 views (noiseless and 1e5 photons), box and random inpainting,
SR ×4 and Gaussian blur.  For every task it prints a Markdown table (mean PSNR / SSIM /
RMSE in HU, seconds and NFE per image), then all rows as CSV and the issue's targets:
MS-Flow ≥ D-Flow in PSNR on every task at ≤ 1/3 of its wall time, and MS-Flow ≥ TV + 2 dB
on ct60.  ``msflow-budget`` is the time target as a budget: MS-Flow at its tuned options
but capped at the NFE that fits in a third of D-Flow's wall time on the same image, at the
cost per NFE measured in MS-Flow's own default run on that image (with a 10 % margin):
    cap = ⌊0.9 · (D-Flow seconds / 3) · (MS-Flow NFE / MS-Flow seconds)⌋.
The capped run is deterministic given the cap; its seconds are measured, not assumed.
(A cap of a third of D-Flow's *NFE* is not a third of its time on a CPU: a batched call
over the shooting segments counts one NFE but costs more than a single-image call.)
Methods missing from this build (e.g. ``conjugate``) are skipped with a note.

    python3 scripts/bench_msflow.py --size 64 --images 4 --prior default \
        --tasks ct30 ct60 ct30-1e5 ct60-1e5 inpaint-box inpaint-random sr4 blur

``--prior gaussian`` uses an exact-velocity Gaussian prior fitted to training phantoms
(a smoke test of the solvers when no trained network is available).  Every method that
takes a ``task_family`` option gets the task's family (its tuned defaults).

Tuning (validation split only): ``--tune FAMILY --tune-method msflow|dflow --grid JSON``
runs every combination of the grid on ``--tasks`` × ``--images`` validation phantoms, picks
the best mean PSNR (configurations within 0.1 dB of the best are tied: a constant μ, then
the fewest NFE, then the earliest in grid order, wins) and stores the chosen options,
the command, the images and every grid score: the options as a record of the tuned
prior's presets (``NAME.presets.json`` beside its weights, ctflow.priors.presets) for that
family, ``--size`` and, with ``--tune-mask scattered``, that mask kind (the grid's options
overlay the record the presets served for that context before), the run in
docs/tuning/latent.json.  For MS-Flow a
grid key ``mu`` is stored as ``mu_noisy`` or ``mu_noiseless`` by the noise of the tuning
tasks (they must agree).

    python3 scripts/bench_msflow.py --tune sr --tune-method msflow --split val --images 2 \
        --tasks sr4 --grid '{"init": ["inverse", "noise"], "iters": [10, 20]}'
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import inspect
import io
import itertools
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ctflow
from ctflow.bench import warm_projector
from ctflow.errors import CtflowError
from ctflow.io.atomic import atomic_file
from ctflow.metrics import evaluate
from ctflow.priors import GaussianPrior
from ctflow.priors.presets import load_presets, merge_records, presets_path, select_record
from ctflow.priors.registry import resolve as resolve_prior
from ctflow.solvers import get_solver
from ctflow.solvers.context import SCATTERED, mask_kind
from ctflow.tasks import SOLVER_BENCH_TASKS, get_task, heldout_images
from ctflow.units import mu_to_hu

CLASSICAL_ON_CT = ("fbp", "tv")
TUNED_SIZE = 64  # the size mask-kind records are tuned at
TUNING_LOG = Path(__file__).resolve().parents[1] / "docs" / "tuning" / "latent.json"
# MS-Flow capped at the NFE that fits in a third of D-Flow's wall time on the same image
# (module docstring): the "at ≤ 1/3 of D-Flow's wall time", timed as well
BUDGET = "msflow-budget"
BUDGET_MARGIN = 0.9
TIE_DB = 0.1  # tuning: configurations within this of the best mean PSNR are tied


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


def accepts(method: str, name: str) -> bool:
    """Whether the solver of ``method`` exists here and has an option ``name``."""
    try:
        solve, _ = get_solver(method)
    except CtflowError:
        return False
    return name in inspect.signature(solve).parameters


def run_method(problem, method: str, prior, seed: int, opts: dict[str, Any],
               family: str | None = None) -> dict[str, float] | None:
    """One reconstruction scored on HU; None if the method is not available here.  Methods
    taking ``task_family`` get ``family`` unless the options set it."""
    if family is not None and "task_family" not in opts and accepts(method, "task_family"):
        opts = {**opts, "task_family": family}
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


def _parser() -> argparse.ArgumentParser:
    """The command line (benchmark, or --tune a family's defaults)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64,
                   help="image size in pixels (default: %(default)s)")
    p.add_argument("--images", type=int, default=4,
                   help="held-out phantoms per task (default: %(default)s)")
    p.add_argument("--split", default="test",
                   help="phantom split of the images; --tune needs val (default: %(default)s)")
    p.add_argument("--prior", default="default",
                   help="prior name/path, or 'gaussian' (fitted smoke-test prior) "
                        "(default: %(default)s)")
    p.add_argument("--tasks", nargs="+", default=list(SOLVER_BENCH_TASKS),
                   help="ctflow.tasks names; --tune: all of family FAMILY "
                        "(default: %(default)s)")
    p.add_argument("--methods", nargs="+",
                   default=["msflow", "dflow", BUDGET, "conjugate", "tv", "fbp"],
                   help=f"methods benchmarked, fbp and tv on CT tasks only; {BUDGET}: MS-Flow "
                        "capped at a third of D-Flow's wall time (list it after msflow and "
                        "dflow) (default: %(default)s)")
    p.add_argument("--msflow-opts", default="{}",
                   help="JSON options for msflow and msflow-budget, over the tuned ones "
                        "(default: %(default)s)")
    p.add_argument("--dflow-opts", default="{}",
                   help="JSON options for dflow, over the tuned ones (default: %(default)s)")
    p.add_argument("--conjugate-opts", default="{}",
                   help="JSON options for conjugate, over the tuned ones (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="image i's noise and solver seed is seed + i (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per job (default: %(default)s)")
    p.add_argument("--csv", default=None, help="also write the CSV rows here (default: none)")
    p.add_argument("--markdown", default=None,
                   help="also write the whole report here (default: none)")
    p.add_argument("--jobs", type=int, default=1,
                   help="tasks run in parallel processes (default: %(default)s)")
    p.add_argument("--tune", default=None, metavar="FAMILY",
                   help="tune this family's defaults on --split (must be 'val') and store them "
                        "in the prior's presets instead of benchmarking")
    p.add_argument("--tune-method", default="msflow", choices=["msflow", "dflow"],
                   help="solver tuned by --tune (default: %(default)s)")
    p.add_argument("--grid", default="{}",
                   help="tuning grid: JSON {option: [values]} (default: %(default)s)")
    p.add_argument("--fixed", default="{}",
                   help="tuning: JSON options held fixed (default: %(default)s)")
    p.add_argument("--tune-mask", default=None, choices=[SCATTERED],
                   help="tuning: store the options for this inpainting mask kind only (the "
                        "family's 'masks' entry; every --tasks mask must be of that kind; "
                        f"needs --size {TUNED_SIZE}) (default: all mask kinds)")
    return p


def main() -> None:
    args = _parser().parse_args()
    torch.set_num_threads(args.threads)

    if args.tune is not None:
        tune(args, _prior(args.prior, args.size))
        return
    opts = {"msflow": json.loads(args.msflow_opts), "dflow": json.loads(args.dflow_opts),
            "conjugate": json.loads(args.conjugate_opts)}
    jobs = [(args, name, opts) for name in args.tasks]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            done = list(pool.map(bench_task, jobs))
    else:
        done = [bench_task(job) for job in jobs]
    rows = [r for task_rows, _ in done for r in task_rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["task", "method", "psnr", "ssim", "rmse_hu", "seconds",
                                        "nfe"])
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    text = "\n".join([
        "# MS-Flow benchmark", "", "Generated by:", "",
        "    python3 scripts/bench_msflow.py " + shlex.join(sys.argv[1:]), "",
        f"machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}, {args.threads} thread(s) per job, {args.jobs} job(s) in "
        f"parallel; prior {args.prior}, split {args.split}, {args.images} images per task; "
        f"extra options {json.dumps(opts)}.", "",
        "Defaults: MS-Flow and D-Flow use their per-family options tuned on the validation "
        "split (the prior's presets); C-ΠGFM its own tuned defaults; TV and "
        "FBP on CT only.  Budget policy: each method runs its tuned iterations and steps; "
        "wall time and NFE are measured, not equalised; msflow-budget is MS-Flow capped at the "
        "NFE that fits in a third of D-Flow's wall time on the same image, at the seconds per "
        "NFE of MS-Flow's own run there (×0.9).  s/image is wall time per image.", "",
        *[md for _, md in done], "", "## All rows (CSV)", "", "```", buf.getvalue().strip(),
        "```", "", "## Targets", "", "```", targets(rows), "```", ""])
    print(text)
    if args.csv:
        with atomic_file(args.csv, overwrite=True) as tmp:
            tmp.write_text(buf.getvalue(), encoding="utf-8")
    if args.markdown:
        with atomic_file(args.markdown, overwrite=True) as tmp:
            tmp.write_text(text, encoding="utf-8")


_PRIORS: dict[tuple[str, int], Any] = {}


def _prior(name: str, size: int):
    """The prior of a worker process (loaded once per process)."""
    if (name, size) not in _PRIORS:
        _PRIORS[name, size] = gaussian_prior(size) if name == "gaussian" else \
            ctflow.load_prior(name)
    return _PRIORS[name, size]


def bench_task(job: tuple[argparse.Namespace, str, dict[str, dict[str, Any]]]
               ) -> tuple[list[dict[str, Any]], str]:
    """All methods on one task's images: mean rows and the task's Markdown table."""
    args, name, opts = job
    torch.set_num_threads(args.threads)
    prior = _prior(args.prior, args.size)
    task = get_task(name)
    images = heldout_images(args.size, args.images, split=args.split)
    scores: dict[str, list[dict[str, float]]] = defaultdict(list)
    for i, gt in enumerate(images):
        problem = task.problem(gt, seed=args.seed + i)
        warm_projector(problem.op)  # built (or loaded) before anything is timed
        for method in args.methods:
            if method in CLASSICAL_ON_CT and task.family != "ct":
                continue
            if method == BUDGET:  # MS-Flow capped at a third of D-Flow's time on this image
                if len(scores["dflow"]) != i + 1 or len(scores["msflow"]) != i + 1:
                    print(f"  [{BUDGET}] skipped: needs msflow and dflow listed before it",
                          file=sys.stderr)
                    continue
                cap = budget_nfe(scores["msflow"][-1], scores["dflow"][-1])
                r = run_method(problem, "msflow", prior, args.seed + i,
                               {**opts.get("msflow", {}), "nfe": cap}, task.family)
            else:
                r = run_method(problem, method, prior, args.seed + i, opts.get(method, {}),
                               task.family)
            if r is not None:
                scores[method].append(r)
    rows = []
    lines = [f"### {name}: {task.description} ({args.size}², {args.images} images)", "",
             "| method | PSNR | SSIM | RMSE (HU) | s/image | NFE |", "|---|---|---|---|---|---|"]
    for method, rs in scores.items():
        m = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
        rows.append({"task": name, "method": method, **m})
        lines.append(f"| {method} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['rmse_hu']:.1f} | "
                     f"{m['seconds']:.2f} | {m['nfe']:.0f} |")
    print(f"done: {name}", file=sys.stderr, flush=True)
    return rows, "\n".join(lines) + "\n"


def budget_nfe(msflow_run: dict[str, float], dflow_run: dict[str, float]) -> int:
    """The NFE cap of ``msflow-budget``: a third of D-Flow's seconds at MS-Flow's measured
    seconds per NFE, times ``BUDGET_MARGIN``."""
    seconds_per_nfe = msflow_run["seconds"] / max(msflow_run["nfe"], 1.0)
    return int(BUDGET_MARGIN * dflow_run["seconds"] / 3 / seconds_per_nfe)


def tune(args: argparse.Namespace, prior) -> None:
    """Grid search on the validation split; stores the winner and all scores (module doc)."""
    if args.split != "val":
        raise SystemExit("--tune runs on the validation split only (--split val)")
    grid: dict[str, list[Any]] = json.loads(args.grid)
    fixed: dict[str, Any] = json.loads(args.fixed)
    tasks = [get_task(name) for name in args.tasks]
    if any(t.family != args.tune for t in tasks):
        raise SystemExit(f"--tasks must all be of family {args.tune!r}")
    images = heldout_images(args.size, args.images, split="val")
    problems = [(t, i, t.problem(gt, seed=args.seed + i)) for t in tasks
                for i, gt in enumerate(images)]
    noisy = {p.noise_std > 0 for _, _, p in problems}
    if args.tune_mask is not None and (args.size != TUNED_SIZE or any(
            mask_kind(p.op) != args.tune_mask for _, _, p in problems)):
        raise SystemExit(f"--tune-mask {args.tune_mask} needs --size {TUNED_SIZE} and tasks "
                         "whose masks are all of that kind")
    results = []
    for values in itertools.product(*grid.values()):
        opts = {**fixed, **dict(zip(grid, values, strict=True))}
        rs = [run_method(p, args.tune_method, prior, args.seed + i, opts, t.family)
              for t, i, p in problems]
        score = {k: float(np.mean([r[k] for r in rs])) for k in ("psnr", "ssim", "seconds",
                                                                  "nfe")}
        score["psnr_per_problem"] = [round(r["psnr"], 2) for r in rs]
        results.append({"options": opts, **score})
        print(f"{json.dumps(opts)}: PSNR {score['psnr']:.2f} SSIM {score['ssim']:.3f} "
              f"{score['seconds']:.2f} s NFE {score['nfe']:.0f}", flush=True)
    best_psnr = max(r["psnr"] for r in results)
    # ties: a constant μ (a μ schedule makes the recorded objective rise at each μ change,
    # and the objective must decrease monotonically), then the cheaper in network
    # evaluations, then the earlier grid point (seconds on a shared CPU are too noisy to
    # decide between equal-cost settings)
    tied = [i for i, r in enumerate(results) if r["psnr"] >= best_psnr - TIE_DB]
    best = results[min(tied, key=lambda i: (results[i]["options"].get("mu_growth", 1.0) != 1.0,
                                            results[i]["nfe"], i))]
    chosen = dict(best["options"])
    if args.tune_method == "msflow" and "mu" in chosen:
        if len(noisy) != 1:
            raise SystemExit("tuning mu needs tasks that are all noisy or all noiseless")
        chosen["mu_noisy" if noisy.pop() else "mu_noiseless"] = chosen.pop("mu")
    lock_path = Path(tempfile.gettempdir()) / "ctflow-msflow-defaults.lock"
    with open(lock_path, "w") as lock:  # tuning runs may run in parallel
        fcntl.flock(lock, fcntl.LOCK_EX)
        _store(args, grid, fixed, chosen, results)
    print(f"chosen for {args.tune_method}/{args.tune}: {json.dumps(chosen)} "
          f"(PSNR {best['psnr']:.2f}); written to the presets of {args.prior}")


def _store(args: argparse.Namespace, grid: dict[str, list[Any]], fixed: dict[str, Any],
           chosen: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Merge one tuning run into the prior's presets and the tuning log (atomic writes)."""
    command = "python3 scripts/bench_msflow.py " + shlex.join(sys.argv[1:])
    stem = resolve_prior(args.prior)
    presets = load_presets(presets_path(stem))
    before = None if presets is None else select_record(
        presets.records(args.tune_method), args.tune, False, args.tune_mask, args.size, None, {})
    options = {**(before["options"] if before is not None else {}), **chosen}
    merge_records(stem, args.prior, args.tune_method, [{
        "family": args.tune, "size": args.size, "mask": args.tune_mask, "options": options,
        "tuned": {"prior": args.prior, "command": command, "log": "docs/tuning/latent.json"}}])
    log = json.loads(TUNING_LOG.read_text(encoding="utf-8")) if TUNING_LOG.is_file() else {}
    entry = log.setdefault("runs", {}).setdefault(args.tune_method, {}).setdefault(
        args.tune, {"tuning": [], "sizes": {}, "masks": {}})
    runs = entry["tuning"]
    if args.size != TUNED_SIZE:
        runs = entry["sizes"].setdefault(str(args.size), [])
    elif args.tune_mask is not None:
        runs = entry["masks"].setdefault(args.tune_mask, [])
    runs.append({
        "command": command, "prior": args.prior, "size": args.size, "split": "val",
        "images": list(range(args.images)), "tasks": args.tasks, "seed": args.seed,
        "grid": grid, "fixed": fixed, "chosen": chosen,
        "results": [{**r, "psnr": round(r["psnr"], 3), "ssim": round(r["ssim"], 4),
                     "seconds": round(r["seconds"], 2)} for r in results]})
    with atomic_file(TUNING_LOG, overwrite=True) as tmp:
        tmp.write_text(json.dumps(log, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def targets(rows: list[dict[str, Any]]) -> str:
    """The issue's targets, one line per task."""
    by = {(r["task"], r["method"]): r for r in rows}
    lines = ["targets:"]
    for task in dict.fromkeys(r["task"] for r in rows):
        ms, df = by.get((task, "msflow")), by.get((task, "dflow"))
        for label, run in (("MS-Flow", ms), (BUDGET, by.get((task, BUDGET)))):
            if run and df:
                ok = run["psnr"] >= df["psnr"] and run["seconds"] <= df["seconds"] / 3
                lines.append(f"  {task}: {label} − D-Flow = {run['psnr'] - df['psnr']:+.2f} dB, "
                             f"time ratio {run['seconds'] / df['seconds']:.2f}, NFE ratio "
                             f"{run['nfe'] / df['nfe']:.2f} ({'met' if ok else 'NOT met'})")
        if ms:
            better = [f"{m} ({r['psnr'] - ms['psnr']:+.2f} dB)" for (t, m), r in by.items()
                      if t == task and m not in ("msflow", BUDGET) and r["psnr"] > ms["psnr"]]
            lines.append(f"  {task}: beats MS-Flow in PSNR: {', '.join(better) or 'none'}")
        tv = by.get((task, "tv"))
        if ms and tv and task == "ct60":
            gap = ms["psnr"] - tv["psnr"]
            lines.append(f"  {task}: MS-Flow − TV = {gap:+.2f} dB "
                         f"({'met' if gap >= 2 else 'NOT met'})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
