"""Projector accuracy and its effect on PSNR: exact versus Krylov CT projector, blur threshold.

C-ΠGFM needs P = A⁺A to be a true projector.  ``ParallelBeam2D(projection="svd")`` gives one
to float32 rounding; ``projection="cg"`` (the route of scans without a usable grid symmetry
above 128²) applies A⁺ by CGLS to a tolerance, so P is only approximately idempotent.  For
each tolerance this prints the idempotence error ‖P(Px) − Px‖/‖Px‖ on a random image and
on a phantom, the seconds per P application, and C-ΠGFM's PSNR (5 NFE, its tuned
defaults) on held-out test phantoms with each route.

    python3 scripts/bench_projector.py --size 64 --views 60 --images 4

``--w``, ``--tau`` and ``--order`` replace C-ΠGFM's tuned defaults (to see whether another
setting suits the CG route better).

``--operator blur`` instead measures the Gaussian blur task's FFT projector (σ = N/64) at each
truncation threshold of ``--thresholds`` (frequencies with |H| < threshold·max|H| count as
zero): the fraction of frequencies kept, the idempotence error, and the PSNR of C-ΠGFM and
ΠGFM at 5 NFE (each at its tuned defaults) on noiseless test phantoms.

    python3 scripts/bench_projector.py --operator blur --size 128 --images 4 --prior phantom-128

``--build`` measures the first use of the exact (truncated-SVD) CT projector instead: wall
and CPU seconds of the one-off build (system matrix export + SVD) into an empty temporary
cache, the process's peak resident memory, the rank kept and the idempotence error.  Run it
in a fresh process per size (the peak RSS is the whole process's, imports included), with
``OMP_NUM_THREADS`` set for LAPACK's threads:

    OMP_NUM_THREADS=1 python3 scripts/bench_projector.py --build --size 128 --views 60

``--build --route sym`` measures the symmetric route instead (block eigendecompositions of
the symmetrised matrix, ``operators/symmetric.py``), with its stored factor size and the
seconds per P application; ``--geometry fan`` uses fan beam (views over 2π).

``--compare`` sets the symmetric route against the truncated SVD at one size (both built
into an empty temporary cache): ranks, ‖P_sym x − P_svd x‖/‖P_svd x‖ on noise and on a
phantom, ‖A_s − A‖_F/‖A‖_F, A_s⁺(A x) against P_sym x, and C-ΠGFM's PSNR (5 NFE, tuned
defaults) with each route on ``--images`` test images, noiseless and at ``--photons``.

    OMP_NUM_THREADS=1 python3 scripts/bench_projector.py --compare --size 64 --images 8

``--slice`` times C-ΠGFM (5 NFE, ``--prior``'s tuned defaults) on one real validation slice
(``ctflow.realct``) at --size, --views parallel views and ``--photons``: once into an empty
cache (first use of the geometry: matrix export and projector build included) and once
more with the geometry's cache warm, with the process's peak resident memory.

    OMP_NUM_THREADS=1 python3 scripts/bench_projector.py --slice --size 512 --prior realct-64
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
import tempfile
import time

import numpy as np
import scipy.sparse.linalg as spla
import torch

import ctflow
from ctflow.bench.tasks import heldout_images
from ctflow.metrics import psnr
from ctflow.operators import FanBeam2D, GaussianBlur, ParallelBeam2D, idempotence_error
from ctflow.operators.astra_backends import system_matrix
from ctflow.operators.symmetric_group import group_name, symmetrised_matrix
from ctflow.simulate import simulate
from ctflow.units import hu_to_mu, mu_to_hu


def projector_seconds(op: ParallelBeam2D, x: torch.Tensor, repeats: int = 3) -> float:
    op.projector(x)  # warm-up (builds the SVD or the matrix once)
    start = time.perf_counter()
    for _ in range(repeats):
        op.projector(x)
    return (time.perf_counter() - start) / repeats


def psnr_at_defaults(op, prior, images: list[np.ndarray], method: str,
                     photons: float | None = None, **options: float) -> list[float]:
    """PSNR (HU) of ``method`` at 5 NFE on data of op (noiseless, or Poisson at ``photons``
    per ray): its tuned defaults, with ``options`` (w, tau, order) in their place where
    given."""
    scores = []
    for i, gt in enumerate(images):
        x = torch.from_numpy(hu_to_mu(gt.astype(np.float32)))[None, None]
        y = simulate(x, op, seed=i) if photons is None else \
            simulate(x, op, photons=photons, seed=i)
        res = ctflow.reconstruct(y, op, method=method, prior=prior, nfe=5, seed=i, **options)
        scores.append(psnr(mu_to_hu(res.image[0, 0].numpy()), gt))
    return scores


def mean_std(scores: list[float]) -> str:
    return f"{np.mean(scores):.2f} ± {np.std(scores, ddof=1):.2f}"


def ct_rows(args, prior, images: list[np.ndarray], phantom: torch.Tensor) -> None:
    options = {k: v for k, v in (("w", args.w), ("tau", args.tau), ("order", args.order))
               if v is not None}
    setting = ", ".join(f"{k} = {v:g}" for k, v in options.items()) or "its tuned defaults"
    print(f"# {args.size}², {args.views} parallel views, C-ΠGFM at 5 NFE ({setting}), "
          f"{args.images} test images, prior {args.prior}\n")
    print("| projector | idempotence (noise) | idempotence (phantom) | s per P | C-ΠGFM PSNR |")
    print("|---|---|---|---|---|")
    routes = [("cg", tol) for tol in args.tols] + [("svd", None)]
    for route, tol in routes:
        op = ParallelBeam2D(image_size=args.size, views=args.views, projection=route)
        if tol is not None:  # the CG route's P and A⁺ at this tolerance, whoever calls them
            project, pinv = op.projector, op.pinv
            op.projector = lambda x, _p=project, _t=tol, **_: _p(x, tol=_t, maxiter=1000)
            op.pinv = lambda y, _p=pinv, _t=tol, **_: _p(y, tol=_t, maxiter=1000)
        err_noise = idempotence_error(op)
        err_phantom = idempotence_error(op, phantom)
        secs = projector_seconds(op, phantom)
        scores = psnr_at_defaults(op, prior, images, "conjugate", **options)
        label = "truncated SVD" if tol is None else f"CG, tol {tol:g}"
        print(f"| {label} | {err_noise:.2e} | {err_phantom:.2e} | {secs:.4f} | "
              f"{mean_std(scores)} |", flush=True)


def _operator(args, route: str):
    cls = ParallelBeam2D if args.geometry == "parallel" else FanBeam2D
    return cls(image_size=args.size, views=args.views, projection=route)


def build_row(args, phantom: torch.Tensor) -> None:
    """First use of the SVD or symmetric projector at args.size into an empty cache."""
    label = {"svd": "truncated-SVD", "sym": "symmetric-block"}[args.route]
    print(f"# {args.size}², {args.views} {args.geometry} views, {label} projector, first use "
          f"(empty cache, system matrix export included), {torch.get_num_threads()} "
          f"thread(s)\n")
    print("| size | views | route | build wall s | build CPU s | peak RSS MB | rank | "
          "stored MB | idempotence (noise) | idempotence (phantom) | s per P |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["CTFLOW_CACHE_DIR"] = folder
        op = _operator(args, args.route)
        wall, cpu = time.perf_counter(), time.process_time()
        exact = op.svd() if args.route == "svd" else op.sym()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stored = exact.vectors.nbytes if args.route == "svd" else exact.stored_bytes
        noise = idempotence_error(op)
        print(f"| {args.size}² | {args.views} | {args.route} | {wall:.1f} | {cpu:.1f} | "
              f"{peak_mb:.0f} | {exact.rank} | {stored / 1e6:.0f} | {noise:.2e} | "
              f"{idempotence_error(op, phantom):.2e} | {projector_seconds(op, phantom):.3f} |",
              flush=True)
        again = _operator(args, args.route)  # a later run: load and verify the entry
        wall, cpu = time.perf_counter(), time.process_time()
        again.svd() if args.route == "svd" else again.sym()
        print(f"\nlater use (load and verify the cache entry): "
              f"{time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU",
              flush=True)


def slice_rows(args, prior) -> None:
    """C-ΠGFM on one real slice: first use (empty cache), then with the cache warm."""
    from ctflow.realct import validation_images

    gt = validation_images(args.size, 1)[0]
    x = torch.from_numpy(hu_to_mu(gt.astype(np.float32)))[None, None]
    print(f"# {args.size}², {args.views} {args.geometry} views, {args.photons:g} photons, "
          f"C-ΠGFM at 5 NFE, one real validation slice, prior {args.prior}, "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| run | route | wall s (simulate + reconstruct) | CPU s | peak RSS MB | PSNR dB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["CTFLOW_CACHE_DIR"] = folder
        for label in ("first use (empty cache)", "cache warm (new operator)"):
            wall, cpu = time.perf_counter(), time.process_time()
            op = _operator(args, "auto")
            y = simulate(x, op, photons=args.photons, seed=0)
            res = ctflow.reconstruct(y, op, method="conjugate", prior=prior, nfe=5, seed=0)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            score = psnr(mu_to_hu(res.image[0, 0].numpy()), gt)
            print(f"| {label} | {op.projection_method} | {wall:.1f} | {cpu:.1f} | "
                  f"{peak_mb:.0f} | {score:.2f} |", flush=True)


def compare_rows(args, prior, images: list[np.ndarray], phantom: torch.Tensor) -> None:
    """The symmetric route against the truncated SVD at args.size (see the docstring)."""
    print(f"# {args.size}², {args.views} {args.geometry} views: symmetric route vs truncated "
          f"SVD (both built into an empty cache), C-ΠGFM at 5 NFE (tuned defaults), "
          f"{args.images} test images, prior {args.prior}\n")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["CTFLOW_CACHE_DIR"] = folder
        sym, svd = _operator(args, "sym"), _operator(args, "svd")
        a = system_matrix(sym.geometry)
        a_s = symmetrised_matrix(a, sym.symmetries())
        dev = spla.norm(a_s - a) / spla.norm(a)
        noise = torch.randn(1, 1, args.size, args.size, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(0))
        rows = []
        for name, x in (("noise", noise), ("phantom", phantom.double())):
            ps, pv = sym.projector(x), svd.projector(x)
            rows.append((name, float((ps - pv).norm() / pv.norm()),
                         float((sym.pinv(sym(x)) - ps).norm() / ps.norm())))
        print(f"group {group_name(sym.symmetries())}, space {sym.sym().space}; rank sym "
              f"{sym.sym().rank}, svd {svd.svd().rank}; ‖A_s − A‖_F/‖A‖_F = {dev:.2e}\n")
        print("| input | ‖P_sym x − P_svd x‖/‖P_svd x‖ | ‖A_s⁺(A x) − P_sym x‖/‖P_sym x‖ |")
        print("|---|---|---|")
        for name, dp, dpinv in rows:
            print(f"| {name} | {dp:.2e} | {dpinv:.2e} |")
        print("\n| data | C-ΠGFM PSNR, sym | C-ΠGFM PSNR, svd | sym − svd |")
        print("|---|---|---|---|")
        for photons in (None, args.photons):
            scores = [psnr_at_defaults(op, prior, images, "conjugate", photons=photons)
                      for op in (sym, svd)]
            label = "noiseless" if photons is None else f"{photons:.0e} photons"
            print(f"| {label} | {mean_std(scores[0])} | {mean_std(scores[1])} | "
                  f"{np.mean(scores[0]) - np.mean(scores[1]):+.2f} |", flush=True)


def blur_rows(args, prior, images: list[np.ndarray], phantom: torch.Tensor) -> None:
    sigma = args.size / 64
    print(f"# {args.size}², Gaussian blur σ = {sigma:g} px (noiseless), 5 NFE at tuned "
          f"defaults, {args.images} test images, prior {args.prior}\n")
    print("| threshold | frequencies kept | idempotence (noise) | idempotence (phantom) "
          "| C-ΠGFM PSNR | ΠGFM PSNR | C−Π |")
    print("|---|---|---|---|---|---|---|")
    for threshold in args.thresholds:
        op = GaussianBlur(image_size=args.size, sigma=sigma, threshold=threshold)
        kept = float(op.projector(_impulse(args.size))[0, 0, 0, 0])  # = fraction kept
        conj = psnr_at_defaults(op, prior, images, "conjugate")
        base = psnr_at_defaults(op, prior, images, "pigfm")
        print(f"| {threshold:g} | {kept:.3f} | {idempotence_error(op):.2e} | "
              f"{idempotence_error(op, phantom):.2e} | {mean_std(conj)} | {mean_std(base)} | "
              f"{np.mean(conj) - np.mean(base):+.2f} |", flush=True)


def _impulse(size: int) -> torch.Tensor:
    """A unit impulse at the origin: P of it at the origin is the kept fraction of the DFT."""
    x = torch.zeros(1, 1, size, size)
    x[0, 0, 0, 0] = 1.0
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--operator", choices=("ct", "blur"), default="ct",
                   help="ct: CG tolerances vs truncated SVD of a parallel-beam projector; "
                        "blur: FFT truncation thresholds of the blur task (default: %(default)s)")
    p.add_argument("--size", type=int, default=64,
                   help="image size in pixels (blur: σ = size/64) (default: %(default)s)")
    p.add_argument("--views", type=int, default=60,
                   help="parallel-beam views (ct only) (default: %(default)s)")
    p.add_argument("--images", type=int, default=4,
                   help="held-out test phantoms for the PSNR (default: %(default)s)")
    p.add_argument("--prior", default="default",
                   help="prior name or checkpoint path (default: %(default)s)")
    p.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-4, 1e-6],
                   help="CGLS tolerances of the CG route, each with at most 1000 iterations "
                        "(ct only) (default: %(default)s)")
    p.add_argument("--thresholds", type=float, nargs="+",
                   default=[1e-2, 1e-3, 1e-4, 1e-5, 3e-6, 1e-6, 1e-7],
                   help="FFT truncation thresholds: |H| < threshold·max|H| counts as zero "
                        "(blur only) (default: %(default)s)")
    p.add_argument("--w", type=float, default=None,
                   help="C-ΠGFM guidance weight w in place of its tuned default (ct only)")
    p.add_argument("--tau", type=float, default=None,
                   help="C-ΠGFM start time τ in place of its tuned default (ct only)")
    p.add_argument("--order", type=int, choices=(1, 2), default=None,
                   help="C-ΠGFM integrator order in place of its tuned default (ct only)")
    p.add_argument("--build", action="store_true",
                   help="ct: measure the first use (build time, peak memory) of the exact "
                        "SVD projector at --size instead of the PSNR table")
    p.add_argument("--route", choices=("svd", "sym"), default="svd",
                   help="--build: the exact route to build (default: %(default)s)")
    p.add_argument("--geometry", choices=("parallel", "fan"), default="parallel",
                   help="--build/--compare: parallel beam (views over π) or fan beam (views "
                        "over 2π) (default: %(default)s)")
    p.add_argument("--compare", action="store_true",
                   help="ct: the symmetric route against the truncated SVD at --size "
                        "(projector difference, ranks, C-ΠGFM PSNR)")
    p.add_argument("--photons", type=float, default=1e5,
                   help="--compare/--slice: photons per ray of the noisy data "
                        "(default: %(default)g)")
    p.add_argument("--slice", action="store_true",
                   help="ct: time C-ΠGFM on one real validation slice at --size, first use "
                        "and with the cache warm (needs the real-CT pool)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.build:
        print(f"# python3 scripts/bench_projector.py {shlex.join(sys.argv[1:])}")
        image = heldout_images(args.size, 1, split="test")[0]
        build_row(args, torch.from_numpy(hu_to_mu(image.astype(np.float32)))[None, None])
        return
    prior = ctflow.load_prior(args.prior)
    if args.slice:
        print(f"# python3 scripts/bench_projector.py {shlex.join(sys.argv[1:])}")
        slice_rows(args, prior)
        return
    images = heldout_images(args.size, args.images, split="test")
    phantom = torch.from_numpy(hu_to_mu(images[0].astype(np.float32)))[None, None]
    print(f"# python3 scripts/bench_projector.py {shlex.join(sys.argv[1:])}")
    if args.compare:
        compare_rows(args, prior, images, phantom)
        return
    (blur_rows if args.operator == "blur" else ct_rows)(args, prior, images, phantom)


if __name__ == "__main__":
    main()
