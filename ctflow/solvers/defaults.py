"""Pieces shared by the flow baselines (PnP-Flow, FlowDPS, DPS, Flower): option checks,
seeded noise and the two scale constants.

Scale conventions shared by the baselines (model space, see ``common.py``):

* step sizes on the data term ½‖Ax − y‖² are given relative to its Lipschitz constant
  L = ‖A‖₂², estimated by power iteration (:func:`lipschitz`);
* where σ² divides, noiseless data use the floor σ_min = SIGMA_FLOOR_REL·‖A‖₂
  (:func:`effective_sigma`): the data noise an image error of 1e-3 would cause along A's
  strongest direction.
"""

from __future__ import annotations

import torch

from ..errors import MethodError
from ..integrators import noise_stream, randn_like  # noqa: F401 (the baselines' noise)
from ..operators import LinearOperator

METHODS = ("pnpflow", "flowdps", "dps", "flower")
SIGMA_FLOOR_REL = 1e-3
POWER_ITERS = 30


def lipschitz(op: LinearOperator, like: torch.Tensor) -> float:
    """L = ‖A‖₂² (power iteration, fixed seed) of the data term ½‖Ax − y‖²."""
    norm = op.norm(iters=POWER_ITERS, seed=0, device=like.device)
    if not norm > 0:
        raise MethodError("the operator is zero (‖A‖ = 0): nothing to reconstruct")
    return norm * norm


def effective_sigma(sigma: float, lip: float) -> float:
    """max(σ, SIGMA_FLOOR_REL·‖A‖₂): the model-space noise std used where σ² divides."""
    return max(float(sigma), SIGMA_FLOOR_REL * lip**0.5)


def check_positive(method: str, **values: float) -> None:
    """MethodError unless every value is a finite number > 0."""
    for name, value in values.items():
        if not _is_number(value) or not 0 < float(value) < float("inf"):
            raise MethodError(f"{method}: option {name} must be a positive number, got {value!r}")


def check_nonnegative(method: str, **values: float) -> None:
    """MethodError unless every value is a finite number >= 0."""
    for name, value in values.items():
        if not _is_number(value) or not 0 <= float(value) < float("inf"):
            raise MethodError(f"{method}: option {name} must be a number >= 0, got {value!r}")


def check_int(method: str, name: str, value: int, minimum: int) -> int:
    """MethodError unless value is an integer >= minimum; returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MethodError(f"{method}: option {name} must be an integer >= {minimum}, "
                          f"got {value!r}")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_steps(method: str, nfe: int, per_step: int = 1) -> int:
    """Number of steps that fit in an NFE budget of ``nfe`` at ``per_step`` NFE a step."""
    return check_int(method, "nfe", nfe, per_step) // per_step

