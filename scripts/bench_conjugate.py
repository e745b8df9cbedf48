"""Benchmark C-ΠGFM / C-ΠGDM against the Euler baselines ΠGFM / OT-ODE (and FBP / TV on CT).

Benchmark mode: for each task (``ctflow.bench.tasks``) and held-out phantom (DESIGN §5, split
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

The benchmark and tune mode are :mod:`ctflow.bench.guided` (the grid search through the one
tuner, :mod:`ctflow.bench.tune`), the report :mod:`ctflow.bench.guided_report`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

import ctflow
from ctflow.bench import guided
from ctflow.bench.gaussian_fit import fitted_gaussian_prior
from ctflow.bench.guided import EXTRA_FAMILY_TASK, FAMILY_TASK, GUIDED, TUNE_VARIANTS
from ctflow.bench.guided_report import merge_csv, report, to_csv
from ctflow.io.atomic import atomic_file

TUNING_LOG = Path(__file__).resolve().parents[1] / "docs" / "tuning" / "guided.json"


def command_line() -> str:
    """This run's command, as recorded in reports and tuning results."""
    return "python scripts/bench_conjugate.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def bench_settings(args: argparse.Namespace) -> guided.GuidedBench:
    return guided.GuidedBench(size=args.size, images=args.images, split=args.split,
                              data=args.data, seed=args.seed, methods=args.methods,
                              conj_nfe=args.conj_nfe, vjp_nfe=args.vjp_nfe,
                              base_nfe=args.base_nfe)


_WORKER_PRIOR: Any = None


def _worker_init(args: argparse.Namespace) -> None:
    global _WORKER_PRIOR
    torch.set_num_threads(args.threads)
    _WORKER_PRIOR = load(args)


def _worker_task(task_name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    return guided.bench_task(task_name, bench_settings(args), _WORKER_PRIOR)


def bench(args: argparse.Namespace, prior: Any) -> list[dict[str, Any]]:
    """All rows, task by task; with ``--workers`` > 1 tasks run in parallel processes."""
    if args.workers <= 1:
        return [r for name in args.tasks
                for r in guided.bench_task(name, bench_settings(args), prior)]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.workers, initializer=_worker_init, initargs=(args,)) as pool:
        parts = list(pool.map(_worker_task, args.tasks, [args] * len(args.tasks)))
    return [r for part in parts for r in part]


def tune(args: argparse.Namespace, prior: Any) -> dict[str, Any]:
    """Tune mode: the grid search on the validation split (ctflow.bench.guided.tune)."""
    grids = {"w": args.tune_w, "tau": args.tune_tau, "gamma": args.tune_gamma,
             "t0": args.tune_t0, "rho_scale": args.tune_rho_scale, "lam": args.tune_lam,
             "order": args.tune_order, "temperature": args.tune_temperature}
    run = guided.GuidedTuning(
        size=args.size, images=args.images, prior=args.prior, command=command_line(),
        grids=grids, data=args.data, seed=args.seed, families=args.tune_families,
        variants=args.tune_methods, nfe=args.tune_nfe, base_nfe=args.tune_base_nfe,
        ct_task=args.tune_ct_task, ct_noisy_task=args.tune_ct_noisy_task, out=args.tune_out)
    images = guided.bench_images(args.size, args.images, "val", args.data)
    return guided.tune(run, prior, images)


def load(args: argparse.Namespace) -> Any:
    """The prior named by --prior ('gaussian-fit': the fitted smoke-test prior)."""
    if args.prior == "gaussian-fit":
        if args.device != "cpu":
            raise SystemExit("bench_conjugate: --prior gaussian-fit runs on the CPU only")
        return fitted_gaussian_prior(args.size)
    return ctflow.load_prior(args.prior.replace("{size}", str(args.size)), device=args.device)


def write_report(rows: list[dict[str, Any]], commands: list[str], machine: str,
                 args: argparse.Namespace) -> None:
    """Print the Markdown report and write it to --out."""
    text = report(rows, commands, machine, tasks=args.tasks, size=args.size,
                  split=args.split, device=args.device, log_path=TUNING_LOG)
    print(text)
    if args.out:
        with atomic_file(args.out, overwrite=True) as tmp:
            tmp.write_text(text, encoding="utf-8")


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
                   help="ctflow.bench.tasks names benchmarked (not used by --tune) "
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
    p.add_argument("--tune-temperature", nargs="+", type=float, default=[1.0],
                   help="start temperatures T tried for every guided method (x(τ) = τ ỹ + "
                        "(1−τ) T z; 1 samples the posterior, 0 starts deterministically); "
                        "records then name their temperature (default: %(default)s)")
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
        guided.write_defaults(args.write_defaults, TUNING_LOG, args.presets)
        return 0
    if args.from_csv:
        rows, commands, machine = merge_csv(args.from_csv)
        write_report(rows, [*commands, command_line()], machine, args)
        return 0
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
