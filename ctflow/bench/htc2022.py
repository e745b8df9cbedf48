"""The HTC2022 real fan-beam measurement (scripts/check_htc2022.py): the measured sinogram of an
acrylic disc (``htc2022_ta.h5`` of the real-CT folder: 721 angles over 360°, 560 detectors,
post-log), the scanner's fan-beam geometry stated in the file, ctflow's reconstruction in the
units of the organisers' 512² FBP (μ times the pixel size) and its comparison with it.

Data: Helsinki Tomography Challenge 2022 open data, CC BY 4.0 (Meaney A. et al., Zenodo 2022).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from ..operators import FanBeam2D

FILE = "htc2022_ta.h5"


def load(folder: Path) -> dict:
    """Sinogram (the 360° duplicate of 0° dropped), angles (radians), geometry, reference."""
    with h5py.File(folder / FILE, "r") as fh:
        a = dict(fh.attrs)
        return {"sinogram": fh["sinogram"][:720].astype(np.float32),
                "angles": np.deg2rad(fh["angles_deg"][:720].astype(np.float64)),
                "reference": fh["reference_fbp"][()].astype(np.float64),
                "sod": float(a["distanceSourceOrigin"]), "sdd": float(a["distanceSourceDetector"]),
                "det": float(a["pixelSizePost"]), "pixel": float(a["effectivePixelSizePost"]),
                "det_count": int(a["numDetectorsPost"])}


def operator(data: dict, step: int) -> FanBeam2D:
    """The scanner's fan-beam geometry for every ``step``-th angle, 512² at the effective pixel."""
    return FanBeam2D(image_size=data["reference"].shape[0], views=data["angles"][::step],
                     source_origin_mm=data["sod"], origin_det_mm=data["sdd"] - data["sod"],
                     pixel_size_mm=data["pixel"], det_count=data["det_count"],
                     det_spacing_mm=data["det"])


def reconstruct(data: dict, step: int, method: str) -> tuple[np.ndarray, float]:
    """ctflow's reconstruction in reference units (μ·pixel) and its seconds."""
    from ..api import reconstruct as solve

    op = operator(data, step)
    y = torch.from_numpy(np.ascontiguousarray(data["sinogram"][::step]))[None, None]
    res = solve(y, op, method=method, consistency="off")
    return res.image[0, 0].double().numpy() * data["pixel"], res.seconds


def compare(image: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Correlation, amplitude ratio (least squares) and PSNR against the reference."""
    corr = float(np.corrcoef(image.ravel(), reference.ravel())[0, 1])
    ratio = float((image * reference).sum() / (image * image).sum())
    mse = float(np.mean((image - reference) ** 2))
    span = float(reference.max() - reference.min())
    return {"corr": corr, "ratio": ratio, "psnr": 10 * np.log10(span**2 / mse)}
