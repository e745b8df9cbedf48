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

The report is written by scripts/bench_conjugate_report.py, tune mode lives in
scripts/bench_conjugate_tune.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
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
from ctflow.tasks import get_task, heldout_images
from ctflow.units import mu_to_hu

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below
from bench_conjugate_report import (  # noqa: E402, F401  (paired_difference, targets: tests)
    command_line,
    merge_reports,
    paired_difference,
    targets,
    to_csv,
    write_report,
)
from bench_conjugate_tune import (  # noqa: E402, F401  (write_defaults: tests)
    EXTRA_FAMILY_TASK,
    FAMILY_TASK,
    TUNE_VARIANTS,
    write_defaults,
)
from bench_conjugate_tune import tune as tune_grid  # noqa: E402

GUIDED = ("conjugate", "conjugate-diffusion", "pigfm", "otode")
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


def tune(args, prior) -> dict[str, Any]:
    """Tune mode: the grid search on the validation split (``bench_conjugate_tune``)."""
    return tune_grid(args, prior, test_images(args, "val"), solve)


def load(args):
    """The prior named by --prior ('gaussian-fit': the fitted smoke-test prior)."""
    if args.prior == "gaussian-fit":
        if args.device != "cpu":
            raise SystemExit("bench_conjugate: --prior gaussian-fit runs on the CPU only")
        return fitted_gaussian_prior(args.size)
    return ctflow.load_prior(args.prior.replace("{size}", str(args.size)), device=args.device)


def parser() -> argparse.ArgumentParser:
    """The command line: benchmark, tuning and report options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _bench_arguments(p)
    _tune_arguments(p)
    p.add_argument("--from-csv", nargs="+", metavar="CSV",
                   help="merge the --csv files of partial runs into one report (headed with "
                        "this call's --size and --split) and exit")
    p.add_argument("--write-defaults", nargs="+", metavar="TUNE_JSON",
                   help="merge tuning results into the presets of the prior they were tuned "
                        "with and exit")
    p.add_argument("--presets", metavar="STEM", default=None,
                   help="with --write-defaults: the checkpoint (path without extension) whose "
                        "presets receive the records (default: the tuned prior's)")
    return p


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    """Options of a benchmark run (images, prior, tasks, methods, budgets, outputs)."""
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


def _tune_arguments(p: argparse.ArgumentParser) -> None:
    """Options of tune mode (--tune and its grids)."""
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
    p.add_argument("--tune-ct-task", default=FAMILY_TASK["ct"],
                   help="validation task(s) of the noiseless CT records, comma-separated: scores "
                        "averaged (default: %(default)s; ct30 where 60 views are "
                        "over-determined)")
    p.add_argument("--tune-ct-noisy-task", default=FAMILY_TASK["ct-noisy"],
                   help="validation task(s) of the noisy CT records, comma-separated: scores "
                        "averaged (default: %(default)s)")
    p.add_argument("--tune-out", help="write the tuning result (JSON: grid scores and chosen "
                                      "settings) here, input of --write-defaults "
                                      "(default: none)")


def main(argv: list[str] | None = None) -> int:
    p = parser()
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
        with atomic_file(args.csv, overwrite=True) as tmp:
            tmp.write_text(f"# {command_line()}\n# {machine}; {total:.0f} s\n"
                           + to_csv(rows), encoding="utf-8")
    write_report(rows, [command_line()], f"{machine}; total {total:.0f} s", args)
    print(f"\ntotal {total:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
