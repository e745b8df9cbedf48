"""The declared options of every method: a frozen dataclass per method, validated on
construction, whose fields are the solver's keyword options with the same defaults (None:
resolved later from the prior's presets or the method's generic defaults).

Front-ends (``ctflow.reconstruct``, the CLI's ``--opt`` and ``--help``, the benchmarks) read
the option names and defaults from here (``dataclasses.fields``) and validate a call with
``Options(**given)``; the solvers keep their keyword signatures and their own checks.  Each
field's ``metadata["check"]`` is a :class:`Check`; a failing value raises MethodError naming
the option.  Torch-free, so the registry and ``--help`` load without it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..errors import MethodError

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")  # = ctflow.operators FILTERS
FAMILIES = ("ct", "inpainting", "sr", "blur")  # = ctflow.priors.presets.FAMILIES
MSFLOW_INITS = ("inverse", "noise", "rollout", "conjugate")
DFLOW_INITS = ("inverse", "noise", "conjugate")


@dataclass(frozen=True)
class Check:
    """What a value must be: ``kind`` int/num/bool/choice (None allowed when ``nullable``);
    numbers within [low, high] (``open`` ends excluded), finite; choices in ``choices``."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` fails this check (None if it passes)."""
        if value is None:
            return None if self.nullable else "must be given"
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "choice":
            return None if value in self.choices and not isinstance(value, bool) else \
                f"must be one of {', '.join(map(repr, self.choices))}"
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(float(value)):
            return "must be a finite number"
        if self.kind == "int" and not float(value).is_integer():
            return "must be an integer"
        return self._range_problem(float(value))

    def _range_problem(self, v: float) -> str | None:
        low_bad = self.low is not None and (v <= self.low if self.low_open else v < self.low)
        high_bad = self.high is not None and (v >= self.high if self.high_open else v > self.high)
        if not (low_bad or high_bad):
            return None
        lo = "(-inf" if self.low is None else ("(" if self.low_open else "[") + f"{self.low:g}"
        hi = "inf)" if self.high is None else f"{self.high:g}" + (")" if self.high_open else "]")
        return f"must lie in {lo}, {hi}"


def opt(default: Any, kind: str, **check: Any) -> Any:
    """A dataclass field with ``default`` and its :class:`Check` (nullable if default None)."""
    check.setdefault("nullable", default is None)
    return field(default=default, metadata={"check": Check(kind, **check)})


def _count(default: int | None, low: int = 1) -> Any:
    return opt(default, "int", low=low)


def _num(default: float | None, low: float | None = None, **kw: Any) -> Any:
    return opt(default, "num", low=low, **kw)


