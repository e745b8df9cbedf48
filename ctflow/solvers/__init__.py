"""Reconstruction methods, one module per method, looked up by name.

Every solver is a function

    solve(y, op, *, prior, noise_std, seed, progress, **options) -> SolverOutput

with y the measurements ``(B, C, *op.out_shape)`` in the operator's units; it returns the
image in the operator's input units.  The flow solvers also take ``context``, the call's
``context.TaskContext`` (``ctflow.reconstruct`` builds it once; None: the solver builds it).
Modules are imported only when their method is used.
Each registry entry declares the method's options (a frozen ``options.MethodOptions``
dataclass whose fields are the keyword options, validated on construction) and the
TypedDict of its ``info``; front-ends read options from there, never from signatures.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MethodError
from . import info as _info
from . import options as _opts

if TYPE_CHECKING:
    from .common import SolverOutput


@dataclass(frozen=True)
class SolverSpec:
    module: str
    function: str
    needs_prior: bool
    summary: str
    options: type[_opts.MethodOptions]  # the declared, validated keyword options
    info: type  # the TypedDict of SolverOutput.info


SOLVERS: dict[str, SolverSpec] = {
    "fbp": SolverSpec("classical", "fbp", False, "filtered back-projection (CT only)",
                      _opts.FbpOptions, _info.FbpInfo),
    "cgls": SolverSpec("classical", "cgls", False, "conjugate gradients on the normal equations",
                       _opts.CglsOptions, _info.KrylovInfo),
    "sirt": SolverSpec("classical", "sirt", False, "simultaneous iterative reconstruction",
                       _opts.SirtOptions, _info.KrylovInfo),
    "tv": SolverSpec("classical", "tv", False, "total variation, Chambolle–Pock primal–dual",
                     _opts.TvOptions, _info.TvInfo),
    "mbir": SolverSpec("mbir", "mbir", False,
                       "MBIR: weighted least squares + q-GGMRF prior (ordered subsets or L-BFGS-B)",
                       _opts.MbirOptions, _info.MbirInfo),
    "pigfm": SolverSpec("pigfm", "pigfm", True, "ΠGFM: Euler with pseudo-inverse guidance",
                        _opts.PigfmOptions, _info.GuidedInfo),
    "otode": SolverSpec("pigfm", "otode", True, "OT-ODE: ΠGFM guidance on the OT path",
                        _opts.OtodeOptions, _info.GuidedInfo),
    "conjugate": SolverSpec("conjugate", "conjugate", True,
                            "C-ΠGFM: conditional conjugate integrator for flows",
                            _opts.ConjugateOptions, _info.GuidedInfo),
    "conjugate-diffusion": SolverSpec("conjugate", "conjugate_diffusion", True,
                                      "C-ΠGDM: conjugate integrator on the VP-diffusion view",
                                      _opts.ConjugateDiffusionOptions, _info.GuidedInfo),
    "msflow": SolverSpec("msflow", "msflow", True, "MS-Flow: multiple shooting, constant memory",
                         _opts.MsflowOptions, _info.MsflowInfo),
    "dflow": SolverSpec("dflow", "dflow", True, "D-Flow: L-BFGS on the initial noise",
                        _opts.DflowOptions, _info.DflowInfo),
    "pnpflow": SolverSpec("pnpflow", "pnpflow", True, "PnP-Flow: plug-and-play flow denoiser",
                          _opts.PnpflowOptions, _info.BaselineInfo),
    "flowdps": SolverSpec("flowdps", "flowdps", True, "FlowDPS: decoupled posterior sampling",
                          _opts.FlowdpsOptions, _info.BaselineInfo),
    "dps": SolverSpec("dps", "dps", True, "DPS: diffusion posterior sampling (flow form)",
                      _opts.DpsOptions, _info.BaselineInfo),
    "flower": SolverSpec("flower", "flower", True, "Flower: proximal flow restoration",
                         _opts.FlowerOptions, _info.BaselineInfo),
}


def get_spec(method: str) -> SolverSpec:
    """The registry entry of a method name (no solver module imported); MethodError if
    unknown."""
    spec = SOLVERS.get(method)
    if spec is None:
        raise MethodError(f"unknown method {method!r}; choose one of {', '.join(SOLVERS)}")
    return spec


def validate_options(method: str, given: dict[str, Any]) -> _opts.MethodOptions:
    """``Options(**given)`` of a method: MethodError naming an unknown option or a bad
    value (see ``options.validate``)."""
    return _opts.validate(get_spec(method).options, given)


def get_solver(method: str) -> tuple[Callable[..., SolverOutput], SolverSpec]:
    """The solve function and spec of a method name; MethodError if unknown."""
    spec = get_spec(method)
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


__all__ = ["SOLVERS", "SolverOutput", "SolverSpec", "get_solver", "get_spec", "validate_options"]
