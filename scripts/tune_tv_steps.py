"""Tune TV's step ratio ω = τ/σ and relaxation ρ (``ctflow.solvers.classical``) per metric on
real validation slices.

For each metric it reconstructs simulated scans of the validation split of the real CT pool
(``ctflow.realct.validation_images(size, count, split="val")``: whole held-out patients,
never the test files) with every (ω, ρ) of a grid and reports the mean PSNR (HU) at fixed
iteration budgets and at TV's default stop (``tol``), with the iterations that took:

* ``ramp`` (the metric TV uses when told a noise level): 60 views at 1e5 photons (TV gets
  the true noise std) and 30 noiseless views, at 128² and 256²;
* ``ramp-photons`` (the ramp metric with the pre-log Poisson weights of ``photons`` in the
  prox): 60 views at 1e5 photons, 256²;
* ``plain`` (the plain metric, ``precondition="none"``, with the photon weights): 60 views
  at 1e5 photons, 256², at the default 300 iterations;
* ``image`` (the plain metric on the non-CT operators: the noiseless benchmark tasks
  inpaint-box, inpaint-random, sr4 and blur of ``ctflow.bench.tasks``), at 64² and 128², at
  100 and at the default 300 iterations.

``--parts`` picks which of them run (each writes its own table).

Parallel beam, Poisson data with seed 0 (``ctflow.simulate``).  One thread.  Writes a
Markdown report (the constants in ``classical.py`` cite it):

    OMP_NUM_THREADS=1 python3 scripts/tune_tv_steps.py --out docs/tuning/tv_steps.md
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ctflow  # noqa: E402
from ctflow.bench.tasks import get_task  # noqa: E402
from ctflow.io.atomic import atomic_file  # noqa: E402
from ctflow.metrics import evaluate  # noqa: E402
from ctflow.operators import ParallelBeam2D  # noqa: E402
from ctflow.realct import validation_images  # noqa: E402
from ctflow.simulate import noise_std  # noqa: E402
from ctflow.units import hu_to_mu, mu_to_hu  # noqa: E402

RAMP_TASKS = (("ct60-1e5", 60, 1e5), ("ct30", 30, None))
PHOTON_TASKS = (("ct60-1e5-photons", 60, 1e5),)
IMAGE_TASKS = ("inpaint-box", "inpaint-random", "sr4", "blur")


def problems(size: int, count: int, tasks) -> list[tuple[str, dict, np.ndarray]]:
    """(task, reconstruct keywords without the method options, HU truth) per slice and task."""
    out = []
    for hu in validation_images(size, count, split="val"):
        x = torch.from_numpy(hu_to_mu(hu)).float()[None, None]
        for name, views, photons in tasks:
            op = ParallelBeam2D(image_size=size, views=views)
            clean = op(x)
            if photons is None:
                y, kw = clean, {}
            else:
                y = ctflow.simulate(x, op, photons=photons, seed=0)
                kw = ({"photons": photons} if name.endswith("photons")
                      else {"noise_std": noise_std(clean, photons=photons)})
            out.append((name, {"y": y, "op": op, **kw}, hu))
    return out


def image_problems(size: int, count: int) -> list[tuple[str, dict, np.ndarray]]:
    """The noiseless non-CT benchmark tasks (IMAGE_TASKS) on the validation slices."""
    slices = validation_images(size, count, split="val")
    out = []
    for name in IMAGE_TASKS:
        for i, hu in enumerate(slices):
            prob = get_task(name).problem(hu.astype(np.float64), seed=i)
            out.append((name, {"y": prob.y, "op": prob.op}, hu))
    return out


def score(problem: tuple[str, dict, np.ndarray], **opts: object) -> tuple[float, int, float]:
    """PSNR (dB), iterations run and seconds of one TV reconstruction."""
    _, kw, hu = problem
    kw = dict(kw)
    y, op = kw.pop("y"), kw.pop("op")
    start = time.perf_counter()
    res = ctflow.reconstruct(y, op, method="tv", **kw, **opts)
    wall = time.perf_counter() - start
    return evaluate(mu_to_hu(res.image[0, 0].numpy()), hu)["psnr"], res.info["iters"], wall


def grid_rows(probs, grid, budgets: tuple[int, ...], default_stop: bool, **fixed: object
              ) -> list[tuple[float, float, dict[str, float]]]:
    """(ω, ρ, {column: mean value}) per setting (``fixed``: further TV options)."""
    rows = []
    for omega, rho in grid:
        cols: dict[str, float] = {}
        for b in budgets:
            cols[f"{b} it"] = float(np.mean([score(p, iters=b, tol=0.0, step_ratio=omega,
                                                   relaxation=rho, **fixed)[0]
                                             for p in probs]))
        if default_stop:
            runs = [score(p, step_ratio=omega, relaxation=rho, **fixed) for p in probs]
            cols["default stop"] = float(np.mean([r[0] for r in runs]))
            cols["its"] = float(np.mean([r[1] for r in runs]))
        rows.append((omega, rho, cols))
        print(f"ω={omega:g} ρ={rho:g} " + " ".join(f"{k}: {v:.2f}" for k, v in cols.items()),
              flush=True)
    return rows


def table(title: str, rows) -> list[str]:
    cols = list(rows[0][2])
    lines = [f"### {title}", "", "| ω | ρ | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for omega, rho, vals in rows:
        cells = [f"{vals[c]:.0f}" if c == "its" else f"{vals[c]:.2f}" for c in cols]
        lines.append(f"| {omega:g} | {rho:g} | " + " | ".join(cells) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="validation slices per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--ramp-omegas", type=float, nargs="+", default=[2.0, 3.0, 5.0])
    parser.add_argument("--plain-omegas", type=float, nargs="+", default=[10.0, 20.0, 40.0])
    parser.add_argument("--image-omegas", type=float, nargs="+",
                        default=[10.0, 30.0, 100.0, 300.0])
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--rhos", type=float, nargs="+", default=[1.0, 1.5, 1.8])
    parser.add_argument("--parts", nargs="+", default=["ramp", "ramp-photons", "plain"],
                        choices=["ramp", "ramp-photons", "plain", "image"])
    parser.add_argument("--out", default="docs/tuning/tv_steps.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = ["# TV step ratio ω and relaxation ρ on real validation slices", "",
             f"`OMP_NUM_THREADS=1 python3 scripts/tune_tv_steps.py --images {args.images} "
             f"--sizes {' '.join(map(str, args.sizes))} "
             f"--image-sizes {' '.join(map(str, args.image_sizes))} "
             f"--parts {' '.join(args.parts)}`: the "
             f"validation split of the real CT pool ({args.images} slices per size, whole "
             "held-out patients), parallel beam, Poisson data with seed 0. Mean PSNR (dB, HU) "
             "after a fixed number of iterations (tol 0) and at TV's default stop (relative "
             "change ≤ tol, or its 300 iterations), with the mean iterations run.", ""]
    if "ramp" in args.parts:
        for size in args.sizes:
            probs = problems(size, args.images, RAMP_TASKS)
            rows = grid_rows(probs, itertools.product(args.ramp_omegas, args.rhos),
                             (20, 40, 60, 100), default_stop=True)
            lines += table(f"ramp metric, {size}² ({', '.join(t[0] for t in RAMP_TASKS)})",
                           rows)
    if "ramp-photons" in args.parts:
        probs = problems(256, args.images, PHOTON_TASKS)
        rows = grid_rows(probs, itertools.product(args.ramp_omegas, args.rhos),
                         (25, 50, 100), default_stop=True, precondition="ramp")
        lines += table("ramp metric with the photon weights in its prox, 256², 60 views, "
                       "1e5 photons", rows)
    if "plain" in args.parts:
        probs = problems(256, args.images, PHOTON_TASKS)
        rows = grid_rows(probs, itertools.product(args.plain_omegas, args.rhos), (100, 300),
                         default_stop=False, precondition="none")
        lines += table("plain metric (photon weights), 256², 60 views, 1e5 photons", rows)
    if "image" in args.parts:
        for size in args.image_sizes:
            probs = image_problems(size, args.images)
            rows = grid_rows(probs, itertools.product(args.image_omegas, args.rhos), (100, 300),
                             default_stop=False)
            lines += table(f"plain metric on the non-CT operators, {size}² "
                           f"({', '.join(IMAGE_TASKS)}, noiseless)", rows)
    with atomic_file(args.out, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
