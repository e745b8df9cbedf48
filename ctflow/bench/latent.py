"""MS-Flow against D-Flow, C-ΠGFM and TV / FBP (scripts/bench_msflow.py): the benchmark of one
task, the ``msflow-budget`` cap, the issue's targets, and the tuning of MS-Flow / D-Flow.

Benchmark (:func:`bench_task`): image i of a task has noise and solver seed ``seed + i``;
every method that takes a ``task_family`` option gets the task's family (its tuned
defaults).  ``msflow-budget`` is MS-Flow at its tuned options capped at the NFE that fits in
a third of D-Flow's wall time on the same image, at the cost per NFE measured in MS-Flow's
own run there, with a 10 % margin (:func:`budget_nfe`):
    cap = ⌊0.9 · (D-Flow seconds / 3) · (MS-Flow NFE / MS-Flow seconds)⌋.

Tuning (:func:`tune`, validation split only) runs every combination of a grid on the tasks
× images, through :mod:`ctflow.bench.tune`: the best mean PSNR wins, configurations within
0.1 dB of it are tied and a constant μ, then the fewest NFE, then the earliest in grid
order wins.  The chosen options overlay the record the presets served for that context
before and are stored as a record of the tuned prior's presets for that family, size and
(optionally) mask kind; the run, with every grid score, goes to the tuning log
(docs/tuning/latent.json).  For MS-Flow a grid key ``mu`` is stored as ``mu_noisy`` or
``mu_noiseless`` by the noise of the tuning tasks (they must agree).
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CtflowError, InputError
from ..metrics import evaluate
from ..priors.presets import Presets, select_record
from ..priors.registry import resolve as resolve_prior
from ..solvers import get_solver
from ..solvers.context import mask_kind
from ..solvers.options import option_names
from ..units import mu_to_hu
from . import tune as tuner
from .harness import warm_projector
from .tasks import Problem, bench_images, get_task, heldout_images

CLASSICAL_ON_CT = ("fbp", "tv")
TUNED_SIZE = 64  # the size mask-kind records are tuned at
LOG_NAME = "docs/tuning/latent.json"  # named in each record's provenance
BUDGET = "msflow-budget"
BUDGET_MARGIN = 0.9
TIE_DB = 0.1  # tuning: configurations within this of the best mean PSNR are tied
SCORES = ("psnr", "ssim", "seconds", "nfe")


def accepts(method: str, name: str) -> bool:
    """Whether the solver of ``method`` exists here and declares an option ``name``."""
    try:
        _, spec = get_solver(method)
    except CtflowError:
        return False
    return name in option_names(spec.options)


def run_method(problem: Problem, method: str, prior: Any, seed: int, opts: dict[str, Any],
               family: str | None = None) -> dict[str, float] | None:
    """One reconstruction scored on HU; None if the method is not available here.  Methods
    taking ``task_family`` get ``family`` unless the options set it."""
    from ..api import reconstruct

    if family is not None and "task_family" not in opts and accepts(method, "task_family"):
        opts = {**opts, "task_family": family}
    try:
        start = time.perf_counter()
        res = reconstruct(problem.y, problem.op, method=method, prior=prior,
                          noise_std=problem.noise_std or None, seed=seed, **opts)
        seconds = time.perf_counter() - start
    except CtflowError as exc:
        print(f"  [{method}] skipped: {exc}", file=sys.stderr)
        return None
    hu = mu_to_hu(res.image[0, 0].double().cpu().numpy())
    return {**evaluate(hu, problem.gt_hu), "seconds": seconds, "nfe": float(res.nfe)}


def budget_nfe(msflow_run: Mapping[str, float], dflow_run: Mapping[str, float]) -> int:
    """The NFE cap of ``msflow-budget``: a third of D-Flow's seconds at MS-Flow's measured
    seconds per NFE, times ``BUDGET_MARGIN``."""
    seconds_per_nfe = msflow_run["seconds"] / max(msflow_run["nfe"], 1.0)
    return int(BUDGET_MARGIN * dflow_run["seconds"] / 3 / seconds_per_nfe)


_PRIORS: dict[tuple[str, int], Any] = {}


def load_prior(name: str, size: int) -> Any:
    """The prior of this process (loaded once): a name for ctflow.load_prior, or
    ``gaussian`` (the fitted smoke-test prior, :mod:`ctflow.bench.gaussian_fit`)."""
    if (name, size) not in _PRIORS:
        if name == "gaussian":
            from .gaussian_fit import unit_range_gaussian_prior

            _PRIORS[name, size] = unit_range_gaussian_prior(size)
        else:
            from ..api import load_prior as load

            _PRIORS[name, size] = load(name)
    return _PRIORS[name, size]


@dataclass(frozen=True)
class LatentBench:
    """What one benchmark job reconstructs: the task's images and the methods, in order
    (``msflow-budget`` after msflow and dflow), with per-method extra options."""

    task: str
    size: int = 64
    images: int = 4
    split: str = "test"
    prior: str = "default"
    seed: int = 0
    threads: int = 1
    methods: Sequence[str] = ("msflow", "dflow", BUDGET, "conjugate", "tv", "fbp")
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def bench_task(job: LatentBench) -> tuple[list[dict[str, Any]], str]:
    """All methods on one task's images: mean rows and the task's Markdown table."""
    torch.set_num_threads(job.threads)
    prior = load_prior(job.prior, job.size)
    task = get_task(job.task)
    images = heldout_images(job.size, job.images, split=job.split)
    scores: dict[str, list[dict[str, float]]] = defaultdict(list)
    for i, gt in enumerate(images):
        problem = task.problem(gt, seed=job.seed + i)
        warm_projector(problem.op)  # built (or loaded) before anything is timed
        for method in job.methods:
            if method in CLASSICAL_ON_CT and task.family != "ct":
                continue
            if method == BUDGET:  # MS-Flow capped at a third of D-Flow's time on this image
                if len(scores["dflow"]) != i + 1 or len(scores["msflow"]) != i + 1:
                    print(f"  [{BUDGET}] skipped: needs msflow and dflow listed before it",
                          file=sys.stderr)
                    continue
                cap = budget_nfe(scores["msflow"][-1], scores["dflow"][-1])
                r = run_method(problem, "msflow", prior, job.seed + i,
                               {**job.options.get("msflow", {}), "nfe": cap}, task.family)
            else:
                r = run_method(problem, method, prior, job.seed + i,
                               dict(job.options.get(method, {})), task.family)
            if r is not None:
                scores[method].append(r)
    rows = []
    lines = [f"### {job.task}: {task.description} ({job.size}², {job.images} images)", "",
             "| method | PSNR | SSIM | RMSE (HU) | s/image | NFE |", "|---|---|---|---|---|---|"]
    for method, rs in scores.items():
        m = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
        rows.append({"task": job.task, "method": method, **m})
        lines.append(f"| {method} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['rmse_hu']:.1f} | "
                     f"{m['seconds']:.2f} | {m['nfe']:.0f} |")
    print(f"done: {job.task}", file=sys.stderr, flush=True)
    return rows, "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LatentTuning:
    """One tuning run (module docstring): ``family``'s records of ``method`` on ``tasks``
    (all of that family), every combination of ``grid`` over ``fixed``; ``mask``: store
    the options for that inpainting mask kind only (needs size 64)."""

    family: str
    method: str
    tasks: Sequence[str]
    grid: Mapping[str, Sequence[Any]]
    prior: str
    command: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    size: int = 64
    images: int = 4
    seed: int = 0
    mask: str | None = None
    data: str = "phantoms"  # or "realct": the real validation patients


def tuning_problems(run: LatentTuning) -> list[tuple[Any, int, Problem]]:
    """(task, image index, problem) of every validation problem of a run; InputError if
    the tasks do not fit the run's family or mask kind."""
    tasks = [get_task(name) for name in run.tasks]
    if any(t.family != run.family for t in tasks):
        raise InputError(f"--tasks must all be of family {run.family!r}")
    images = bench_images(run.size, run.images, "val", run.data)
    problems = [(t, i, t.problem(gt, seed=run.seed + i)) for t in tasks
                for i, gt in enumerate(images)]
    if run.mask is not None and (run.size != TUNED_SIZE or any(
            mask_kind(p.op) != run.mask for _, _, p in problems)):
        raise InputError(f"--tune-mask {run.mask} needs --size {TUNED_SIZE} and tasks "
                         "whose masks are all of that kind")
    return problems


