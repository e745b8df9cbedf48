"""Benchmark C-ΠGFM / C-ΠGDM against the Euler baselines ΠGFM / OT-ODE (and FBP / TV on CT).

Benchmark mode: for each task (``ctflow.tasks``) and held-out phantom (DESIGN §5, split
``test`` by default; image i's noise is seeded with i) it reconstructs with

* ``conjugate`` (J_x̂1 ≈ I) and ``conjugate-diffusion`` at NFE 5, 10, 20 (``--conj-nfe``),
* ``conjugate+vjp`` (jacobian=True: forward + VJP per step) at ``--vjp-nfe``,
* ``pigfm`` and ``otode`` at NFE 5, 10, 20, 50, 100 (``--base-nfe``),
* ``fbp`` and ``tv`` on CT tasks,

every guided sampler at its *own* validation-tuned defaults (the prior's presets), and
prints one Markdown table per task (mean PSNR / SSIM / RMSE in HU, s/image, NFE/image and the
setting used), the issue's targets and all rows as CSV; ``--out`` writes the same Markdown,
headed by the exact command, to a file.  Every row keeps its per-image PSNR, so each target
is a paired difference d_i = a_i − b_i over the same images: mean ± std(d, ddof=1)/√n and
the number of images ahead; a headroom line per task gives the best guided row at any
budget minus ΠGFM at 5 NFE (what any sampler gains there).

    python scripts/bench_conjugate.py --size 64 --images 16 --out docs/bench_conjugate_64.md

Tune mode (``--tune``) grid-searches each guided sampler on the *validation* split only
(``heldout_images(size, n, split="val")``), one task per family (ct60, inpaint-box, sr4,
blur; ``ct-noisy`` = ct60-1e5, whose records serve CT calls with noisy data and whose grid
adds the noise weight κ = rho_scale), at the image size ``--size`` (records tuned at a
size other than 64 carry it, and calls use the records of the size nearest to theirs), at
each budget of ``--tune-nfe`` (conjugate
samplers) / ``--tune-base-nfe`` (Euler baselines).  Every method gets a grid of the same
size: (w, τ) for conjugate, conjugate+vjp, conjugate-diffusion and pigfm, (γ, t0) for
otode; where ``--tune-lam`` gives the conjugate samplers a λ axis, the recorded commands
give the Euler baselines as many more τ / t0 values.  ``--tune-order 1 2`` adds the
integrator order (1 = as derived, 2 = multistep) as one more conjugate axis; it is a
property of the integrator, not a guidance setting, so the baselines get no counterpart.
The family ``inpainting-random`` (inpaint-random, tuned only when named) gives records
tagged ``"mask": "scattered"``, which serve scattered masks (``context.mask_kind``) only.
All grid scores and the best setting per (method, jacobian, family, noisy, mask kind, NFE)
go to ``--tune-out``;
``--write-defaults A.json B.json …`` merges such files into the presets of the prior they
were tuned with (``NAME.presets.json`` beside its weights; ``--presets STEM`` for another
checkpoint) and their grid logs into docs/tuning/guided.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import platform
import re
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ctflow
import ctflow.priors
from ctflow.bench import warm_projector
from ctflow.errors import CtflowError
from ctflow.io.atomic import atomic_file
from ctflow.metrics import evaluate
from ctflow.priors.presets import merge_records
from ctflow.priors.registry import resolve as resolve_prior
from ctflow.tasks import get_task, heldout_images
from ctflow.units import mu_to_hu

GUIDED = ("conjugate", "conjugate-diffusion", "pigfm", "otode")
TUNING_LOG = Path(__file__).resolve().parents[1] / "docs" / "tuning" / "guided.json"
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
SHOWN = {"w": "w", "tau": "τ", "lam": "λ", "gamma": "γ", "t0": "t0", "order": "order"}
SHOWN_UNLESS = {"order": 1}  # settings left out of the column at this (the usual) value


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


def solve(problem, method: str, prior, seed: int, **opts: Any) -> dict[str, Any] | None:
    """Reconstruct one problem; metrics on HU, or None if the method failed (e.g. diverged)."""
    try:
        res = ctflow.reconstruct(problem.y.to(prior.device), problem.op, method=method,
                                 prior=prior,
                                 noise_std=problem.noise_std or None, seed=seed, **opts)
    except CtflowError as exc:
        print(f"  [{method} {opts}] failed: {exc}", file=sys.stderr)
        return None
    hu = mu_to_hu(res.image[0, 0].double().cpu().numpy())
    if not np.isfinite(hu).all():
        return None
    out: dict[str, Any] = evaluate(hu, problem.gt_hu)
    params = res.info.get("params", {})
    out.update(seconds=res.seconds, nfe=res.nfe,
               setting=" ".join(f"{SHOWN[k]}={params[k]:g}" for k in SHOWN
                                if params.get(k) is not None
                                and params[k] != SHOWN_UNLESS.get(k)))
    return out


# -- benchmark ---------------------------------------------------------------------------
def runs(task_name: str, args) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, options) of every reconstruction of one task."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for method in GUIDED:
        if method not in args.methods:
            continue
        budgets = args.conj_nfe if method.startswith("conjugate") else args.base_nfe
        out += [(method, method, {"nfe": k, "jacobian": False}) for k in budgets]
        if method == "conjugate":
            out += [("conjugate+vjp", method, {"nfe": k, "jacobian": True})
                    for k in args.vjp_nfe]
    if get_task(task_name).family == "ct":
        out += [(m, m, {}) for m in ("fbp", "tv") if m in args.methods]
    return out


def test_images(args, split: str) -> list[np.ndarray]:
    """The HU images of a run: held-out phantoms, or with --data realct real patients' slices
    (patient-level split; the phantom split "test" means the real "val" patients)."""
    if args.data == "realct":
        from ctflow.realct import validation_images

        return [im.astype(np.float64) for im in validation_images(
            args.size, args.images, "val" if split == "test" else split)]
    return heldout_images(args.size, args.images, split=split)


def bench_task(task_name: str, args, prior) -> list[dict[str, Any]]:
    """All rows of one task."""
    rows = []
    images = test_images(args, args.split)
    task = get_task(task_name)
    problems = [task.problem(img, seed=i) for i, img in enumerate(images)]
    for p in problems:  # build (or load) each exact projector before anything is timed
        warm_projector(p.op, prior.device)
    if prior.device.type == "cuda":  # CUDA start-up and kernel selection are not timed
        solve(problems[0], "conjugate", prior, args.seed, nfe=2)
    for label, method, opts in runs(task_name, args):
        scores = [solve(p, method, prior, args.seed, **opts) for p in problems]
        row = {"task": task_name, "size": args.size, "method": label,
               "nfe_budget": opts.get("nfe", 0), "images": len(scores)}
        if any(s is None for s in scores):
            row.update(psnr=float("nan"), psnr_std=float("nan"), ssim=float("nan"),
                       rmse_hu=float("nan"), seconds=float("nan"),
                       nfe=float(opts.get("nfe", 0)), setting="diverged")
        else:
            for key in ("psnr", "ssim", "rmse_hu", "seconds", "nfe"):
                row[key] = float(np.mean([s[key] for s in scores]))
            row["psnr_std"] = float(np.std([s["psnr"] for s in scores]))
            row["setting"] = scores[0]["setting"]
        row["psnr_images"] = " ".join(f"{s['psnr']:.4f}" for s in scores if s is not None)
        rows.append(row)
        print(f"  {task_name:15s} {label:20s} nfe={row['nfe']:5.1f} "
              f"psnr={row['psnr']:6.2f} ssim={row['ssim']:.3f} s={row['seconds']:.2f} "
              f"{row['setting']}", file=sys.stderr, flush=True)
    return rows


_WORKER_PRIOR: Any = None


def _worker_init(args) -> None:
    global _WORKER_PRIOR
    torch.set_num_threads(args.threads)
    _WORKER_PRIOR = load(args)


def _worker_task(task_name: str, args) -> list[dict[str, Any]]:
    return bench_task(task_name, args, _WORKER_PRIOR)


def bench(args, prior) -> list[dict[str, Any]]:
    """All rows, task by task; with ``--workers`` > 1 tasks run in parallel processes."""
    if args.workers <= 1:
        return [r for name in args.tasks for r in bench_task(name, args, prior)]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.workers, initializer=_worker_init, initargs=(args,)) as pool:
        parts = list(pool.map(_worker_task, args.tasks, [args] * len(args.tasks)))
    return [r for part in parts for r in part]


def load(args):
    """The prior named by --prior ('gaussian-fit': the fitted smoke-test prior)."""
    if args.prior == "gaussian-fit":
        if args.device != "cpu":
            raise SystemExit("bench_conjugate: --prior gaussian-fit runs on the CPU only")
        return fitted_gaussian_prior(args.size)
    return ctflow.load_prior(args.prior.replace("{size}", str(args.size)), device=args.device)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        first = next(r for r in rows if r["task"] == task)
        lines += [f"\n### {task} — {get_task(task).description} "
                  f"({first['size']}², {first['images']} test images)\n",
                  "| method | NFE | PSNR (dB) | SSIM | RMSE (HU) | s/image | setting |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for r in (r for r in rows if r["task"] == task):
            lines.append(f"| {r['method']} | {r['nfe']:.0f} | {r['psnr']:.2f} ± "
                         f"{r['psnr_std']:.2f} | {r['ssim']:.3f} | {r['rmse_hu']:.1f} | "
                         f"{r['seconds']:.2f} | {r['setting']} |")
    return "\n".join(lines)


def paired_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Mean PSNR difference a − b with its standard error over the images both rows scored
    (d_i = a_i − b_i, SE = std(d, ddof=1)/√n), and on how many images a is ahead."""
    da, db = a.get("psnr_images", ""), b.get("psnr_images", "")
    va, vb = [float(v) for v in da.split()], [float(v) for v in db.split()]
    if not va or len(va) != len(vb):
        return f"{a['psnr'] - b['psnr']:+.2f}"
    d = np.array(va) - np.array(vb)
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return f"{d.mean():+.2f} ± {se:.2f} SE, ahead on {int((d > 0).sum())}/{d.size} images"


