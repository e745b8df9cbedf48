"""Reconstruction methods, one module per method, looked up by name.

Every solver is a function

    solve(y, op, *, prior, noise_std, seed, progress, **options) -> SolverOutput

with y the measurements ``(B, C, *op.out_shape)`` in the operator's units; it returns the
image in the operator's input units.  Modules are imported only when their method is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MethodError

if TYPE_CHECKING:
    from .common import SolverOutput


@dataclass(frozen=True)
class SolverSpec:
    module: str
    function: str
    needs_prior: bool
    summary: str


SOLVERS: dict[str, SolverSpec] = {
    "fbp": SolverSpec("classical", "fbp", False, "filtered back-projection (CT only)"),
    "cgls": SolverSpec("classical", "cgls", False, "conjugate gradients on the normal equations"),
    "sirt": SolverSpec("classical", "sirt", False, "simultaneous iterative reconstruction"),
    "tv": SolverSpec("classical", "tv", False, "total variation, Chambolle–Pock primal–dual"),
    "mbir": SolverSpec("mbir", "mbir", False,
                       "MBIR: weighted least squares + q-GGMRF prior (L-BFGS-B)"),
    "pigfm": SolverSpec("pigfm", "pigfm", True, "ΠGFM: Euler with pseudo-inverse guidance"),
    "otode": SolverSpec("pigfm", "otode", True, "OT-ODE: ΠGFM guidance on the OT path"),
    "conjugate": SolverSpec("conjugate", "conjugate", True,
                            "C-ΠGFM: conditional conjugate integrator for flows"),
    "conjugate-diffusion": SolverSpec("conjugate", "conjugate_diffusion", True,
                                      "C-ΠGDM: conjugate integrator on the VP-diffusion view"),
    "msflow": SolverSpec("msflow", "msflow", True, "MS-Flow: multiple shooting, constant memory"),
    "dflow": SolverSpec("dflow", "dflow", True, "D-Flow: L-BFGS on the initial noise"),
    "pnpflow": SolverSpec("pnpflow", "pnpflow", True, "PnP-Flow: plug-and-play flow denoiser"),
    "flowdps": SolverSpec("flowdps", "flowdps", True, "FlowDPS: decoupled posterior sampling"),
    "dps": SolverSpec("dps", "dps", True, "DPS: diffusion posterior sampling (flow form)"),
    "flower": SolverSpec("flower", "flower", True, "Flower: proximal flow restoration"),
}


def get_solver(method: str) -> tuple[Callable[..., SolverOutput], SolverSpec]:
    """The solve function and spec of a method name; MethodError if unknown."""
    spec = SOLVERS.get(method)
    if spec is None:
        raise MethodError(f"unknown method {method!r}; choose one of {', '.join(SOLVERS)}")
    try:
        module = importlib.import_module(f"{__name__}.{spec.module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{spec.module}":
            raise
        raise MethodError(f"method {method!r} is not available in this build") from exc
    return getattr(module, spec.function), spec


def __getattr__(name: str) -> Any:
    """``SolverOutput`` is imported on use, so the registry loads without torch (CLI help)."""
    if name == "SolverOutput":
        from .common import SolverOutput

        return SolverOutput
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SOLVERS", "SolverOutput", "SolverSpec", "get_solver"]
