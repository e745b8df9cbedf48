"""Benchmark MS-Flow against D-Flow, C-ΠGFM and the classical TV / FBP baselines.

Same tasks and held-out phantoms as ``scripts/bench_conjugate.py`` (``ctflow.bench.tasks``):
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
tasks (they must agree).  The benchmark and the tuning are ctflow.bench.latent (through the
one tuner of ctflow.bench.tune); this script parses the command line and formats the report.

    python3 scripts/bench_msflow.py --tune sr --tune-method msflow --split val --images 2 \
        --tasks sr4 --grid '{"init": ["inverse", "noise"], "iters": [10, 20]}'
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from ctflow.bench import latent
from ctflow.bench.latent import BUDGET, TUNED_SIZE, LatentBench, LatentTuning, targets
from ctflow.bench.tasks import SOLVER_BENCH_TASKS
from ctflow.errors import CtflowError
from ctflow.io.atomic import atomic_file
from ctflow.solvers.context import SCATTERED

TUNING_LOG = Path(__file__).resolve().parents[1] / "docs" / "tuning" / "latent.json"


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
                   help="ctflow.bench.tasks names; --tune: all of family FAMILY "
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
    p.add_argument("--data", choices=["phantoms", "realct"], default="phantoms",
                   help="tuning images: held-out phantoms, or the real validation patients of "
                        "the licensed pool split by patient (ctflow.realct) "
                        "(default: %(default)s)")
    p.add_argument("--tune-mask", default=None, choices=[SCATTERED],
                   help="tuning: store the options for this inpainting mask kind only (the "
                        "family's 'masks' entry; every --tasks mask must be of that kind; "
                        f"needs --size {TUNED_SIZE}) (default: all mask kinds)")
    return p


def main() -> None:
    args = _parser().parse_args()
    torch.set_num_threads(args.threads)

    if args.tune is not None:
        tune(args)
        return
    opts = {"msflow": json.loads(args.msflow_opts), "dflow": json.loads(args.dflow_opts),
            "conjugate": json.loads(args.conjugate_opts)}
    jobs = [LatentBench(task=name, size=args.size, images=args.images, split=args.split,
                        prior=args.prior, seed=args.seed, threads=args.threads,
                        methods=args.methods, options=opts) for name in args.tasks]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            done = list(pool.map(latent.bench_task, jobs))
    else:
        done = [latent.bench_task(job) for job in jobs]
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


def tune(args: argparse.Namespace) -> None:
    """--tune: the grid search of ctflow.bench.latent.tune; its result goes to the prior's
    presets and the tuning log."""
    if args.split != "val":
        raise SystemExit("--tune runs on the validation split only (--split val)")
    run = LatentTuning(family=args.tune, method=args.tune_method, tasks=args.tasks,
                       grid=json.loads(args.grid), fixed=json.loads(args.fixed),
                       prior=args.prior, size=args.size, images=args.images, seed=args.seed,
                       mask=args.tune_mask, data=args.data,
                       command="python3 scripts/bench_msflow.py " + shlex.join(sys.argv[1:]))
    try:
        chosen, psnr = latent.tune(run, latent.load_prior(args.prior, args.size), TUNING_LOG)
    except CtflowError as exc:
        raise SystemExit(str(exc)) from None
    print(f"chosen for {args.tune_method}/{args.tune}: {json.dumps(chosen)} "
          f"(PSNR {psnr:.2f}); written to the presets of {args.prior}")


if __name__ == "__main__":
    main()
