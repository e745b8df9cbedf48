"""Bit-identity check for refactors: record every method's output bytes and NFE on fixed
small problems, or compare against such a record.

    python3 scripts/check_refactor.py record before.json
    python3 scripts/check_refactor.py compare before.json

Problems: a 32² parallel-beam CT (20 views), noiseless and noisy, and a 32² inpainting
problem (70 % random mask), flow methods with an exact Gaussian prior (no presets: generic
defaults); and a 64² CT with the shipped ``phantom-64`` prior (its tuned presets).
Each entry is the sha256 of the float32 image bytes and ``res.nfe``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

import ctflow
from ctflow.operators import Inpainting, ParallelBeam2D
from ctflow.phantoms import phantom
from ctflow.priors import GaussianPrior
from ctflow.solvers import SOLVERS

# Small budgets so the whole check runs in about a minute on one CPU core.
SMALL: dict[str, dict[str, Any]] = {
    "fbp": {}, "cgls": {"iters": 5}, "sirt": {"iters": 5}, "tv": {"iters": 10},
    "mbir": {"iters": 5},
    "pigfm": {"nfe": 4}, "otode": {"nfe": 4}, "conjugate": {"nfe": 4},
    "conjugate-diffusion": {"nfe": 4},
    "msflow": {"shooting": 2, "segment_steps": 2, "iters": 2},
    "dflow": {"steps": 2, "iters": 2}, "pnpflow": {"nfe": 4}, "flowdps": {"nfe": 4},
    "dps": {"nfe": 4}, "flower": {"nfe": 4},
}


def _mu(hu: np.ndarray) -> torch.Tensor:
    """A HU phantom as attenuation (water 0.02 /mm), shape (1, 1, n, n)."""
    return torch.from_numpy((hu + 1000.0) / 1000.0 * 0.02).float()[None, None]


def _problems() -> Iterator[tuple[str, torch.Tensor, Any, Any, float | None]]:
    """(name, y, op, prior, noise_std) of each fixed problem."""
    x32 = _mu(phantom("chest", 32, seed=1))
    gauss = GaussianPrior(torch.full((32, 32), 0.5), torch.full((32, 32), 0.1))
    ct = ParallelBeam2D(32, 20)
    y = ct(x32)
    yield "ct32", y, ct, gauss, None
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)) * 0.01
    yield "ct32-noisy", y + noise, ct, gauss, 0.01
    mask = torch.rand(32, 32, generator=torch.Generator().manual_seed(4)) > 0.7
    inp = Inpainting(mask)
    yield "inp32", inp(x32), inp, gauss, None
    x64 = _mu(phantom("chest", 64, seed=2))
    ct64 = ParallelBeam2D(64, 30)
    yield "ct64-phantom64", ct64(x64), ct64, ctflow.load_prior("phantom-64"), None


def record() -> dict[str, list[Any]]:
    """sha256 of the image bytes and nfe of every method on every problem."""
    out: dict[str, list[Any]] = {}
    for name, y, op, prior, noise_std in _problems():
        for method, spec in SOLVERS.items():
            if name == "ct64-phantom64" and not spec.needs_prior:
                continue
            if name.startswith("inp") and method == "fbp":
                continue
            res = ctflow.reconstruct(y, op, method=method, prior=prior, noise_std=noise_std,
                                     seed=7, **SMALL[method])
            data = res.image.detach().cpu().contiguous().numpy().astype(np.float32).tobytes()
            out[f"{name}/{method}"] = [hashlib.sha256(data).hexdigest(), int(res.nfe)]
            print(f"{name}/{method}", out[f"{name}/{method}"], flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["record", "compare"])
    ap.add_argument("path", help="the JSON record to write (record) or read (compare)")
    args = ap.parse_args()
    torch.manual_seed(0)
    now = record()
    if args.mode == "record":
        with open(args.path, "w") as fh:
            json.dump(now, fh, indent=1)
        return 0
    with open(args.path) as fh:
        before = json.load(fh)
    bad = [k for k in before if before[k] != now.get(k)] + [k for k in now if k not in before]
    for k in bad:
        print(f"DIFFERS {k}: {before.get(k)} -> {now.get(k)}")
    print(f"{len(before) - len(bad)}/{len(before)} identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
