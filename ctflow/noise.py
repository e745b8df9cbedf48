"""Estimate the noise level of CT measurements when the caller does not know it.

Two estimators of the standard deviation σ of white measurement noise η in y = A x + η:

* **range residual** (over-determined geometries with an exact pseudo-inverse): the part of
  y outside range(A) is pure noise, r = y − A A⁺y = (I − U_r U_rᵀ) η, so
  E‖r‖² = σ² (m − rank) and σ̂ = ‖r‖ / √(m − rank).  Used when m − rank ≥ MIN_DOF_FRACTION·m
  and the operator's projector is exact (the truncated SVD or the symmetric route).
* **detector second differences** (always available): along the detector axis,
  d_j = (y_{j−1} − 2 y_j + y_{j+1}) / √6 has std σ for white noise, while a sinogram is
  smooth there except at a few edges, which the median ignores:
  σ̂ = median|d| / 0.6745 (the Gaussian MAD scale), over every view, slice and channel.

Below NOISELESS_REL·RMS(y) an estimate is reported as 0 (noiseless: simulated data in float32
leave about 1e-6·RMS(y) there).  The symmetric projector route's range is that of the
symmetrised matrix A_s, which differs from the operator's A by ~1e-4 relative, so noiseless
data leave (A − A_s)x outside it: up to 1.2e-4·RMS(y) measured (fan beam, 256², real slices)
— there the floor is NOISELESS_REL_SYM (real 1e6-photon noise still measures ≥ 4.8e-4).
For Poisson data the estimate is an average over rays; the pre-log model with per-ray
weights is the accurate one where the photon count is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MIN_DOF_FRACTION = 0.1
NOISELESS_REL = 1e-4
NOISELESS_REL_SYM = 3e-4
MAD_SCALE = 0.6744897501960817  # median |N(0, 1)|


@dataclass(frozen=True)
class NoiseEstimate:
    """σ̂ (0 = treated as noiseless), the estimator used and its degrees of freedom."""

    sigma: float
    method: str
    dof: int

    def describe(self) -> str:
        return f"noise std {self.sigma:.4g} estimated from the data ({self.method}, {self.dof} dof)"


def residual_std(y: torch.Tensor, op) -> NoiseEstimate | None:
    """‖y − A A⁺y‖ / √(m − rank), or None when the geometry leaves too few degrees of freedom
    or the operator has no exact SVD projector."""
    route = getattr(op, "projection_method", None)
    if route not in ("svd", "sym"):
        return None
    m = math.prod(op.out_shape)
    dof = m - int((op.svd() if route == "svd" else op.sym()).rank)
    if dof < MIN_DOF_FRACTION * m:
        return None
    with torch.no_grad():
        r = y.double() - op(op.pinv(y).to(y.dtype)).double()
    sigma = float(r.flatten(1).norm(dim=1).pow(2).sum() / (dof * r.shape[0] * r.shape[1])) ** 0.5
    return NoiseEstimate(sigma, "range residual", dof * y.shape[0] * y.shape[1])


def detector_mad_std(y: torch.Tensor) -> NoiseEstimate:
    """median|second difference along the detector| / (0.6745·√6)."""
    d = (y[..., :-2] - 2 * y[..., 1:-1] + y[..., 2:]).double() / math.sqrt(6.0)
    sigma = float(d.abs().median()) / MAD_SCALE
    return NoiseEstimate(sigma, "detector second differences", d.numel())


def estimate_noise_std(y: torch.Tensor, op) -> NoiseEstimate:
    """σ̂ of y's noise (range residual where possible, else detector differences); 0 when
    it is below NOISELESS_REL·RMS(y)."""
    est = residual_std(y, op) or detector_mad_std(y)
    rms = float(y.double().pow(2).mean().sqrt())
    sym = est.method == "range residual" and getattr(op, "projection_method", None) == "sym"
    if not est.sigma > (NOISELESS_REL_SYM if sym else NOISELESS_REL) * rms:
        return NoiseEstimate(0.0, est.method, est.dof)
    return est