def targets(rows: list[dict[str, Any]]) -> str:
    """The issue's three targets per task, each method at its own tuned defaults; each
    difference is paired per image (mean ± standard error, see paired_difference)."""
    by: dict[str, dict[tuple[str, int], dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by[r["task"]][(r["method"], r["nfe_budget"])] = r
    lines = ["\n### Targets (PSNR differences in dB, paired per image; NaN = a method "
             "diverged)\n"]
    for task, d in by.items():
        c5, p5 = d.get(("conjugate", 5)), d.get(("pigfm", 5))
        best = max((r for (m, k), r in d.items()
                    if m == "pigfm" and k >= 50 and r["psnr"] == r["psnr"]),
                   key=lambda r: r["psnr"], default=None)
        parts = []
        if c5 is not None and p5 is not None:
            gap = c5["psnr"] - p5["psnr"]
            parts.append(f"C-ΠGFM@5 − ΠGFM@5 = {paired_difference(c5, p5)} "
                         f"({'met' if gap >= 1 else 'NOT met'}, target ≥ +1)")
        if c5 is not None and best is not None:
            gap = c5["psnr"] - best["psnr"]
            parts.append(f"C-ΠGFM@5 − best ΠGFM@≥50 (NFE {best['nfe_budget']}) = "
                         f"{paired_difference(c5, best)} "
                         f"({'met' if gap >= -0.5 else 'NOT met'}, target ≥ −0.5)")
        guided = [r for (m, k), r in d.items() if k > 0 and r["psnr"] == r["psnr"]]
        top = max(guided, key=lambda r: r["psnr"], default=None)
        if top is not None and p5 is not None:  # what any sampler here gains over ΠGFM@5
            parts.append(f"headroom: best guided row {top['method']}@{top['nfe_budget']} − "
                         f"ΠGFM@5 = {paired_difference(top, p5)}")
        tv = d.get(("tv", 0))
        if task == "ct60" and c5 is not None and tv is not None:
            gap = c5["psnr"] - tv["psnr"]
            parts.append(f"C-ΠGFM@5 − TV = {paired_difference(c5, tv)} "
                         f"({'met' if gap >= 2 else 'NOT met'}, target ≥ +2)")
        lines.append(f"- {task}: " + ("; ".join(parts) or "not measured"))
    return "\n".join(lines)


# -- tuning ------------------------------------------------------------------------------
def tune(args, prior) -> dict[str, Any]:
    """Grid search on the validation split; all scores and the best setting per
    (variant, family, NFE).  A diverged setting scores −inf."""
    images = test_images(args, "val")
    grids = {"w": args.tune_w, "tau": args.tune_tau, "gamma": args.tune_gamma,
             "t0": args.tune_t0, "rho_scale": args.tune_rho_scale, "lam": args.tune_lam,
             "order": args.tune_order}
    grid_log: list[dict[str, Any]] = []
    chosen: list[dict[str, Any]] = []
    for family in args.tune_families:
        task = get_task({**FAMILY_TASK, **EXTRA_FAMILY_TASK}[family])
        mask = FAMILY_MASK.get(family)
        problems = [task.problem(img, seed=i) for i, img in enumerate(images)]
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
                                     "task": task.name, "size": args.size, "noisy": noisy,
                                     **({"mask": mask} if mask else {}),
                                     "nfe": nfe, **opts,
                                     "psnr_val": round(score, 3)})
                    print(f"  tune {label} {family} nfe={nfe} {opts}: {score:.2f}",
                          file=sys.stderr, flush=True)
                    if best is None or score > best[0]:
                        best = (score, opts)
                assert best is not None
                chosen.append({"method": method, "family": task.family, "task": task.name,
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


def command_line() -> str:
    return "python scripts/bench_conjugate.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64,
                   help="image size in pixels; replaces {size} in --prior (default: %(default)s)")
    p.add_argument("--images", type=int, default=4,
                   help="held-out phantoms per task, from --split (--tune: from the validation "
                        "split) (default: %(default)s)")
    p.add_argument("--prior", default="default",
                   help="prior name for ctflow.load_prior ('{size}' in it: --size), or "
                        "'gaussian-fit' (smoke test) (default: %(default)s)")
    p.add_argument("--split", default="test",
                   help="phantom split of the benchmark images (default: %(default)s)")
    p.add_argument("--data", choices=["phantoms", "realct"], default="phantoms",
                   help="image source: procedural phantoms, or real patients' slices of the "
                        "licensed pool split by patient (ctflow.realct) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="solver seed; the noise of image i is seeded with i (default: %(default)s)")
    p.add_argument("--tasks", nargs="+", default=["ct30", "ct60", "ct30-1e5", "ct60-1e5",
                                                   "inpaint-box", "inpaint-random", "sr4",
                                                   "blur"],
                   help="ctflow.tasks names benchmarked (not used by --tune) "
                        "(default: %(default)s)")
    p.add_argument("--methods", nargs="+", default=[*GUIDED, "fbp", "tv"],
                   help="methods benchmarked (conjugate also gives the conjugate+vjp rows; fbp "
                        "and tv run on CT tasks only) (default: %(default)s)")
    p.add_argument("--conj-nfe", nargs="+", type=int, default=[5, 10, 20],
                   help="NFE budgets of conjugate and conjugate-diffusion "
                        "(default: %(default)s)")
    p.add_argument("--vjp-nfe", nargs="*", type=int, default=[5, 10, 20],
                   help="NFE budgets of conjugate+vjp (jacobian=True); none: no such rows "
                        "(default: %(default)s)")
    p.add_argument("--base-nfe", nargs="+", type=int, default=[5, 10, 20, 50, 100],
                   help="NFE budgets of the Euler baselines pigfm and otode "
                        "(default: %(default)s)")
    p.add_argument("--csv", help="also write the CSV rows (command and machine as '# ' lines) "
                                 "to this file, input of --from-csv (default: none)")
    p.add_argument("--out", help="write the Markdown report (command at the top) here "
                                 "(default: print only)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (per worker) (default: %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="torch device of the prior and the solves, e.g. 'cuda' (TF32 off, so "
                        "that scores match the CPU's to float32 rounding; s/image then times "
                        "the GPU) (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="benchmark tasks in this many processes (s/image then shares cores) "
                        "(default: %(default)s)")
    p.add_argument("--tune", action="store_true",
                   help="grid-search the guided samplers on the validation split instead of "
                        "benchmarking; prints the chosen settings")
    p.add_argument("--tune-methods", nargs="+", default=list(TUNE_VARIANTS),
                   choices=list(TUNE_VARIANTS),
                   help="sampler variants tuned (default: %(default)s)")
    p.add_argument("--tune-nfe", nargs="+", type=int, default=[5, 20],
                   help="NFE budgets tuned for the conjugate samplers (default: %(default)s)")
    p.add_argument("--tune-base-nfe", nargs="+", type=int, default=[5, 20, 100],
                   help="NFE budgets tuned for the Euler baselines pigfm and otode "
                        "(default: %(default)s)")
    p.add_argument("--tune-w", nargs="+", type=float, default=[10.0, 30.0, 100.0, 300.0],
                   help="guidance weights w tried for C-ΠGFM / C-ΠGDM / ΠGFM "
                        "(default: %(default)s)")
    p.add_argument("--tune-tau", nargs="+", type=float, default=[0.2, 0.4],
                   help="start times τ tried for C-ΠGFM / C-ΠGDM / ΠGFM (default: %(default)s)")
    p.add_argument("--tune-gamma", nargs="+", type=float, default=[0.3, 1.0, 3.0, 10.0],
                   help="guidance weights γ tried for OT-ODE (default: %(default)s)")
    p.add_argument("--tune-t0", nargs="+", type=float, default=[0.2, 0.4],
                   help="start times t0 tried for OT-ODE (default: %(default)s)")
    p.add_argument("--tune-rho-scale", nargs="+", type=float, default=[3.0, 10.0, 30.0, 100.0],
                   help="noise weights κ tried on noisy tuning tasks (family ct-noisy) "
                        "(default: %(default)s)")
    p.add_argument("--tune-lam", nargs="+", type=float, default=[0.0],
                   help="λ values tried for C-ΠGFM / C-ΠGDM (default: %(default)s)")
    p.add_argument("--tune-order", nargs="+", type=int, default=[1], choices=[1, 2],
                   help="integrator orders tried for C-ΠGFM / C-ΠGDM: 1 = network output frozen "
                        "per step (as derived), 2 = multistep (linear through the last two "
                        "steps, same NFE); records then name their order (default: %(default)s)")
    p.add_argument("--tune-families", nargs="+", default=list(FAMILY_TASK),
                   choices=[*FAMILY_TASK, *EXTRA_FAMILY_TASK],
                   help="families tuned; inpainting-random (the scattered-mask records) only "
                        "when named (default: %(default)s)")
    p.add_argument("--tune-out", help="write the tuning result (JSON: grid scores and chosen "
                                      "settings) here, input of --write-defaults "
                                      "(default: none)")
    p.add_argument("--from-csv", nargs="+", metavar="CSV",
                   help="merge the --csv files of partial runs into one report (headed with "
                        "this call's --size and --split) and exit")
    p.add_argument("--write-defaults", nargs="+", metavar="TUNE_JSON",
                   help="merge tuning results into the presets of the prior they were tuned "
                        "with and exit")
    p.add_argument("--presets", metavar="STEM", default=None,
                   help="with --write-defaults: the checkpoint (path without extension) whose "
                        "presets receive the records (default: the tuned prior's)")
    args = p.parse_args(argv)
    if args.write_defaults:
        write_defaults(args.write_defaults, args.presets)
        return 0
    if args.from_csv:
        return merge_reports(args)
    if args.device != "cpu":  # otherwise CUDA: the GPU name heads the report
        if not args.device.startswith("cuda"):
            p.error(f"--device {args.device}: 'cpu' or 'cuda[:N]'")
        if args.workers > 1:
            p.error("--workers > 1 runs on the CPU only")
        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: no CUDA GPU is available")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(args.threads)
    prior = load(args)
    machine = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
               f"{args.threads} thread(s) × {args.workers} worker(s), prior {args.prior}")
    if args.device != "cpu":
        machine += f", device {torch.cuda.get_device_name(args.device)}"
    print(f"machine: {machine}", file=sys.stderr)
    start = time.perf_counter()
    if args.tune:
        result = tune(args, prior)
        print(json.dumps(result["chosen"], indent=1, ensure_ascii=False))
        print(f"\ntotal {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return 0
    rows = bench(args, prior)
    total = time.perf_counter() - start
    if args.csv:
        Path(args.csv).write_text(f"# {command_line()}\n# {machine}; {total:.0f} s\n"
                                  + to_csv(rows), encoding="utf-8")
    write_report(rows, [command_line()], f"{machine}; total {total:.0f} s", args)
    print(f"\ntotal {total:.0f} s", file=sys.stderr)
    return 0


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(key for r in rows for key in r))  # merged runs may differ
        writer = csv.DictWriter(buf, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def read_csv(name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and '# ' header lines of a CSV written by --csv."""
    lines = Path(name).read_text(encoding="utf-8").splitlines()
    notes = [ln[2:] for ln in lines if ln.startswith("# ")]
    rows = list(csv.DictReader(ln for ln in lines if not ln.startswith("# ")))
    for r in rows:
        for key in ("size", "nfe_budget", "images"):
            r[key] = int(r[key])
        for key in ("psnr", "ssim", "rmse_hu", "seconds", "nfe", "psnr_std"):
            r[key] = float(r[key])
        r.setdefault("psnr_images", "")  # CSVs written before per-image scores were kept
    return rows, notes


def write_report(rows: list[dict[str, Any]], commands: list[str], machine: str, args) -> None:
    """Markdown report (commands at the top): tables per task, targets, CSV."""
    task_order = {t: i for i, t in enumerate(args.tasks)}
    method_order = ["conjugate", "conjugate+vjp", "conjugate-diffusion", "pigfm", "otode",
                    "fbp", "tv"]
    rows = sorted(rows, key=lambda r: (task_order.get(r["task"], len(task_order)),
                                       method_order.index(r["method"])
                                       if r["method"] in method_order else len(method_order),
                                       r["nfe_budget"]))
    report = "\n".join([
        f"# Conjugate integrators vs Euler baselines, {args.size}², split {args.split}\n",
        "Generated by\n", *[f"    {c}" for c in commands], "",
        f"Machine: {machine}.  Each guided sampler runs at its own validation-tuned "
        "defaults (the prior's presets, column *setting*); "
        "`+vjp` = jacobian=True (forward + VJP per step, so NFE/2 steps).  "
        "PSNR is mean ± std over the images; "
        + ("s/image shares 2 busy CPU cores." if args.device == "cpu" else
           "s/image is GPU time (synchronised), after one untimed warm-up solve."),
        tuning_summary(), markdown(rows), targets(rows),
        "\n```csv\n" + to_csv(rows) + "```\n"])
    print(report)
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")


def tuning_summary() -> str:
    """The tuning runs behind the presets in use (from docs/tuning/guided.json)."""
    table = json.loads(TUNING_LOG.read_text(encoding="utf-8")) if TUNING_LOG.is_file() else {}
    lines = ["\nDefaults tuned on the validation split only, by:\n"]
    lines += [f"- `{run['command']}` on `{run['images']}`" for run in table.get("runs", [])]
    return "\n".join(lines)


def merge_reports(args) -> int:
    """--from-csv: one report from the CSV files of several partial runs."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for name in args.from_csv:
        part, lines = read_csv(name)
        rows += part
        notes += lines
    commands = [n for n in notes if n.startswith("python ")]
    machines: dict[str, None] = {}
    seconds = 0
    for note in (n for n in notes if not n.startswith("python ")):
        found = re.fullmatch(r"(.*); (\d+) s", note)
        machines[found.group(1) if found else note] = None
        seconds += int(found.group(2)) if found else 0
    machine = "; ".join(machines) + f"; total {seconds} s over {len(args.from_csv)} runs"
    write_report(rows, [*commands, command_line()], machine, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
