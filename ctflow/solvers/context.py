"""The task context of a call and the options it resolves to.

A :class:`TaskContext` says what kind of problem a solver faces — task family, noisy data or
not, mask kind, image size — and is built once per call (:func:`task_context`).
``ctflow.reconstruct`` builds it, after consistency screening, from the screened operator,
the noise level it passes (given or estimated; ``photons`` make it noisy, as the solver then
takes a positive level from the counts) and the ``task_family`` option; it reports it in
``info["context"]`` and hands it to the flow solvers as their ``context`` keyword (the
classical solvers select no presets and are not given one).  A flow solver called directly
without a context builds it the same way (:func:`call_context`); one given a context builds
none and passes it on to its warm start.

Every flow solver resolves its options the same way (:func:`resolve_options`): the method's
generic defaults, overlaid by the record of the *prior's* presets that the precedence rule of
``ctflow.priors.presets`` selects for the context and budget, overlaid by the options the
caller gave.  Tuned values are therefore always those tuned with the prior in use; a prior
without presets gets the generic defaults and a logged warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import MethodError
from ..operators import LinearOperator
from ..priors.base import Prior
from ..priors.presets import FAMILIES, select_record

log = logging.getLogger("ctflow.solvers")

SCATTERED = "scattered"
# An inpainting mask is "scattered" when more than this share of its missing pixels have an
# observed 4-neighbour (70 % random masks: 0.78 at 64²; a 16×16 box at 64²: 0.23).
SCATTERED_EDGE_FRACTION = 0.5


@dataclass(frozen=True)
class TaskContext:
    """What selects tuned presets: task family, noisy data, mask kind, image size."""

    family: str | None
    noisy: bool
    mask: str | None
    size: int


def check_family(task_family: str | None) -> str | None:
    """``task_family`` itself if it is None or a known family; MethodError otherwise."""
    if task_family is not None and task_family not in FAMILIES:
        raise MethodError(f"unknown task_family {task_family!r}; choose one of "
                          f"{', '.join(FAMILIES)} or None")
    return task_family


def operator_family(op: LinearOperator) -> str | None:
    """The operator's task family (its class attribute ``family``; None if unknown)."""
    family = getattr(op, "family", None)
    return family if family in FAMILIES else None


def edge_fraction(mask: torch.Tensor) -> float:
    """Share of the missing pixels (False) of a 2-D bool mask with at least one observed
    4-neighbour (1.0 if none is missing)."""
    missing = ~mask
    if not bool(missing.any()):
        return 1.0
    m = torch.nn.functional.pad(mask.float()[None, None], (1, 1, 1, 1))[0, 0]
    neighbours = m[:-2, 1:-1] + m[2:, 1:-1] + m[1:-1, :-2] + m[1:-1, 2:]
    return float((neighbours[missing] > 0).float().mean())


def mask_kind(op: LinearOperator) -> str | None:
    """"scattered" for an inpainting mask whose holes are mostly single pixels next to data
    (edge fraction > SCATTERED_EDGE_FRACTION), else None (boxes, other operators)."""
    mask = getattr(op, "mask", None)
    if operator_family(op) != "inpainting" or not isinstance(mask, torch.Tensor):
        return None
    return SCATTERED if edge_fraction(mask.bool()) > SCATTERED_EDGE_FRACTION else None


def task_context(op: LinearOperator, task_family: str | None = None,
                 noise_std: float | None = None, photons: float | None = None) -> TaskContext:
    """The context of a call: ``task_family`` if given (checked), else the operator's;
    noisy when ``noise_std`` is nonzero or ``photons`` is given (the solver's level then comes
    from the counts and is positive)."""
    family = check_family(task_family) or operator_family(op)
    return TaskContext(family=family, noisy=bool(noise_std) or photons is not None,
                       mask=mask_kind(op), size=int(op.in_shape[-1]))


def call_context(context: TaskContext | None, op: LinearOperator, task_family: str | None,
                 noise_std: float | None) -> TaskContext:
    """A solver's context: ``context`` if it was given (``ctflow.reconstruct``), else
    :func:`task_context` of the call.  MethodError if a given ``task_family`` contradicts
    the given context."""
    if context is None:
        return task_context(op, task_family, noise_std)
    if task_family is not None and check_family(task_family) != context.family:
        raise MethodError(f"task_family {task_family!r} contradicts the context's family "
                          f"{context.family!r}")
    return context


_warned: set[int] = set()


def resolve_options(method: str, generic: Mapping[str, Any], prior: Prior | None,
                    context: TaskContext, budget: int | None = None,
                    requires: tuple[str, ...] = (), **given: Any) -> dict[str, Any]:
    """Options of a call: ``generic`` ⊕ the options of the preset record selected for
    ``context`` and the NFE ``budget`` ⊕ the given (non-None) options.  ``requires`` names
    the options whose values (given, else generic) a record may be restricted to (e.g.
    ``jacobian``).

    The result also holds ``task_family``, ``tuned_at_nfe`` and ``tuned_at_size`` (None
    when no record applied) and ``presets`` (the prior's name, None without presets)."""
    presets = getattr(prior, "presets", None)
    if presets is None and id(prior) not in _warned:
        _warned.add(id(prior))
        log.warning("prior %s has no tuned presets: %s uses its generic defaults",
                    getattr(prior, "name", "(unnamed)"), method)
    values = {k: (given[k] if given.get(k) is not None else generic.get(k)) for k in requires}
    record = None if presets is None else select_record(
        presets.records(method), context.family, context.noisy, context.mask, context.size,
        budget, values)
    out = dict(generic)
    if record is not None:
        out.update(record["options"])
    out.update({k: v for k, v in given.items() if v is not None})
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise MethodError(f"{method}: no default for option(s) {', '.join(missing)}")
    out["task_family"] = context.family
    out["tuned_at_nfe"] = None if record is None else record.get("nfe")
    out["tuned_at_size"] = None if record is None else int(record["size"])
    out["presets"] = None if presets is None else presets.prior
    return out