def tune(run: LatentTuning, prior: Any, log_path: Path) -> tuple[dict[str, Any], float]:
    """Grid search on the validation split; stores the winner in the presets of
    ``run.prior`` and every score in the tuning log.  Returns the chosen options and their
    mean PSNR."""
    problems = tuning_problems(run)
    noisy = {p.noise_std > 0 for _, _, p in problems}

    def solve(problem: tuple[Any, int, Problem], opts: dict[str, Any]) -> dict[str, float]:
        t, i, p = problem
        r = run_method(p, run.method, prior, run.seed + i, opts, t.family)
        if r is None:
            raise InputError(f"{run.method} is not available in this build")
        return r

    def report(trial: tuner.Trial) -> None:
        s = trial.scores
        print(f"{json.dumps(trial.options)}: PSNR {s['psnr']:.2f} SSIM {s['ssim']:.3f} "
              f"{s['seconds']:.2f} s NFE {s['nfe']:.0f}", flush=True)

    trials = tuner.evaluate(tuner.grid_points(run.grid, run.fixed), problems, solve, SCORES,
                            report)
    results: list[dict[str, Any]] = [{"options": t.options, **t.scores,
                "psnr_per_problem": [round(r["psnr"], 2) for r in t.results if r]}
               for t in trials]
    # ties: a constant μ (a μ schedule makes the recorded objective rise at each μ change,
    # and the objective must decrease monotonically), then the cheaper in network
    # evaluations, then the earlier grid point (seconds on a shared CPU are too noisy to
    # decide between equal-cost settings)
    best = tuner.pick_best(results, lambda r: r["psnr"], TIE_DB,
                           lambda r: (r["options"].get("mu_growth", 1.0) != 1.0, r["nfe"]))
    chosen = dict(best["options"])
    if run.method == "msflow" and "mu" in chosen:
        if len(noisy) != 1:
            raise InputError("tuning mu needs tasks that are all noisy or all noiseless")
        chosen["mu_noisy" if noisy.pop() else "mu_noiseless"] = chosen.pop("mu")
    tuner.store(resolve_prior(run.prior), run.prior, lambda old: _records(run, old, chosen),
                log_path, lambda log: _logged(log, run, chosen, results))
    return chosen, best["psnr"]


