"""Tune mode of scripts/bench_conjugate.py (its docstring describes the grids): the grid
search of each guided sampler on the validation split, the tuning result written to
``--tune-out``, and ``--write-defaults``, which merges tuning results into the presets of
the prior they were tuned with and their grids into docs/tuning/guided.json.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_conjugate_report import TUNING_LOG, command_line

from ctflow.io.atomic import atomic_file
from ctflow.priors.presets import merge_records
from ctflow.priors.registry import resolve as resolve_prior
from ctflow.tasks import get_task

Solve = Callable[..., "dict[str, Any] | None"]
RECORD_META = ("method", "family", "task", "size", "jacobian", "nfe", "psnr_val", "noisy", "mask")
# tuning family → validation task; "ct-noisy" tunes the records CT calls with noisy data use
FAMILY_TASK = {"ct": "ct60", "ct-noisy": "ct60-1e5", "inpainting": "inpaint-box", "sr": "sr4",
               "blur": "blur"}
# tuned only when named (--tune-families): scattered-mask inpainting, records tagged with
# the mask kind (guidance.mask_kind) that serve scattered masks only
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


def tune(args, prior, images: list[np.ndarray], solve: Solve) -> dict[str, Any]:
    """Grid search on the validation ``images``; all scores and the best setting per
    (variant, family, NFE).  ``solve`` scores one reconstruction (None: it failed); a
    diverged setting scores −inf."""
    grids = {"w": args.tune_w, "tau": args.tune_tau, "gamma": args.tune_gamma,
             "t0": args.tune_t0, "rho_scale": args.tune_rho_scale, "lam": args.tune_lam,
             "order": args.tune_order}
    grid_log: list[dict[str, Any]] = []
    chosen: list[dict[str, Any]] = []
    for family in args.tune_families:
        tasks = {**FAMILY_TASK, **EXTRA_FAMILY_TASK, "ct": args.tune_ct_task,
                 "ct-noisy": args.tune_ct_noisy_task}
        names_ = str(tasks[family]).split(",")  # several tasks: scores averaged over all
        family_tasks = [get_task(n) for n in names_]
        task = family_tasks[0]
        task_name = ",".join(names_)
        mask = FAMILY_MASK.get(family)
        problems = [t.problem(img, seed=i) for t in family_tasks
                    for i, img in enumerate(images)]
        noisy = task.noisy
        for label in args.tune_methods:
            method, jac, names = TUNE_VARIANTS[label]
            if noisy:  # the noise weight κ of guidance.GuidanceTarget is tuned too
                names = (*names, "rho_scale")
            if method.startswith("conjugate"):  # λ of the conjugate map (--tune-lam)
                names = (*names, "lam")
                if args.tune_order != [1]:  # order 2: multistep (--tune-order)
                    names = (*names, "order")
            budgets = args.tune_nfe if method.startswith("conjugate") else args.tune_base_nfe
            for nfe in budgets:
                best: tuple[float, dict[str, float]] | None = None
                for values in itertools.product(*(grids[n] for n in names)):
                    opts = dict(zip(names, values, strict=True))
                    vals = [solve(p, method, prior, args.seed, nfe=nfe, jacobian=jac, **opts)
                            for p in problems]
                    score = (float(np.mean([v["psnr"] for v in vals]))
                             if all(v is not None for v in vals) else float("-inf"))
                    grid_log.append({"variant": label, "family": task.family,
                                     "task": task_name, "size": args.size, "noisy": noisy,
                                     **({"mask": mask} if mask else {}),
                                     "nfe": nfe, **opts,
                                     "psnr_val": round(score, 3)})
                    print(f"  tune {label} {family} nfe={nfe} {opts}: {score:.2f}",
                          file=sys.stderr, flush=True)
                    if best is None or score > best[0]:
                        best = (score, opts)
                assert best is not None
                chosen.append({"method": method, "family": task.family, "task": task_name,
                               "size": args.size,
                               "jacobian": jac, "nfe": nfe, **best[1],
                               "psnr_val": round(best[0], 3),
                               **({"noisy": True} if noisy else {}),
                               **({"mask": mask} if mask else {})})
                if args.tune_out:  # each finished (variant, family, NFE) block is kept
                    save_tuning(args, grids, chosen, grid_log)
    return tuning_result(args, grids, chosen, grid_log)


def tuning_result(args, grids: dict[str, list], chosen: list[dict[str, Any]],
                  grid_log: list[dict[str, Any]]) -> dict[str, Any]:
    return {"command": command_line(), "prior": args.prior,
            "images": (f"realct.validation_images({args.size}, {args.images}, split='val')"
                       if args.data == "realct"
                       else f"heldout_images({args.size}, {args.images}, split='val')"),
            "grids": {n: grids[n] for n in grids}, "chosen": chosen, "grid": grid_log}


def save_tuning(args, grids: dict[str, list], chosen: list[dict[str, Any]],
                grid_log: list[dict[str, Any]]) -> None:
    """Write the tuning result so far to --tune-out (temp file + rename)."""
    with atomic_file(args.tune_out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(tuning_result(args, grids, chosen, grid_log), indent=1,
                                  ensure_ascii=False) + "\n", encoding="utf-8")


def preset_record(rec: dict[str, Any], command: str, prior: str) -> dict[str, Any]:
    """A chosen setting of a tuning result as a presets record (ctflow.priors.presets)."""
    return {"family": rec["family"], "size": int(rec.get("size", 64)),
            "noisy": bool(rec.get("noisy", False)), "mask": rec.get("mask"),
            "nfe": int(rec["nfe"]), "requires": {"jacobian": bool(rec["jacobian"])},
            "options": {k: v for k, v in rec.items() if k not in RECORD_META},
            "tuned": {"prior": prior, "task": rec.get("task"), "psnr_val": rec["psnr_val"],
                      "command": command, "log": "docs/tuning/guided.json"}}


def write_defaults(files: list[str], stem: str | None = None,
                   log_path: Path = TUNING_LOG) -> None:
    """Merge tune-result files into the presets of the prior each was tuned with (records
    replaced per selection key, each naming the run that chose it) and append their grids
    to the tuning log (a run of the same command replaces the older one; atomic writes)."""
    log = json.loads(log_path.read_text(encoding="utf-8")) if log_path.is_file() else {}
    runs = log.setdefault("runs", [])
    for name in files:
        result = json.loads(Path(name).read_text(encoding="utf-8"))
        target = stem or resolve_prior(result["prior"])
        by_method: dict[str, list[dict[str, Any]]] = {}
        for rec in result["chosen"]:
            by_method.setdefault(rec["method"], []).append(
                preset_record(rec, result["command"], result["prior"]))
        for method, records in by_method.items():
            merge_records(target, result["prior"], method, records)
        runs[:] = [m for m in runs if m["command"] != result["command"]]
        runs.append({k: result[k] for k in ("command", "prior", "images", "grids", "grid")})
    with atomic_file(log_path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(log, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
