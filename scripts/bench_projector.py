"""Exact (truncated-SVD) versus Krylov (CG) CT projector: idempotence and its effect on PSNR.

C-ΠGFM needs P = A⁺A to be a true projector.  ``ParallelBeam2D(projection="svd")`` gives one
to float32 rounding; ``projection="cg"`` (the route used above 128²) applies A⁺ by CGLS to a
tolerance, so P is only approximately idempotent.  For each tolerance this prints the
idempotence error ‖P(Px) − Px‖/‖Px‖ on a random image and on a phantom, the seconds per
P application, and C-ΠGFM's PSNR (5 NFE, its tuned defaults) on held-out test phantoms
with each route.

    python3 scripts/bench_projector.py --size 64 --views 60 --images 4
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np
import torch

import ctflow
from ctflow.metrics import psnr
from ctflow.operators import ParallelBeam2D, idempotence_error
from ctflow.simulate import simulate
from ctflow.tasks import heldout_images
from ctflow.units import hu_to_mu, mu_to_hu


def projector_seconds(op: ParallelBeam2D, x: torch.Tensor, repeats: int = 3) -> float:
    op.projector(x)  # warm-up (builds the SVD or the matrix once)
    start = time.perf_counter()
    for _ in range(repeats):
        op.projector(x)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--views", type=int, default=60)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--prior", default="default")
    p.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-4, 1e-6])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    prior = ctflow.load_prior(args.prior)
    images = heldout_images(args.size, args.images, split="test")
    phantom = torch.from_numpy(hu_to_mu(images[0].astype(np.float32)))[None, None]
    print(f"# python3 scripts/bench_projector.py {shlex.join(sys.argv[1:])}")
    print(f"# {args.size}², {args.views} parallel views, C-ΠGFM at 5 NFE, "
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
        scores = []
        for i, gt in enumerate(images):
            x = torch.from_numpy(hu_to_mu(gt.astype(np.float32)))[None, None]
            y = simulate(x, op, seed=i)
            res = ctflow.reconstruct(y, op, method="conjugate", prior=prior, nfe=5, seed=i)
            scores.append(psnr(mu_to_hu(res.image[0, 0].numpy()), gt))
        label = "truncated SVD" if tol is None else f"CG, tol {tol:g}"
        print(f"| {label} | {err_noise:.2e} | {err_phantom:.2e} | {secs:.4f} | "
              f"{np.mean(scores):.2f} ± {np.std(scores, ddof=1):.2f} |", flush=True)


if __name__ == "__main__":
    main()
