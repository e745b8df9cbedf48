"""Write the small example inputs shipped in data/examples/.

* chest128_60v.h5       chest phantom, 128², 1 mm pixels, parallel beam, 60 views, noiseless
* chest128_60v_1e5.h5   the same with Poisson noise, 1e5 photons per ray (seed 0)
* chest64_60v.h5, chest64_60v_1e5.h5   the same at 64² (the size of the default prior)
* phantom_series/       a 3-slice DICOM CT series of abdomen phantoms (seeds 0, 1, 2),
                        128², 1 mm pixels, 2.5 mm slice spacing

The sinogram files are made by the ``ctflow simulate`` command itself.  Usage:
    python scripts/make_examples.py [--out data/examples]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ctflow.cli import main as ctflow
from ctflow.io.dicom import write_series
from ctflow.phantoms import phantom

ROOT = Path(__file__).resolve().parent.parent


def make(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for size in (128, 64):
        base = ["simulate", "--phantom", "chest", "--size", str(size), "--views", "60",
                "--seed", "0", "--overwrite"]
        if ctflow(base + ["-o", str(out / f"chest{size}_60v.h5")]) != 0:
            raise SystemExit(f"simulate {size}² (noiseless) failed")
        if ctflow(base + ["--photons", "1e5", "-o", str(out / f"chest{size}_60v_1e5.h5")]) != 0:
            raise SystemExit(f"simulate {size}² (1e5 photons) failed")
    hu = np.stack([phantom("abdomen", 128, seed) for seed in range(3)])
    write_series(out / "phantom_series", hu, pixel_spacing_mm=1.0, slice_spacing_mm=2.5,
                 method="phantom", views=0, series_description="ctflow abdomen phantom",
                 overwrite=True, derivation="ctflow procedural abdomen phantom, seeds 0-2")
    return sorted(p for p in out.rglob("*") if p.is_file())


if __name__ == "__main__":
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "examples",
                        help="folder the examples are written to (default: data/examples of "
                             "the source tree)")
    for path in make(parser.parse_args().out):
        print(f"{path.stat().st_size:>9} bytes  {path.name}")
