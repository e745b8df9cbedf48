"""Per-slice throughput at clinical sizes on one device (the GPU section of README).

For each ``--sizes`` (default 256 and 512), 60 parallel views, 1e5 photons (Poisson, seed 0),
on ``--slices`` real validation slices (``ctflow.realct.validation_images``: the 256² pool,
resized; PSNR in HU against them), on ``--device`` (default: CUDA when present), measures

* the operator: one A x and one Aᵀ y, batch 1 and batch 8 (best of 5 after a warm-up);
* the first use of the geometry: the exact projector's build (symmetric route, into an empty
  ``CTFLOW_CACHE_DIR``) and its first application;
* per slice, with the projector cached: C-ΠGFM@5 (the default flow method; photon
  weights), MS-Flow (defaults; photon weights), TV told the noise level (ramp metric, its
  tolerance) and TV with the photon weights (300 iterations); mean seconds per slice and
  mean PSNR, and on CUDA the peak device memory.

Every solve is synchronised before its clock stops.  Writes Markdown (``--out``):

    python3 scripts/bench_clinical_device.py --out docs/bench_clinical_cuda.md
    python3 scripts/bench_clinical_device.py --device cpu --sizes 64 --slices 1 --out smoke.md
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

import ctflow
from ctflow.bench.machine import machine_info
from ctflow.io.atomic import atomic_file
from ctflow.metrics import evaluate
from ctflow.operators import ParallelBeam2D
from ctflow.realct import validation_images
from ctflow.simulate import noise_std
from ctflow.units import hu_to_mu, mu_to_hu

VIEWS = 60
PHOTONS = 1e5
METHODS: dict[str, dict] = {  # label → reconstruct keywords (besides y, op)
    "C-ΠGFM@5": {"method": "conjugate", "photons": PHOTONS},
    "MS-Flow": {"method": "msflow", "photons": PHOTONS},
    "TV (noise level)": {"method": "tv"},
    "TV (photon weights)": {"method": "tv", "photons": PHOTONS},
}


def synced(device: torch.device, fn: Callable[[], object]) -> tuple[object, float]:
    """fn()'s result and its wall seconds, the device synchronised at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def best(device: torch.device, fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    return min(synced(device, fn)[1] for _ in range(repeats))


def bench_size(size: int, slices: int, device: torch.device, prior) -> list[tuple[str, str]]:
    """(measure, result) rows for one size."""
    op = ParallelBeam2D(image_size=size, views=VIEWS)
    truth = validation_images(size, slices)
    x = torch.from_numpy(np.stack([hu_to_mu(h) for h in truth])).float()[:, None]
    y = torch.cat([ctflow.simulate(x[i:i + 1], op, photons=PHOTONS, seed=i)
                   for i in range(slices)]).to(device)
    sigma = noise_std(op(x), photons=PHOTONS)
    rows = []
    for batch in (1, 8):
        img = torch.rand(batch, 1, size, size, device=device)
        sino = op(img)
        rows.append((f"{size}²: A x / Aᵀ y, batch {batch}",
                     f"{best(device, lambda img=img: op(img)) * 1e3:.2f} / "
                     f"{best(device, lambda sino=sino: op.T(sino)) * 1e3:.2f} ms"))
    start = time.perf_counter()
    proj = op.sym()
    build = time.perf_counter() - start
    _, first = synced(device, lambda: op.projector(img[:1]))
    rows.append((f"{size}²: projector first use (build, first P x)",
                 f"{build:.1f} s, {first:.2f} s (rank {proj.rank}, "
                 f"{proj.stored_bytes / 2**20:.0f} MiB)"))
    for label, kw in METHODS.items():
        extra = {"noise_std": sigma} if "photons" not in kw else {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds, scores = [], []
        for i in range(slices):
            res, wall = synced(device, lambda i=i, kw=kw, extra=extra: ctflow.reconstruct(
                y[i:i + 1], op, prior=prior, consistency="off", **kw, **extra))
            seconds.append(wall)
            image = res.image[0, 0].detach().cpu().numpy()
            scores.append(evaluate(mu_to_hu(image), truth[i])["psnr"])
        peak = (f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
                if device.type == "cuda" else "")
        rows.append((f"{size}²: {label}", f"{np.mean(seconds):.2f} s per slice, "
                     f"{np.mean(scores):.2f} dB{peak}"))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="docs/bench_clinical_cuda.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    os.environ["CTFLOW_CACHE_DIR"] = tempfile.mkdtemp(prefix="ctflow-bench-cache-")
    prior = ctflow.load_prior("default").to(device)
    rows = []
    for size in args.sizes:
        rows += bench_size(size, args.slices, device, prior)
    lines = ["# Clinical sizes on one device", "",
             f"`python3 scripts/bench_clinical_device.py --sizes "
             f"{' '.join(map(str, args.sizes))} --slices {args.slices} --device {args.device}`"
             f": {args.slices} real validation slice(s) per size, {VIEWS} parallel views, "
             f"{PHOTONS:g} photons; defaults of every method (the default prior); the "
             "projector cache starts empty.", "", "| measure | result |", "|---|---|"]
    lines += [f"| {m} | {r} |" for m, r in rows]
    info = machine_info()
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
    lines += ["", "Machine: " + json.dumps(info), ""]
    with atomic_file(args.out, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
