"""ctflow: CT reconstruction with exact projection operators and flow-matching priors.

The public functions are imported on first use, so ``import ctflow`` (and the ``ctflow``
command's start-up) does not import torch until something needs it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Reconstruction", "__version__", "load_prior", "reconstruct", "simulate"]

_LAZY = {"Reconstruction": "ctflow.api", "load_prior": "ctflow.api",
         "reconstruct": "ctflow.api"}

if TYPE_CHECKING:
    from .api import Reconstruction, load_prior, reconstruct
    from .simulate import simulate


def __getattr__(name: str) -> Any:
    """``ctflow.reconstruct`` etc.: import the defining module on first access."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ctflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """ctflow's module type.  ``ctflow.simulate`` is the function, although the submodule
    ``ctflow.simulate`` has the same name (importing a submodule sets the package attribute
    of that name to the module; this property keeps the function in its place)."""

    @property
    def simulate(self) -> Any:
        override = self.__dict__.get("_simulate_override")
        if override is not None:
            return override
        return importlib.import_module("ctflow.simulate").simulate

    @simulate.setter
    def simulate(self, value: Any) -> None:
        if not isinstance(value, types.ModuleType):  # e.g. a test's monkeypatch
            self.__dict__["_simulate_override"] = value


sys.modules[__name__].__class__ = _Package
