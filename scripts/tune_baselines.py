"""Tune the defaults of the flow baselines (PnP-Flow, FlowDPS, DPS, Flower) per task family.

For each task family it simulates its representative tasks (ct → ct30 and ct60, so that
a setting must hold from sparse to moderate view counts; inpainting → inpaint-box, sr →
sr4, blur → blur; ct-noisy → ct60-1e5, whose setting serves CT calls with a noise level)
on a few *validation* phantoms (``heldout_images(..., split="val")``, never the test
split), reconstructs them with every setting of a small grid at the method's NFE budget,
scores the mean PSNR in HU (over the family's tasks and images) and writes the best setting
per family as records of the tuned prior's presets (``NAME.presets.json`` beside its
weights, ctflow.priors.presets; ct-noisy as the CT record for noisy data), and the command,
the images, the grid and the PSNR of every setting to docs/tuning/baselines.json.  The
generic defaults stay the methods' own (in their modules).  The tuning is
ctflow.bench.baselines, through the one tuner of ctflow.bench.tune.

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

import torch

import ctflow
from ctflow.bench import baselines
from ctflow.bench.tune import Trial
from ctflow.solvers.defaults import METHODS

TUNING_LOG = Path(__file__).resolve().parents[1] / "docs" / "tuning" / "baselines.json"


def report(family: str, method: str, trial: Trial) -> None:
    """One line per scored setting."""
    print(f"{family:10s} {method:8s} {trial.options} psnr={trial.scores['psnr']:.2f} "
          f"({trial.wall:.1f} s)", flush=True)


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
    parser.add_argument("--families", nargs="+", default=list(baselines.TUNING_FAMILIES),
                        choices=baselines.TUNING_FAMILIES,
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
    results = baselines.tune(prior, args.size, args.images, args.methods, args.families,
                             report)
    print(f"tuning took {time.perf_counter() - start:.0f} s")
    command = "python scripts/tune_baselines.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--dry-run")
    if args.dry_run:
        records = baselines.chosen_records(results, args.size, args.prior, command.strip())
        print(json.dumps(records, indent=1))
        return 0
    baselines.store(results, args.prior, args.size, args.images, command.strip(), TUNING_LOG)
    print(f"wrote the presets of {args.prior} and {TUNING_LOG.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