@dataclass(frozen=True)
class MethodOptions:
    """Base of every method's Options: checks each field on construction."""

    method: ClassVar[str] = "(method)"

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("check")
            why = None if check is None else check.problem(getattr(self, f.name))
            if why is not None:
                raise MethodError(f"{self.method}: option {f.name} {why}, "
                                  f"got {getattr(self, f.name)!r}")

    def given(self) -> dict[str, Any]:
        """The options that differ from their declared defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != f.default}


def option_names(options: type[MethodOptions]) -> tuple[str, ...]:
    """The option names of an Options class, in declaration order."""
    return tuple(f.name for f in fields(options))


def option_defaults(options: type[MethodOptions]) -> dict[str, Any]:
    """name → declared default (None: resolved by the method) of an Options class."""
    return {f.name: f.default for f in fields(options)}


def validate(options: type[MethodOptions], given: dict[str, Any]) -> MethodOptions:
    """``options(**given)``: MethodError naming unknown options or the first bad value."""
    unknown = [k for k in given if k not in option_names(options)]
    if unknown:
        raise MethodError(f"method {options.method!r} takes no option(s) {', '.join(unknown)}")
    return options(**given)



# -- classical methods ---------------------------------------------------------------------
@dataclass(frozen=True)
class FbpOptions(MethodOptions):
    method: ClassVar[str] = "fbp"
    filter: str = opt("ram-lak", "choice", choices=FILTERS)


@dataclass(frozen=True)
class CglsOptions(MethodOptions):
    method: ClassVar[str] = "cgls"
    iters: int = _count(30)
    tol: float = _num(1e-8, 0.0)
    discrepancy: float = _num(1.0, 0.0)


@dataclass(frozen=True)
class SirtOptions(MethodOptions):
    method: ClassVar[str] = "sirt"
    iters: int = _count(100)
    nonneg: bool = opt(True, "bool")
    discrepancy: float = _num(1.0, 0.0)


@dataclass(frozen=True)
class TvOptions(MethodOptions):
    method: ClassVar[str] = "tv"
    iters: int = _count(300)
    lam: float | None = _num(None, 0.0)
    nonneg: bool = opt(True, "bool")
    log_every: int = _count(10)
    photons: float | None = _num(None, 0.0, low_open=True)
    electronic_noise: float = _num(0.0, 0.0)
    precondition: str = opt("auto", "choice", choices=("auto", "ramp", "none"))
    init: str = opt("auto", "choice", choices=("auto", "fbp", "zeros"))
    tol: float | None = _num(None, 0.0)
    step_ratio: float | None = _num(None, 0.0, low_open=True)
    relaxation: float | None = _num(None, 0.0, low_open=True, high=2.0, high_open=True)


@dataclass(frozen=True)
class MbirOptions(MethodOptions):
    method: ClassVar[str] = "mbir"
    photons: float | None = _num(None, 0.0, low_open=True)
    electronic_noise: float = _num(0.0, 0.0)
    beta: float = _num(0.004, 0.0, low_open=True)
    delta: float = _num(0.03, 0.0, low_open=True)
    q: float = _num(1.2, 1.0, high=2.0)
    iters: int | None = _count(None)
    nonneg: bool = opt(True, "bool")
    init: str = opt("fbp", "choice", choices=("fbp", "zeros"))
    tol: float = _num(1e-9, 0.0)
    solver: str = opt("auto", "choice", choices=("auto", "os", "lbfgs"))
    subsets: int | None = _count(None)


# -- flow methods (None: from the prior's presets, else the method's generic defaults) -----
def _family() -> Any:
    return opt(None, "choice", choices=FAMILIES)


@dataclass(frozen=True)
class PigfmOptions(MethodOptions):
    method: ClassVar[str] = "pigfm"
    nfe: int = _count(5)
    w: float | None = _num(None)
    tau: float | None = _num(None, 0.0, high=1.0, high_open=True)
    jacobian: bool | None = opt(None, "bool")
    rho_scale: float | None = _num(None, 0.0, low_open=True)
    temperature: float | None = _num(None, 0.0)
    task_family: str | None = _family()
    photons: float | None = _num(None, 0.0, low_open=True)
    electronic_noise: float = _num(0.0, 0.0)


@dataclass(frozen=True)
class OtodeOptions(MethodOptions):
    method: ClassVar[str] = "otode"
    nfe: int = _count(10)
    t0: float | None = _num(None, 0.0, low_open=True, high=1.0, high_open=True)
    gamma: float | None = _num(None)
    jacobian: bool | None = opt(None, "bool")
    rho_scale: float | None = _num(None, 0.0, low_open=True)
    temperature: float | None = _num(None, 0.0)
    task_family: str | None = _family()
    photons: float | None = _num(None, 0.0, low_open=True)
    electronic_noise: float = _num(0.0, 0.0)


@dataclass(frozen=True)
class ConjugateOptions(MethodOptions):
    method: ClassVar[str] = "conjugate"
    nfe: int = _count(5)
    w: float | None = _num(None)
    lam: float | None = _num(None)
    tau: float | None = _num(None, 0.0, high=1.0, high_open=True)
    jacobian: bool | None = opt(None, "bool")
    rho_scale: float | None = _num(None, 0.0, low_open=True)
    order: int | None = opt(None, "choice", choices=(1, 2))
    temperature: float | None = _num(None, 0.0)
    task_family: str | None = _family()
    photons: float | None = _num(None, 0.0, low_open=True)
    electronic_noise: float = _num(0.0, 0.0)


@dataclass(frozen=True)
class ConjugateDiffusionOptions(ConjugateOptions):
    method: ClassVar[str] = "conjugate-diffusion"
    tau: float | None = _num(None, 0.0, low_open=True, high=1.0, high_open=True)


@dataclass(frozen=True)
class MsflowOptions(MethodOptions):
    method: ClassVar[str] = "msflow"
    task_family: str | None = _family()
    shooting: int | None = _count(None)
    segment_steps: int | None = _count(None)
    iters: int | None = _count(None, 0)
    mu: float | None = _num(None, 0.0, low_open=True)
    lam: float | None = _num(None, 0.0)
    init: str | None = opt(None, "choice", choices=MSFLOW_INITS)
    eta: float | None = _num(None, 0.0, low_open=True)
    mu_growth: float | None = _num(None, 1.0)
    mu_max: float | None = _num(None, 0.0, low_open=True)
    backtracks: int = _count(3, 0)
    cg_tol: float = _num(1e-4, 0.0)
    cg_iters: int = _count(30, 0)
    nfe: int | None = _count(None)
    photons: float | None = _num(None, 0.0, low_open=True)
    electronic_noise: float = _num(0.0, 0.0)


@dataclass(frozen=True)
class DflowOptions(MethodOptions):
    method: ClassVar[str] = "dflow"
    task_family: str | None = _family()
    steps: int | None = _count(None)
    iters: int | None = _count(None)
    lam: float | None = _num(None, 0.0)
    init: str | None = opt(None, "choice", choices=DFLOW_INITS)
    lr: float = _num(1.0, 0.0, low_open=True)
    history_size: int = _count(10)
    nfe: int | None = _count(None)


@dataclass(frozen=True)
class PnpflowOptions(MethodOptions):
    method: ClassVar[str] = "pnpflow"
    nfe: int | None = _count(None)
    samples: int | None = _count(None)
    gamma: float | None = _num(None, 0.0, low_open=True)
    alpha: float | None = _num(None, 0.0)
    task_family: str | None = _family()


@dataclass(frozen=True)
class FlowdpsOptions(MethodOptions):
    method: ClassVar[str] = "flowdps"
    nfe: int | None = _count(None)
    dc_steps: int | None = _count(None, 0)
    eta: float | None = _num(None, 0.0, low_open=True)
    task_family: str | None = _family()


@dataclass(frozen=True)
class DpsOptions(MethodOptions):
    method: ClassVar[str] = "dps"
    nfe: int | None = _count(None, 2)
    zeta: float | None = _num(None, 0.0, low_open=True)
    task_family: str | None = _family()


@dataclass(frozen=True)
class FlowerOptions(MethodOptions):
    method: ClassVar[str] = "flower"
    nfe: int | None = _count(None)
    nu_scale: float | None = _num(None, 0.0, low_open=True)
    cg_iters: int | None = _count(None)
    task_family: str | None = _family()
