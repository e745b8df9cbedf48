"""Tune the defaults of the flow baselines (PnP-Flow, FlowDPS, DPS, Flower) per task family.

For each task family it simulates its representative tasks (ct → ct30 and ct60, so that
a setting must hold from sparse to moderate view counts; inpainting → inpaint-box, sr →
sr4, blur → blur; ct-noisy → ct60-1e5, whose setting serves CT calls with a noise level)
on a few *validation* phantoms (``heldout_images(...,
split="val")``, never the test split), reconstructs them with every setting of a small grid
at the method's NFE budget, scores the mean PSNR in HU (over the family's tasks and
images) and writes the best setting per family as records of the tuned prior's presets
(``NAME.presets.json`` beside its weights, ctflow.priors.presets; ct-noisy as the CT record
for noisy data), and the command, the images, the grid and the PSNR of every setting to
docs/tuning/baselines.json.  The generic defaults stay the methods' own (in their modules).

    python scripts/tune_baselines.py --prior default --images 3
    python scripts/tune_baselines.py --methods dps flower --families ct   # merge a subset
    python scripts/tune_baselines.py --dry-run                            # print, write nothing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ctflow
from ctflow.io.atomic import atomic_file
from ctflow.metrics import psnr
from ctflow.priors.base import Prior
from ctflow.priors.presets import FAMILIES, merge_records
from ctflow.priors.registry import resolve as resolve_prior
from ctflow.solvers.defaults import METHODS
from ctflow.tasks import get_task, heldout_images
from ctflow.units import mu_to_hu

# tuning family → validation tasks; "ct-noisy" is the setting CT calls with noisy data use.
# CT is scored on 30 and 60 views: tuned on ct60 alone, Flower's widest ν (4) won there and
# broke down on 15 and 30 views (18 dB on the test split).
FAMILY_TASKS = {"ct": ["ct30", "ct60"], "ct-noisy": ["ct60-1e5"], "inpainting": ["inpaint-box"],
                "sr": ["sr4"], "blur": ["blur"]}
TUNING_FAMILIES = (*FAMILIES, "ct-noisy")
TUNING_LOG = Path(__file__).resolve().parents[1] / "docs" / "tuning" / "baselines.json"

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


def family_problems(family: str, size: int, count: int
                    ) -> list[tuple[Any, torch.Tensor, list, float]]:
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


def score(method: str, setting: dict[str, Any], op, y: torch.Tensor, gts: list,
          sigma: float, prior: Prior) -> float:
    """Mean PSNR (HU) of one setting over the batch of validation images."""
    res = ctflow.reconstruct(y, op, method=method, prior=prior, noise_std=sigma or None,
                             seed=0, nfe=BUDGET[method], task_family=None, **setting)
    hu = mu_to_hu(res.image.detach().cpu().double().numpy()[:, 0])
    return float(np.mean([psnr(h, g) for h, g in zip(hu, gts, strict=True)]))


def tune(prior: Prior, size: int, count: int, methods: list[str],
         families: list[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """PSNR of every grid setting: results[method][family] = [{options, psnr}, ...]."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in methods}
    for family in families:
        problems = family_problems(family, size, count)
        for method in methods:
            rows = []
            for setting in GRIDS[method]:
                start = time.perf_counter()
                value = float(np.mean([score(method, setting, op, y, gts, sigma, prior)
                                       for op, y, gts, sigma in problems]))
                rows.append({"options": {"nfe": BUDGET[method], **setting},
                             "psnr": round(value, 3)})
                print(f"{family:10s} {method:8s} {setting} psnr={value:.2f} "
                      f"({time.perf_counter() - start:.1f} s)", flush=True)
            results[method][family] = rows
    return results


def best_per_family(rows_by_family: dict[str, list[dict[str, Any]]]) -> dict[str, dict]:
    """The best-scoring options of each tuning family."""
    return {f: max(rows, key=lambda r: r["psnr"])["options"] for f, rows in rows_by_family.items()}


def preset_records(best: dict[str, dict], size: int, prior: str, command: str
                   ) -> list[dict[str, Any]]:
    """Presets records of one method: a tuning family "F-noisy" is family F on noisy data."""
    return [{"family": f.removesuffix("-noisy"), "size": size, "noisy": f.endswith("-noisy"),
             "options": options,
             "tuned": {"prior": prior, "command": command, "log": "docs/tuning/baselines.json"}}
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", default="default",
                        help="prior name or path (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64,
                        help="image size in pixels of the validation phantoms "
                             "(default: %(default)s)")
    parser.add_argument("--images", type=int, default=3,
                        help="validation images per task of a family (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="baselines tuned (default: %(default)s)")
    parser.add_argument("--families", nargs="+", default=list(TUNING_FAMILIES),
                        choices=TUNING_FAMILIES,
                        help="families tuned; ct-noisy: ct60-1e5, the defaults of CT calls "
                             "with noisy data (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the merged defaults only, write nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = ctflow.load_prior(args.prior)
    start = time.perf_counter()
    results = tune(prior, args.size, args.images, args.methods, args.families)
    print(f"tuning took {time.perf_counter() - start:.0f} s")
    command = "python scripts/tune_baselines.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--dry-run")
    records = {m: preset_records(best_per_family(by_family), args.size, args.prior,
                                 command.strip())
               for m, by_family in results.items() if by_family}
    if args.dry_run:
        print(json.dumps(records, indent=1))
        return 0
    stem = resolve_prior(args.prior)
    for method, recs in records.items():
        merge_records(stem, args.prior, method, recs)
    old = json.loads(TUNING_LOG.read_text(encoding="utf-8")) if TUNING_LOG.is_file() else {}
    log = merged_log(old, results, command.strip(), args.prior, args.size, args.images)
    with atomic_file(TUNING_LOG, overwrite=True) as tmp:
        tmp.write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
    print(f"wrote the presets of {args.prior} and {TUNING_LOG.name}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
