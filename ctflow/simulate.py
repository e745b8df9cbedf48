"""Sinogram (measurement) simulation with Gaussian or Poisson noise, reproducible by seed.

* noiseless:  y = A x
* Gaussian:   y = A x + σ·n,  σ = noise · RMS(A x)  (``noise`` is a relative std)
* Poisson:    counts ~ Poisson(I0·exp(−A x)),  counts ← max(counts, 0.5),
              y = −log(counts / I0)  (post-log line integrals; zero counts clamped)

:func:`simulate_volume` applies this slice by slice to an HU volume (μ = μ_water(1 + HU/1000)).

Solvers need the noise std of y (``ctflow.reconstruct(..., noise_std=σ)``): for simulated
data :func:`noise_std` gives it (``noise_std(op(x), photons=1e5)``; ``ctflow simulate``
stores it in the file); for measured CT data ``ctflow.reconstruct`` estimates it
(``ctflow.noise``) when it is not given.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InputError
from .operators import LinearOperator
from .units import hu_to_mu

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
    """The scalar noise std a solver should be told (``noise_std=``) for data simulated with
    these settings; ``clean`` is the noiseless sinogram ``op(x)``.  Poisson: √(mean exp(y)/I0)
    (:func:`poisson_std`); Gaussian: noise · RMS(clean); neither: 0."""
    if photons is not None:
        return poisson_std(clean, photons)
    if noise:
        return gaussian_std(clean, noise)
    return 0.0


def slice_seeds(seed: int, slices: int) -> list[int]:
    """Per-slice seeds of :func:`simulate_volume`: SeedSequence(seed).generate_state(slices)."""
    if slices == 0:
        return []
    return [int(v) for v in np.random.SeedSequence(int(seed)).generate_state(slices)]


def simulate_volume(
    hu_volume: np.ndarray,
    op: LinearOperator,
    photons: float | None = None,
    noise: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Sinograms (slices, *op.out_shape) float32 of an HU volume (slices, H, W), slice by slice.

    Slice k: y_k = simulate(hu_to_mu(HU_k), op, photons, noise, seed_k) with
    seed_k = slice_seeds(seed, slices)[k]; a 2-D image counts as one slice.  The relative
    Gaussian std is per slice (σ_k = noise · RMS(A μ_k)).
    """
    if not isinstance(op, LinearOperator):
        raise InputError(f"op must be a ctflow.operators.LinearOperator, got {type(op).__name__}")
    vol = np.asarray(hu_volume)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3 or tuple(vol.shape[1:]) != tuple(op.in_shape):
        raise InputError(f"HU volume of shape {np.shape(hu_volume)} does not match the operator's "
                         f"image shape {op.in_shape} (expected (slices, H, W))")
    if not np.issubdtype(vol.dtype, np.number) or np.iscomplexobj(vol):
        raise InputError(f"HU volume must be real numbers, got dtype {vol.dtype}")
    if not np.all(np.isfinite(vol)):
        raise InputError("HU volume contains NaN or Inf")
    out = np.empty((vol.shape[0], *op.out_shape), np.float32)
    seeds = slice_seeds(seed, vol.shape[0])
    for k in tqdm(range(vol.shape[0]), desc="simulate", unit="slice", disable=not progress):
        mu = torch.from_numpy(hu_to_mu(vol[k].astype(np.float32)))[None, None]
        out[k] = simulate(mu, op, photons=photons, noise=noise, seed=seeds[k])[0, 0].cpu().numpy()
    return out
