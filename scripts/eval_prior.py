"""Quality evidence for a flow prior: denoising against the best linear estimator, and
unconditional samples against real phantoms (and against an untrained network).

    python3 scripts/eval_prior.py --prior phantom-64 [--png data/priors/samples_64.png]

(a) Denoising at flow time t: x_t = t·x1 + (1−t)·z on held-out ("test" split) phantoms.
    The prior's x̂1 = x_t + (1−t)·v(x_t, t) is compared with the per-pixel linear MMSE
    estimator  x̂1_lin = m + t·s²/(t²s² + (1−t)²)·(x_t − t·m)  (m, s² per-pixel mean and
    variance of training phantoms), by MSE in model space (HU/1000).
(b) Unconditional samples (Euler, --nfe steps): 1-D Wasserstein distance between the HU
    histogram of the samples and that of real held-out phantoms, for the trained network and
    for the same architecture freshly initialised (reference).
Prints a Markdown table; with --png writes samples (top) next to real phantoms (bottom).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from ctflow.io.atomic import atomic_file
from ctflow.priors.datasets import phantom_pool
from ctflow.priors.flow import FlowPrior
from ctflow.priors.registry import load_prior
from ctflow.units import mu_to_hu


def linear_mmse(xt: torch.Tensor, t: float, m: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Per-pixel linear MMSE of x1 from x_t = t·x1 + (1−t)·z."""
    return m + t * s2 / (t * t * s2 + (1 - t) ** 2) * (xt - t * m)


@torch.no_grad()
def denoise_mse(prior: FlowPrior, x1: torch.Tensor, t: float,
                seed: int) -> tuple[float, torch.Tensor]:
    """MSE of x̂1(x_t, t) over x1, and x_t (noise seeded by ``seed``)."""
    z = torch.randn(x1.shape, generator=torch.Generator().manual_seed(seed))
    xt = t * x1 + (1 - t) * z
    est = torch.cat([prior.x1_hat(xt[i:i + 16], t) for i in range(0, len(xt), 16)])
    return float((est - x1).square().mean()), xt


def to_hu(prior: FlowPrior, x: torch.Tensor) -> np.ndarray:
    return mu_to_hu(prior.to_physical(x), prior.mu_water).numpy()


def hu_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(wasserstein_distance(a.ravel(), b.ravel()))


def write_grid(path: Path, top: np.ndarray, bottom: np.ndarray,
               window: tuple[float, float] = (-1000.0, 1000.0)) -> None:
    """A PNG with one row of images (HU, (n, S, S)) above another, grey window ``window``."""
    from PIL import Image

    lo, hi = window
    rows = [np.concatenate(list(r), axis=1) for r in (top, bottom)]
    grid = np.clip((np.concatenate(rows, axis=0) - lo) / (hi - lo), 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, overwrite=True) as tmp:
        Image.fromarray((grid * 255).round().astype(np.uint8)).save(tmp, format="PNG",
                                                                    optimize=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", default="default",
                   help="prior name or checkpoint path (default: %(default)s)")
    p.add_argument("--n", type=int, default=64,
                   help="held-out test phantoms: denoised in (a), real HU histogram in (b) "
                        "(default: %(default)s)")
    p.add_argument("--t", type=float, default=0.5,
                   help="flow time of the denoising test (default: %(default)s)")
    p.add_argument("--train-stats", type=int, default=2000,
                   help="training phantoms for the per-pixel mean/variance "
                        "(default: %(default)s)")
    p.add_argument("--samples", type=int, default=16,
                   help="unconditional samples for (b) (default: %(default)s)")
    p.add_argument("--nfe", type=int, default=50,
                   help="Euler steps per sample (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the untrained network's weights, the denoising noise and the "
                        "samples (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: %(default)s)")
    p.add_argument("--png", type=Path, default=None,
                   help="write a grid of up to 8 samples above real phantoms here "
                        "(default: none)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    prior = load_prior(args.prior)
    size = prior.image_size
    torch.manual_seed(args.seed)
    random_net = FlowPrior.from_config(prior.config)
    test = phantom_pool(size, args.n, "test")
    train = phantom_pool(size, args.train_stats, "train")
    m, s2 = train.mean(0), train.var(0).clamp_min(1e-8)

    mse_prior, xt = denoise_mse(prior, test, args.t, args.seed)
    mse_random, _ = denoise_mse(random_net, test, args.t, args.seed)
    mse_lin = float((linear_mmse(xt, args.t, m, s2) - test).square().mean())
    mse_noisy = float((xt - test).square().mean())

    real_hu = to_hu(prior, test)
    start = time.perf_counter()
    samples = prior.sample(args.samples, nfe=args.nfe, seed=args.seed)
    sample_seconds = time.perf_counter() - start
    random_samples = random_net.sample(args.samples, nfe=args.nfe, seed=args.seed)
    w_prior = hu_distance(to_hu(prior, samples), real_hu)
    w_random = hu_distance(to_hu(random_net, random_samples), real_hu)
    w_mean = hu_distance(np.broadcast_to(to_hu(prior, m[None]), real_hu.shape), real_hu)

    training = prior.config.get("training", {})
    print(f"prior {prior.config.get('name')} ({size}², {training.get('steps')} steps), "
          f"{args.n} test phantoms, t = {args.t}, {args.samples} samples × {args.nfe} Euler "
          f"steps ({sample_seconds:.1f} s)\n")
    print("| estimator | denoise MSE (model space) | HU W1 of samples |")
    print("|---|---|---|")
    print(f"| flow prior x̂1 | {mse_prior:.5f} | {w_prior:.1f} |")
    print(f"| untrained network (same architecture) | {mse_random:.5f} | {w_random:.1f} |")
    print(f"| per-pixel linear MMSE | {mse_lin:.5f} | — |")
    print(f"| training mean image (as 'samples') | — | {w_mean:.1f} |")
    print(f"| x_t itself | {mse_noisy:.5f} | — |")
    print(f"\nlinear MMSE / prior MSE = {mse_lin / mse_prior:.2f} (target ≥ 3); "
          f"W1 untrained / trained = {w_random / max(w_prior, 1e-12):.1f}")
    if args.png is not None:
        k = min(8, args.samples, args.n)
        write_grid(args.png, to_hu(prior, samples[:k, 0]), real_hu[:k, 0])
        print(f"wrote {args.png} ({args.png.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
