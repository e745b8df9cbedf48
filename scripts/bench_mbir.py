"""MBIR vs TV vs FBP (and svmbir's MBIR when it is installed) on one noisy CT problem.

Default problem: the 256² chest phantom (``ctflow.phantoms.phantom("chest", 256)``),
parallel beam, 60 views, Poisson data with 1e5 photons (``ctflow.simulate``).  Methods:

* ``fbp``         ram-lak FBP
* ``tv``          ctflow TV at its defaults, told the true noise std (ramp metric)
* ``tv-30``, ``tv-40``  the same stopped after 30 or 40 iterations (budgets near svmbir's
                  time)
* ``tv-photons``  TV with the photon-weighted data term (``photons=``; the ramp metric with
                  the weights in its prox)
* ``mbir``        ctflow MBIR at its defaults (``photons=``; ordered subsets at ≥ 40 views)
* ``mbir-lbfgs``  the same with its L-BFGS-B solver (100 iterations)
* ``svmbir``      svmbir.recon (optional dependency, ``pip install svmbir``): transmission
                  weights e^{−y} with the true noise level σ_y = 1/√I0, its defaults
                  otherwise (q-GGMRF, ICD); skipped with a note when svmbir is missing

PSNR / SSIM / RMSE on HU images (``ctflow.metrics``); seconds = CPU time of the process
(``time.process_time``) with one thread, after a warm-up that loads the system matrices
(ctflow's and svmbir's),
plus the wall time (which a busy machine inflates).  Writes a Markdown report.  Usage:

    python scripts/bench_mbir.py [--size 256] [--views 60] [--photons 1e5]
                                 [--out docs/bench_mbir.md] [--no-svmbir]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ctflow  # noqa: E402
from ctflow.io.atomic import atomic_file  # noqa: E402
from ctflow.metrics import evaluate  # noqa: E402
from ctflow.operators import ParallelBeam2D  # noqa: E402
from ctflow.phantoms import phantom  # noqa: E402
from ctflow.simulate import noise_std  # noqa: E402
from ctflow.units import hu_to_mu, mu_to_hu  # noqa: E402

SVMBIR_FIGURE = "36.3 dB in 8.5 s (figure quoted in the issue, same problem)"


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float]:
    """fn()'s result, CPU seconds and wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def svmbir_recon(y: np.ndarray, op: ParallelBeam2D, photons: float) -> Callable[[], np.ndarray]:
    """svmbir on ctflow's geometry: its image axes are ctflow's transposed (checked by
    projecting the phantom with both: 3 % max difference, from the pixel models)."""
    import svmbir

    angles = np.asarray(op.geometry.angles, dtype=np.float64)
    sino = np.ascontiguousarray(y[:, None, :], dtype=np.float32)
    lib = Path(tempfile.gettempdir()) / "ctflow_bench_svmbir"
    kw = {"weight_type": "transmission", "sigma_y": 1.0 / np.sqrt(photons),
          "num_rows": op.geometry.image_size, "num_cols": op.geometry.image_size,
          "delta_channel": op.geometry.det_spacing_mm,
          "delta_pixel": op.geometry.pixel_size_mm, "num_threads": 1,
          "svmbir_lib_path": str(lib), "verbose": 0}
    svmbir.recon(sino, angles, max_iterations=1, **kw)  # warm-up: builds its system matrix

    def run() -> np.ndarray:
        return svmbir.recon(sino, angles, **kw)[0].T

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--photons", type=float, default=1e5)
    parser.add_argument("--out", default="docs/bench_mbir.md")
    parser.add_argument("--no-svmbir", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    gt = phantom("chest", args.size)
    x = torch.from_numpy(hu_to_mu(gt)).float()[None, None]
    op = ParallelBeam2D(image_size=args.size, views=args.views)
    y = ctflow.simulate(x, op, photons=args.photons, seed=0)
    sigma = noise_std(op(x), photons=args.photons)
    op.T(op(x))  # warm-up: the system matrices (MBIR's view subsets too) load before timing
    ctflow.reconstruct(y, op, method="mbir", photons=args.photons, iters=1)

    def ours(method: str, **opts) -> Callable[[], np.ndarray]:
        return lambda: ctflow.reconstruct(y, op, method=method, noise_std=sigma,
                                          **opts).image[0, 0].numpy()

    runs: dict[str, Callable[[], np.ndarray]] = {
        "fbp": ours("fbp"),
        "tv": ours("tv"),
        "tv-30": ours("tv", iters=30, tol=0.0),
        "tv-40": ours("tv", iters=40, tol=0.0),
        "tv-photons": ours("tv", photons=args.photons),
        "mbir": ours("mbir", photons=args.photons),
        "mbir-lbfgs": ours("mbir", photons=args.photons, solver="lbfgs"),
    }
    note = ""
    if args.no_svmbir:
        note = f"svmbir not run (--no-svmbir); quoted: {SVMBIR_FIGURE}."
    else:
        try:
            runs["svmbir"] = svmbir_recon(y[0, 0].numpy(), op, args.photons)
            from importlib.metadata import version

            note = (f"svmbir {version('svmbir')} (optional, not a ctflow dependency): "
                    f"transmission weights, σ_y = 1/√I0, other options at their defaults "
                    f"(stop_threshold 0.02 %, max_iterations 100), one thread.")
        except ImportError:
            note = f"svmbir is not installed; quoted: {SVMBIR_FIGURE}."
    rows = []
    for name, fn in runs.items():
        image, cpu, wall = timed(fn)
        scores = evaluate(mu_to_hu(image), gt)
        rows.append((name, scores, cpu, wall))
        print(f"{name:11s} PSNR {scores['psnr']:6.2f}  SSIM {scores['ssim']:.4f}  "
              f"RMSE {scores['rmse_hu']:7.2f} HU  cpu {cpu:6.2f} s  wall {wall:6.2f} s",
              flush=True)

    lines = [
        "# MBIR vs TV vs FBP" + (" vs svmbir" if "svmbir" in runs else ""),
        "",
        f"Chest phantom {args.size}², parallel beam, {args.views} views, Poisson "
        f"{args.photons:g} photons (seed 0); `python scripts/bench_mbir.py"
        f" --size {args.size} --views {args.views} --photons {args.photons:g}`.",
        "Seconds: CPU time of the process with one thread (torch and svmbir), after a "
        "warm-up that loads the system matrices (ctflow's, its MBIR view subsets' and "
        "svmbir's); wall time as measured (a shared, busy machine inflates it).",
        "",
        "| method | PSNR (dB) | SSIM | RMSE (HU) | CPU s | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name, s, cpu, wall in rows:
        lines.append(f"| {name} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['rmse_hu']:.2f} | "
                     f"{cpu:.2f} | {wall:.2f} |")
    if note:
        lines += ["", note]
    lines += ["", f"Machine: {platform.platform()}, {platform.processor() or 'cpu'}, "
              f"python {platform.python_version()}, torch {torch.__version__}."]
    with atomic_file(args.out, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
