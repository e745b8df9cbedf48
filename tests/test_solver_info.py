"""The typed ``info`` records: every method, run through ``ctflow.reconstruct`` on a tiny
problem, returns exactly the keys its registry TypedDict declares (all required ones, a
subset of the optional ones) plus those ``ReconstructInfo`` declares, with values of the
declared (outer) types."""

from __future__ import annotations

import types
import typing
from typing import Any

import pytest
import torch

import ctflow
from ctflow.operators import Inpainting, ParallelBeam2D
from ctflow.priors import GaussianPrior
from ctflow.solvers import SOLVERS
from ctflow.solvers.info import ReconstructInfo

pytestmark = pytest.mark.usefixtures("private_cache")

N = 16
SMALL: dict[str, dict[str, Any]] = {
    "fbp": {}, "cgls": {"iters": 3}, "sirt": {"iters": 3}, "tv": {"iters": 3},
    "mbir": {"iters": 3}, "pigfm": {"nfe": 2}, "otode": {"nfe": 2}, "conjugate": {"nfe": 2},
    "conjugate-diffusion": {"nfe": 2},
    "msflow": {"shooting": 2, "segment_steps": 1, "iters": 1},
    "dflow": {"steps": 1, "iters": 1}, "pnpflow": {"nfe": 2}, "flowdps": {"nfe": 2},
    "dps": {"nfe": 2}, "flower": {"nfe": 2},
}


def _keys(typed: Any) -> tuple[set[str], set[str]]:
    """(required, optional) keys of a TypedDict."""
    return set(typed.__required_keys__), set(typed.__optional_keys__)


def _outer_types(hint: Any) -> tuple[type, ...] | None:
    """The classes a value of type ``hint`` may be an instance of (its outer type only;
    float admits int); None for Any."""
    if hint is Any:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found: tuple[type, ...] = ()
        for arg in typing.get_args(hint):
            outer = _outer_types(arg)
            if outer is None:
                return None
            found += outer
        return found
    outer = typing.get_origin(hint) or hint
    if outer is type(None):
        return (type(None),)
    if typing.is_typeddict(outer):
        return (dict,)
    return (int, float) if outer is float else (outer,)


def check_info(info: dict[str, Any], declared: Any) -> None:
    """AssertionError unless ``info`` holds the required keys of ``declared`` and of
    ReconstructInfo, no key either leaves undeclared, and values of the declared types."""
    required, optional = _keys(declared)
    added_required, added_optional = _keys(ReconstructInfo)
    assert not (required | optional) & (added_required | added_optional)
    missing = (required | added_required) - set(info)
    undeclared = set(info) - required - optional - added_required - added_optional
    assert not missing and not undeclared, f"missing {missing}, undeclared {undeclared}"
    hints = {**typing.get_type_hints(declared), **typing.get_type_hints(ReconstructInfo)}
    for key, value in info.items():
        allowed = _outer_types(hints[key])
        assert allowed is None or isinstance(value, allowed), (key, value, hints[key])


def _prior() -> GaussianPrior:
    return GaussianPrior(torch.full((N, N), 0.5), torch.full((N, N), 0.1))


def _x() -> torch.Tensor:
    return torch.rand(1, 1, N, N, generator=torch.Generator().manual_seed(0)) * 0.02


@pytest.mark.parametrize("method", list(SOLVERS))
def test_info_keys_are_the_declared_ones(method):
    """CT, noise level estimated (flow methods) and consistency screening on; inpainting
    with a given noise level and, for flow methods, two posterior samples."""
    spec = SOLVERS[method]
    ct = ParallelBeam2D(N, 8)
    y = ct(_x())
    y = y + 0.01 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    res = ctflow.reconstruct(y, ct, method=method, prior=_prior(), **SMALL[method])
    check_info(res.info, spec.info)
    assert "masked_views" in res.info and res.info["context"]["family"] == "ct"
    assert ("noise_std_estimated" in res.info) == spec.needs_prior
    if method == "fbp":
        return
    inp = Inpainting(torch.rand(N, N, generator=torch.Generator().manual_seed(2)) > 0.5)
    samples = 2 if spec.needs_prior else 1
    res = ctflow.reconstruct(inp(_x()), inp, method=method, prior=_prior(), noise_std=0.01,
                             posterior_samples=samples, **SMALL[method])
    check_info(res.info, spec.info)
    assert ("network_calls" in res.info) == spec.needs_prior
    assert res.info["context"] == {"family": "inpainting", "noisy": True, "mask": "scattered",
                                   "size": N}


def test_the_check_fails_on_an_undeclared_or_missing_key():
    info = {"filter": "ramp", "context": {"family": "ct", "noisy": False, "mask": None,
                                          "size": N}}
    check_info(info, SOLVERS["fbp"].info)
    for broken in ({**info, "extra": 1}, {"filter": "ramp"}, {**info, "filter": 3},
                   {**info, "notes": "one note"}):
        with pytest.raises(AssertionError):
            check_info(broken, SOLVERS["fbp"].info)