def _records(run: LatentTuning, presets: Presets | None,
             chosen: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The presets record of a run: the chosen options over those of the record the presets
    served for this context before."""
    before = None if presets is None else select_record(
        presets.records(run.method), run.family, False, run.mask, run.size, None, {})
    options = {**(before["options"] if before is not None else {}), **chosen}
    return {run.method: [{
        "family": run.family, "size": run.size, "mask": run.mask, "options": options,
        "tuned": {"prior": run.prior, "command": run.command, "log": LOG_NAME}}]}


def _logged(log: dict[str, Any], run: LatentTuning, chosen: dict[str, Any],
            results: list[dict[str, Any]]) -> dict[str, Any]:
    """The tuning log with this run added under (method, family) and its size or mask."""
    entry = log.setdefault("runs", {}).setdefault(run.method, {}).setdefault(
        run.family, {"tuning": [], "sizes": {}, "masks": {}})
    runs = entry["tuning"]
    if run.size != TUNED_SIZE:
        runs = entry["sizes"].setdefault(str(run.size), [])
    elif run.mask is not None:
        runs = entry["masks"].setdefault(run.mask, [])
    runs.append({
        "command": run.command, "prior": run.prior, "size": run.size, "split": "val",
        "data": run.data,
        "images": list(range(run.images)), "tasks": list(run.tasks), "seed": run.seed,
        "grid": dict(run.grid), "fixed": dict(run.fixed), "chosen": chosen,
        "results": [{**r, "psnr": round(r["psnr"], 3), "ssim": round(r["ssim"], 4),
                     "seconds": round(r["seconds"], 2)} for r in results]})
    return log


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

