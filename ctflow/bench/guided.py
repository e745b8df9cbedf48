"""The guided samplers' benchmark and tuning (scripts/bench_conjugate.py): C-ΠGFM / C-ΠGDM
(``conjugate``, ``conjugate-diffusion``) against the Euler baselines ΠGFM / OT-ODE
(``pigfm``, ``otode``), and FBP / TV on CT.

Benchmark (:func:`bench_task`): every task's held-out images, image i's noise seeded with
i, every guided sampler at its own validation-tuned defaults (the prior's presets) at each
NFE budget; one row per (task, method, budget) with the mean scores and the per-image PSNR
(so that differences can be paired per image, :mod:`ctflow.bench.guided_report`).

Tuning (:func:`tune`) grid-searches each sampler variant on the *validation* images only,
one task per family (:data:`FAMILY_TASK`; ``ct-noisy`` = ct60-1e5, whose records serve CT
calls with noisy data and whose grid adds the noise weight κ = rho_scale), at each budget:
(w, τ) for conjugate, conjugate+vjp, conjugate-diffusion and pigfm, (γ, t0) for otode, λ
and the integrator order as further conjugate axes.  The family ``inpainting-random``
gives records tagged ``"mask": "scattered"``.  The best mean PSNR wins (the earliest grid
point on a tie; a failed solve scores −inf), through :mod:`ctflow.bench.tune`;
:func:`write_defaults` merges tuning results into the presets of the prior they were tuned
with and their grids into the tuning log (docs/tuning/guided.json).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CtflowError
from ..io.atomic import atomic_file
from ..metrics import evaluate as evaluate_image
from ..priors.registry import resolve as resolve_prior
from ..units import mu_to_hu
from . import tune as tuner
from .harness import warm_projector
from .tasks import Problem, bench_images, get_task

GUIDED = ("conjugate", "conjugate-diffusion", "pigfm", "otode")
SHOWN = {"w": "w", "tau": "τ", "lam": "λ", "gamma": "γ", "t0": "t0", "order": "order"}
SHOWN_UNLESS = {"order": 1}  # settings left out of the column at this (the usual) value
LOG_NAME = "docs/tuning/guided.json"  # named in each record's provenance
RECORD_META = ("method", "family", "task", "size", "jacobian", "nfe", "psnr_val", "noisy", "mask")
# tuning family → validation task; "ct-noisy" tunes the records CT calls with noisy data use
FAMILY_TASK = {"ct": "ct60", "ct-noisy": "ct60-1e5", "inpainting": "inpaint-box", "sr": "sr4",
               "blur": "blur"}
# tuned only when named: scattered-mask inpainting, records tagged with the mask kind
# (guidance.mask_kind) that serve scattered masks only
EXTRA_FAMILY_TASK = {"inpainting-random": "inpaint-random"}
FAMILY_MASK = {"inpainting-random": "scattered"}
# tuned variants: (label, method, jacobian, names of the two grid options)
TUNE_VARIANTS = {
    "conjugate": ("conjugate", False, ("w", "tau")),
    "conjugate+vjp": ("conjugate", True, ("w", "tau")),
    "conjugate-diffusion": ("conjugate-diffusion", False, ("w", "tau")),
    "pigfm": ("pigfm", False, ("w", "tau")),
    "otode": ("otode", False, ("gamma", "t0")),
}


def solve(problem: Problem, method: str, prior: Any, seed: int,
          **opts: Any) -> dict[str, Any] | None:
    """Reconstruct one problem; metrics on HU, or None if the method failed (e.g. diverged)."""
    from ..api import reconstruct

    try:
        res = reconstruct(problem.y.to(prior.device), problem.op, method=method, prior=prior,
                          noise_std=problem.noise_std or None, seed=seed, **opts)
    except CtflowError as exc:
        print(f"  [{method} {opts}] failed: {exc}", file=sys.stderr)
        return None
    hu = mu_to_hu(res.image[0, 0].double().cpu().numpy())
    if not np.isfinite(hu).all():
        return None
    out: dict[str, Any] = evaluate_image(hu, problem.gt_hu)
    params = res.info.get("params", {})
    out.update(seconds=res.seconds, nfe=res.nfe,
               setting=" ".join(f"{SHOWN[k]}={params[k]:g}" for k in SHOWN
                                if params.get(k) is not None
                                and params[k] != SHOWN_UNLESS.get(k)))
    return out


@dataclass(frozen=True)
class GuidedBench:
    """What a benchmark run of the guided samplers reconstructs (scripts/bench_conjugate.py)."""

    size: int = 64
    images: int = 4
    split: str = "test"
    data: str = "phantoms"  # or "realct": real patients' slices (ctflow.realct)
    seed: int = 0
    methods: Sequence[str] = (*GUIDED, "fbp", "tv")
    conj_nfe: Sequence[int] = (5, 10, 20)
    vjp_nfe: Sequence[int] = (5, 10, 20)
    base_nfe: Sequence[int] = (5, 10, 20, 50, 100)


def runs(task_name: str, bench: GuidedBench) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, options) of every reconstruction of one task."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for method in GUIDED:
        if method not in bench.methods:
            continue
        budgets = bench.conj_nfe if method.startswith("conjugate") else bench.base_nfe
        out += [(method, method, {"nfe": k, "jacobian": False}) for k in budgets]
        if method == "conjugate":
            out += [("conjugate+vjp", method, {"nfe": k, "jacobian": True})
                    for k in bench.vjp_nfe]
    if get_task(task_name).family == "ct":
        out += [(m, m, {}) for m in ("fbp", "tv") if m in bench.methods]
    return out


def bench_task(task_name: str, bench: GuidedBench, prior: Any) -> list[dict[str, Any]]:
    """All rows of one task."""
    rows = []
    images = bench_images(bench.size, bench.images, bench.split, bench.data)
    task = get_task(task_name)
    problems = [task.problem(img, seed=i) for i, img in enumerate(images)]
    for p in problems:  # build (or load) each exact projector before anything is timed
        warm_projector(p.op, prior.device)
    if prior.device.type == "cuda":  # CUDA start-up and kernel selection are not timed
        solve(problems[0], "conjugate", prior, bench.seed, nfe=2)
    for label, method, opts in runs(task_name, bench):
        scores = [solve(p, method, prior, bench.seed, **opts) for p in problems]
        row = {"task": task_name, "size": bench.size, "method": label,
               "nfe_budget": opts.get("nfe", 0), "images": len(scores)}
        ok = [s for s in scores if s is not None]
        if len(ok) < len(scores):
            row.update(psnr=float("nan"), psnr_std=float("nan"), ssim=float("nan"),
                       rmse_hu=float("nan"), seconds=float("nan"),
                       nfe=float(opts.get("nfe", 0)), setting="diverged")
        else:
            for key in ("psnr", "ssim", "rmse_hu", "seconds", "nfe"):
                row[key] = float(np.mean([s[key] for s in ok]))
            row["psnr_std"] = float(np.std([s["psnr"] for s in ok]))
            row["setting"] = ok[0]["setting"]
        row["psnr_images"] = " ".join(f"{s['psnr']:.4f}" for s in ok)
        rows.append(row)
        print(f"  {task_name:15s} {label:20s} nfe={row['nfe']:5.1f} "
              f"psnr={row['psnr']:6.2f} ssim={row['ssim']:.3f} s={row['seconds']:.2f} "
              f"{row['setting']}", file=sys.stderr, flush=True)
    return rows


@dataclass(frozen=True)
class GuidedTuning:
    """What a tuning run of the guided samplers searches (module docstring).  ``grids``:
    the values tried per option (w, tau, gamma, t0, rho_scale, lam, order); ``ct_task`` /
    ``ct_noisy_task``: the validation task(s) of the CT records, comma-separated (scores
    averaged); ``out``: the tuning result is rewritten there after each finished block."""

    size: int
    images: int
    prior: str
    command: str
    grids: Mapping[str, Sequence[float]]
    data: str = "phantoms"
    seed: int = 0
    families: Sequence[str] = tuple(FAMILY_TASK)
    variants: Sequence[str] = tuple(TUNE_VARIANTS)
    nfe: Sequence[int] = (5, 20)
    base_nfe: Sequence[int] = (5, 20, 100)
    ct_task: str = FAMILY_TASK["ct"]
    ct_noisy_task: str = FAMILY_TASK["ct-noisy"]
    out: str | None = None


@dataclass
class _Progress:
    """A tuning run's chosen settings and grid scores so far."""

    chosen: list[dict[str, Any]] = field(default_factory=list)
    grid: list[dict[str, Any]] = field(default_factory=list)


