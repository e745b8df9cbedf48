"""Tuning the flow baselines (PnP-Flow, FlowDPS, DPS, Flower) per task family
(scripts/tune_baselines.py).

For each tuning family it simulates the family's validation tasks (:data:`FAMILY_TASKS`:
ct → ct30 and ct60, so that a setting must hold from sparse to moderate view counts;
ct-noisy → ct60-1e5, whose setting serves CT calls with a noise level) on the first few
*validation* phantoms, reconstructs them (all images in one batch, seed 0) with every
setting of the method's grid (:data:`GRIDS`) at its NFE budget (:data:`BUDGET`), scores the
mean PSNR in HU over the family's tasks and images (rounded to 1e-3 dB), and keeps the best
setting per family (the earliest on a tie) through :mod:`ctflow.bench.tune`.  The chosen
settings become records of the tuned prior's presets, the grid scores go to the tuning log
(docs/tuning/baselines.json).  The generic defaults stay the methods' own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..metrics import psnr
from ..priors.base import Prior
from ..priors.presets import FAMILIES
from ..priors.registry import resolve as resolve_prior
from ..units import mu_to_hu
from . import tune as tuner
from .tasks import get_task, heldout_images

LOG_NAME = "docs/tuning/baselines.json"  # named in each record's provenance
# tuning family → validation tasks; "ct-noisy" is the setting CT calls with noisy data use.
# CT is scored on 30 and 60 views: tuned on ct60 alone, Flower's widest ν (4) won there and
# broke down on 15 and 30 views (18 dB on the test split).
FAMILY_TASKS = {"ct": ["ct30", "ct60"], "ct-noisy": ["ct60-1e5"], "inpainting": ["inpaint-box"],
                "sr": ["sr4"], "blur": ["blur"]}
TUNING_FAMILIES = (*FAMILIES, "ct-noisy")

# NFE budgets (network forwards + VJPs per image) and the grids searched within them.
# Every setting is complete, so the result never depends on the defaults being rewritten.
BUDGET = {"pnpflow": 20, "flowdps": 20, "dps": 40, "flower": 20}
GRIDS: dict[str, list[dict[str, Any]]] = {
    "pnpflow": [{"samples": 2, "gamma": g, "alpha": a}
                for g, a in ((1.0, 0.5), (1.9, 0.5), (1.0, 0.0), (1.9, 0.0))],
    "flowdps": [{"dc_steps": d, "eta": e} for d, e in ((1, 1.0), (3, 1.9), (10, 1.9), (30, 1.9))],
    "dps": [{"zeta": z} for z in (10.0, 30.0, 100.0, 300.0)],
    "flower": [{"nu_scale": s, "cg_iters": 20} for s in (0.5, 1.0, 2.0, 4.0)],
}

FamilyProblem = tuple[Any, torch.Tensor, list, float]


def family_problems(family: str, size: int, count: int) -> list[FamilyProblem]:
    """Per task of the family: (operator, stacked measurements (count, 1, ...), HU ground
    truths, noise std) on the first ``count`` validation phantoms."""
    images = heldout_images(size, count, split="val")
    out = []
    for name in FAMILY_TASKS[family]:
        task = get_task(name)
        problems = [task.problem(img, seed=i) for i, img in enumerate(images)]
        y = torch.cat([p.y for p in problems])
        sigma = max(p.noise_std for p in problems)
        out.append((problems[0].op, y, [p.gt_hu for p in problems], sigma))
    return out


def score(method: str, setting: dict[str, Any], op: Any, y: torch.Tensor, gts: list,
          sigma: float, prior: Prior) -> float:
    """Mean PSNR (HU) of one setting over the batch of validation images."""
    from ..api import reconstruct

    res = reconstruct(y, op, method=method, prior=prior, noise_std=sigma or None,
                      seed=0, nfe=BUDGET[method], task_family=None, **setting)
    hu = mu_to_hu(res.image.detach().cpu().double().numpy()[:, 0])
    return float(np.mean([psnr(h, g) for h, g in zip(hu, gts, strict=True)]))


def tune(prior: Prior, size: int, count: int, methods: Sequence[str], families: Sequence[str],
         report: Callable[[str, str, tuner.Trial], None] | None = None
         ) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """PSNR of every grid setting: results[method][family] = [{options, psnr}, ...];
    ``report(family, method, trial)`` sees each setting when it is scored."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in methods}
    for family in families:
        problems = family_problems(family, size, count)
        for method in methods:
            def solve(p: FamilyProblem, setting: dict[str, Any],
                      method: str = method) -> dict[str, float]:
                return {"psnr": score(method, setting, *p, prior)}

            def seen(trial: tuner.Trial, family: str = family, method: str = method) -> None:
                if report is not None:
                    report(family, method, trial)

            trials = tuner.evaluate(GRIDS[method], problems, solve, report=seen)
            results[method][family] = [{"options": {"nfe": BUDGET[method], **t.options},
                                        "psnr": round(t.scores["psnr"], 3)} for t in trials]
    return results


def best_per_family(rows_by_family: dict[str, list[dict[str, Any]]]) -> dict[str, dict]:
    """The best-scoring options of each tuning family (the earliest on a tie)."""
    return {f: tuner.pick_best(rows, lambda r: r["psnr"])["options"]
            for f, rows in rows_by_family.items()}


def preset_records(best: dict[str, dict], size: int, prior: str, command: str
                   ) -> list[dict[str, Any]]:
    """Presets records of one method: a tuning family "F-noisy" is family F on noisy data."""
    return [{"family": f.removesuffix("-noisy"), "size": size, "noisy": f.endswith("-noisy"),
             "options": options,
             "tuned": {"prior": prior, "command": command, "log": LOG_NAME}}
            for f, options in best.items()]


def merged_log(old: dict[str, Any], results: dict, command: str, prior_name: str,
               size: int, count: int) -> dict[str, Any]:
    """The tuning log with this run's grid scores merged in (per method and family)."""
    log = json.loads(json.dumps(old))
    tuning = log.setdefault("tuning", {})
    commands = tuning.get("commands", [])
    tuning.update({
        "commands": [*[c for c in commands if c != command], command],
        "prior": prior_name, "image_size": size, "split": "val",
        "images": f"heldout_images({size}, {count}, split='val'), indices 0..{count - 1}",
        "tasks": FAMILY_TASKS, "metric": "mean PSNR in HU, data_range = gt range",
        "budget_nfe": BUDGET, "grid": GRIDS,
    })
    psnr_table = tuning.setdefault("psnr", {})
    for method, by_family in results.items():
        psnr_table.setdefault(method, {}).update(by_family)
    return log


def chosen_records(results: dict[str, dict[str, list[dict[str, Any]]]], size: int,
                   prior: str, command: str) -> dict[str, list[dict[str, Any]]]:
    """The presets records of a tuning run, per method: its best setting per family."""
    return {m: preset_records(best_per_family(by_family), size, prior, command)
            for m, by_family in results.items() if by_family}


def store(results: dict[str, dict[str, list[dict[str, Any]]]], prior: str, size: int,
          count: int, command: str, log_path: Path) -> None:
    """Merge a tuning run into the presets of ``prior`` and into the tuning log."""
    records = chosen_records(results, size, prior, command)
    tuner.store(resolve_prior(prior), prior, lambda _old: records, log_path,
                lambda old: merged_log(old, results, command, prior, size, count))
