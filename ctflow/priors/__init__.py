"""Flow-matching priors: the solver-facing interface, exact toy priors, learned networks."""

from .base import Prior
from .gaussian import GaussianPrior

__all__ = ["GaussianPrior", "Prior"]