def _grid_names(label: str, noisy: bool,
                grids: Mapping[str, Sequence[float]]) -> tuple[str, bool, tuple[str, ...]]:
    """(method, jacobian, names of the options searched) of a tuned variant."""
    method, jac, pair = TUNE_VARIANTS[label]
    names: tuple[str, ...] = pair
    if noisy:  # the noise weight κ of guidance.GuidanceTarget is tuned too
        names = (*names, "rho_scale")
    if method.startswith("conjugate"):  # λ of the conjugate map
        names = (*names, "lam")
        if list(grids["order"]) != [1]:  # order 2: multistep
            names = (*names, "order")
    if list(grids.get("temperature", [1.0])) != [1.0]:  # the start's noise scale T
        names = (*names, "temperature")
    return method, jac, names


def tune(run: GuidedTuning, prior: Any, images: list[np.ndarray]) -> dict[str, Any]:
    """Grid search on the validation ``images``; all scores and the best setting per
    (variant, family, NFE).  A diverged setting scores −inf."""
    tasks = {**FAMILY_TASK, **EXTRA_FAMILY_TASK, "ct": run.ct_task,
             "ct-noisy": run.ct_noisy_task}
    done = _Progress()
    for family in run.families:
        names_ = str(tasks[family]).split(",")  # several tasks: scores averaged over all
        family_tasks = [get_task(n) for n in names_]
        problems = [t.problem(img, seed=i) for t in family_tasks
                    for i, img in enumerate(images)]
        for label in run.variants:
            _tune_variant(run, prior, label, family, ",".join(names_), problems, done)
    return tuning_result(run, done)


