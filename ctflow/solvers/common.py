"""Pieces shared by the solvers: their output record and the model-space problem.

A prior works on x_m = a·μ + b.  With y = A μ + η (noise std σ) the same data in model
space are  y_m = a·y + b·A𝟙 = A x_m + a·η,  noise std a·σ.  Flow solvers solve that
problem and map the result back with μ = (x_m − b)/a.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import MethodError
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

    def to_physical(self, x: torch.Tensor) -> torch.Tensor:
        return self.prior.to_physical(x)


def model_problem(
    y: torch.Tensor, op: LinearOperator, prior: Prior, noise_std: float | None
) -> ModelProblem:
    """Express y = A μ + η in the prior's model space (see module docstring)."""
    ones = torch.ones(1, 1, *op.in_shape, dtype=y.dtype, device=y.device)
    with torch.no_grad():
        y_m = prior.scale * y + prior.offset * op(ones)
    sigma = 0.0 if noise_std is None else float(noise_std) * abs(prior.scale)
    return ModelProblem(y=y_m, op=op, noise_std=sigma, prior=prior)


def seeded_noise(shape: tuple[int, ...], seed: int, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise from a CPU generator (same seed, same noise on any device)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(like.device, like.dtype)


# Task families whose tuned defaults the flow solvers keep (see the *_defaults.json files).
FAMILIES = ("ct", "inpainting", "sr", "blur")
_FAMILY_OF_CLASS = {"ParallelBeam2D": "ct", "FanBeam2D": "ct", "Inpainting": "inpainting",
                    "SuperResolution": "sr", "GaussianBlur": "blur"}


def check_family(task_family: str | None) -> str | None:
    """``task_family`` itself if it is None or a known family; MethodError otherwise."""
    if task_family is not None and task_family not in FAMILIES:
        raise MethodError(f"unknown task_family {task_family!r}; choose one of "
                          f"{', '.join(FAMILIES)} or None")
    return task_family


def operator_family(op: LinearOperator) -> str | None:
    """Task family of an operator from its class (or a base class) name; None if unknown."""
    for cls in type(op).__mro__:
        if cls.__name__ in _FAMILY_OF_CLASS:
            return _FAMILY_OF_CLASS[cls.__name__]
    return None


# Image size at which the defaults tables' family settings were tuned; settings tuned at
# another size say so, and a call takes those of the tuned size nearest to its image.
TUNED_SIZE = 64


def nearest_size(tuned: set[int], size: int) -> int:
    """The tuned image size nearest to ``size`` (the smaller on a tie)."""
    return min(tuned, key=lambda n: (abs(n - size), n))


SCATTERED = "scattered"


def mask_kind(op: LinearOperator) -> str | None:
    """"scattered" for an inpainting operator whose holes are mostly next to data
    (``Inpainting.scattered``: 70 % random masks), else None (boxes, other operators);
    the tuned-defaults tables keep separate settings for scattered masks."""
    return SCATTERED if bool(getattr(op, "scattered", False)) else None
