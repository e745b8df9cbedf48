"""Render a grid of procedural phantoms (soft-tissue and lung windows) to a PNG.

    python scripts/phantom_grid.py [--size 128] [--per-kind 4] [--seed 0] [-o data/phantom_grid.png]
    python scripts/phantom_grid.py --time      # also time generation per kind at 64² and 128²
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ctflow.io.atomic import atomic_file  # noqa: E402
from ctflow.phantoms import KINDS, phantom  # noqa: E402

WINDOWS = {"soft tissue W400/L40": (-160, 240), "lung W1500/L-600": (-1350, 150),
           "brain W80/L40": (0, 80)}


def time_generation(n: int = 30) -> None:
    """Print mean wall and CPU milliseconds per phantom (one thread) at 64² and 128²."""
    import torch

    torch.set_num_threads(1)
    print("| kind | size | wall ms / phantom | CPU ms / phantom |\n|---|---|---|---|")
    for size in (64, 128):
        for kind in KINDS:
            phantom(kind, size, 0)
            wall, cpu = time.perf_counter(), time.process_time()
            for s in range(n):
                phantom(kind, size, s)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"| {kind} | {size} | {wall / n * 1e3:.1f} | {cpu / n * 1e3:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128,
                    help="phantom size in pixels (default: %(default)s)")
    ap.add_argument("--per-kind", type=int, default=4,
                    help="phantoms (columns) per kind (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the first column; column c uses seed + c "
                         "(default: %(default)s)")
    ap.add_argument("-o", "--output", default=os.path.join("data", "phantom_grid.png"),
                    help="PNG file written (default: %(default)s)")
    ap.add_argument("--time", action="store_true",
                    help="first print generation times per kind at 64² and 128² (mean of "
                         "30 phantoms, one thread)")
    args = ap.parse_args()
    if args.time:
        time_generation()
    n = args.per_kind
    rows = [(k, w) for k in KINDS for w in (("brain W80/L40", "soft tissue W400/L40")
                                           if k == "head" else
                                           ("soft tissue W400/L40", "lung W1500/L-600"))]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.6 * len(rows)))
    for r, (kind, win) in enumerate(rows):
        lo, hi = WINDOWS[win]
        for c in range(n):
            img = phantom(kind, args.size, args.seed + c)
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{kind}\n{win}", fontsize=6)
            if r == 0:
                ax.set_title(f"seed {args.seed + c}", fontsize=7)
    fig.tight_layout(pad=0.2)
    with atomic_file(args.output, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