def _tune_variant(run: GuidedTuning, prior: Any, label: str, family: str, task_name: str,
                  problems: list[Problem], done: _Progress) -> None:
    """Tune one variant on one family at each budget; appends to ``done``."""
    task = get_task(task_name.split(",")[0])
    mask, noisy = FAMILY_MASK.get(family), task.noisy
    method, jac, names = _grid_names(label, noisy, run.grids)
    budgets = run.nfe if method.startswith("conjugate") else run.base_nfe
    for nfe in budgets:
        def one(p: Problem, opts: dict[str, Any], nfe: int = nfe) -> dict[str, Any] | None:
            return solve(p, method, prior, run.seed, nfe=nfe, jacobian=jac, **opts)

        def report(trial: tuner.Trial, nfe: int = nfe) -> None:
            score = trial.scores["psnr"]
            done.grid.append({"variant": label, "family": task.family, "task": task_name,
                                 "size": run.size, "noisy": noisy,
                                 **({"mask": mask} if mask else {}), "nfe": nfe,
                                 **trial.options, "psnr_val": round(score, 3)})
            print(f"  tune {label} {family} nfe={nfe} {trial.options}: {score:.2f}",
                  file=sys.stderr, flush=True)

        points = tuner.grid_points({n: run.grids[n] for n in names})
        trials = tuner.evaluate(points, problems, one, report=report)
        best = tuner.pick_best(trials, lambda t: t.scores["psnr"])
        done.chosen.append({"method": method, "family": task.family, "task": task_name,
                           "size": run.size, "jacobian": jac, "nfe": nfe, **best.options,
                           "psnr_val": round(best.scores["psnr"], 3),
                           **({"noisy": True} if noisy else {}),
                           **({"mask": mask} if mask else {})})
        if run.out:  # each finished (variant, family, NFE) block is kept
            save_tuning(run, done)


def tuning_result(run: GuidedTuning, done: _Progress) -> dict[str, Any]:
    """The tuning result so far: command, prior, images, grids, chosen settings, grid log."""
    source = "realct.validation_images" if run.data == "realct" else "heldout_images"
    return {"command": run.command, "prior": run.prior,
            "images": f"{source}({run.size}, {run.images}, split='val')",
            "grids": {n: list(v) for n, v in run.grids.items()}, "chosen": done.chosen,
            "grid": done.grid}


def save_tuning(run: GuidedTuning, done: _Progress) -> None:
    """Write the tuning result so far to ``run.out`` (temp file + rename)."""
    assert run.out is not None
    with atomic_file(run.out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(tuning_result(run, done), indent=1, ensure_ascii=False) + "\n",
                       encoding="utf-8")


def preset_record(rec: dict[str, Any], command: str, prior: str) -> dict[str, Any]:
    """A chosen setting of a tuning result as a presets record (ctflow.priors.presets)."""
    return {"family": rec["family"], "size": int(rec.get("size", 64)),
            "noisy": bool(rec.get("noisy", False)), "mask": rec.get("mask"),
            "nfe": int(rec["nfe"]), "requires": {"jacobian": bool(rec["jacobian"])},
            "options": {k: v for k, v in rec.items() if k not in RECORD_META},
            "tuned": {"prior": prior, "task": rec.get("task"), "psnr_val": rec["psnr_val"],
                      "command": command, "log": LOG_NAME}}


def write_defaults(files: Sequence[str | Path], log_path: Path,
                   stem: str | Path | None = None) -> None:
    """Merge tune-result files into the presets of the prior each was tuned with (or of the
    checkpoint ``stem``; records replaced per selection key, each naming the run that chose
    it) and their grids into the tuning log (a run of the same command replaces the older
    one)."""
    for name in files:
        result = json.loads(Path(name).read_text(encoding="utf-8"))
        by_method: dict[str, list[dict[str, Any]]] = {}
        for rec in result["chosen"]:
            by_method.setdefault(rec["method"], []).append(
                preset_record(rec, result["command"], result["prior"]))

        def update(log: dict[str, Any], result: dict[str, Any] = result) -> dict[str, Any]:
            runs = log.setdefault("runs", [])
            runs[:] = [m for m in runs if m["command"] != result["command"]]
            runs.append({k: result[k] for k in ("command", "prior", "images", "grids", "grid")})
            return log

        def records(_old: Any, by_method: tuner.Records = by_method) -> tuner.Records:
            return by_method

        tuner.store(stem or resolve_prior(result["prior"]), result["prior"], records,
                    log_path, update)
