"""Sinogram (measurement) simulation with Gaussian or Poisson noise, reproducible by seed.

* noiseless:  y = A x
* Gaussian:   y = A x + σ·n,  σ = noise · RMS(A x)  (``noise`` is a relative std)
* Poisson:    counts ~ Poisson(I0·exp(−A x)),  counts ← max(counts, 0.5),
              y = −log(counts / I0)  (post-log line integrals; zero counts clamped)
"""

from __future__ import annotations

import math

import torch

from .errors import InputError
from .operators import LinearOperator

ZERO_COUNT_CLAMP = 0.5


def simulate(
    x: torch.Tensor,
    op: LinearOperator,
    photons: float | None = None,
    noise: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Measurements of image x (operator units, e.g. μ in 1/mm) with optional noise."""
    if photons is not None and noise is not None:
        raise InputError("give either photons (Poisson) or noise (Gaussian), not both")
    if photons is not None and not photons > 0:
        raise InputError(f"photons must be positive, got {photons}")
    if noise is not None and not noise >= 0:
        raise InputError(f"noise must be >= 0, got {noise}")
    with torch.no_grad():
        clean = op(x)
    if photons is None and not noise:
        return clean
    gen = torch.Generator().manual_seed(int(seed))
    if photons is not None:
        rate = (photons * torch.exp(-clean.double())).cpu()
        counts = torch.poisson(rate, generator=gen).clamp_min(ZERO_COUNT_CLAMP)
        return (-torch.log(counts / photons)).to(clean.device, clean.dtype)
    sigma = gaussian_std(clean, float(noise))
    n = torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    return clean + (sigma * n).to(clean.device, clean.dtype)


def gaussian_std(clean: torch.Tensor, noise: float) -> float:
    """σ = noise · RMS(y_clean) of the relative Gaussian model."""
    return float(noise) * float(clean.double().pow(2).mean().sqrt())


def poisson_std(clean: torch.Tensor, photons: float) -> float:
    """Scalar std of post-log Poisson noise: Var(y_i) ≈ exp(y_i)/I0, averaged over rays."""
    return math.sqrt(float(torch.exp(clean.double()).mean()) / float(photons))


def noise_std(clean: torch.Tensor, photons: float | None = None,
              noise: float | None = None) -> float:
    """The scalar noise std a solver should be told for data simulated with these settings."""
    if photons is not None:
        return poisson_std(clean, photons)
    if noise:
        return gaussian_std(clean, noise)
    return 0.0
