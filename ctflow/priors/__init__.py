"""Flow-matching priors: the solver-facing interface, exact toy priors, learned networks."""

from .base import Prior
from .gaussian import GaussianPrior

__all__ = [
    "FlowPrior",
    "GaussianPrior",
    "Prior",
    "list_priors",
    "load_checkpoint",
    "load_prior",
    "save_checkpoint",
    "save_prior",
]


def __getattr__(name: str):  # learned priors import diffusers: load them on first use
    if name == "FlowPrior":
        from .flow import FlowPrior

        return FlowPrior
    if name in ("load_checkpoint", "save_checkpoint", "save_prior"):
        from . import checkpoint

        return getattr(checkpoint, name)
    if name in ("load_prior", "list_priors"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
