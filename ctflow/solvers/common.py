"""Pieces shared by the solvers: their output record and the model-space problem.

A prior works on x_m = a·μ + b.  With y = A μ + η (noise std σ) the same data in model
space are  y_m = a·y + b·A𝟙 = A x_m + a·η,  noise std a·σ.  Flow solvers solve that
problem and map the result back with μ = (x_m − b)/a.  Pre-log Poisson data carry
relative per-ray weights W̃ (``weights.py``; the noise covariance is σ²W̃⁻¹): the affine map
scales σ and leaves W̃ unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..integrators import seeded_noise
from ..operators import LinearOperator
from ..priors.base import Prior


@dataclass
class SolverOutput:
    image: torch.Tensor  # (B, C, H, W) in the operator's input units
    nfe: int = 0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelProblem:
    y: torch.Tensor  # model-space measurements a·y + b·A𝟙
    op: LinearOperator
    noise_std: float  # model-space noise std a·σ (0 for noiseless)
    prior: Prior
    weights: torch.Tensor | None = None  # relative inverse variances W̃ (None: white noise)

    def to_physical(self, x: torch.Tensor) -> torch.Tensor:
        return self.prior.to_physical(x)


def model_problem(
    y: torch.Tensor, op: LinearOperator, prior: Prior, noise_std: float | None,
    weights: torch.Tensor | None = None,
) -> ModelProblem:
    """Express y = A μ + η in the prior's model space (see module docstring); ``weights``
    the relative per-ray weights W̃ of pre-log Poisson data (``weights.poisson_weights``)."""
    ones = torch.ones(1, 1, *op.in_shape, dtype=y.dtype, device=y.device)
    with torch.no_grad():
        y_m = prior.scale * y + prior.offset * op(ones)
    sigma = 0.0 if noise_std is None else float(noise_std) * abs(prior.scale)
    return ModelProblem(y=y_m, op=op, noise_std=sigma, prior=prior, weights=weights)


__all__ = ["ModelProblem", "SolverOutput", "model_problem", "seeded_noise"]
