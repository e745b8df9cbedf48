"""The two top-level calls: ``ctflow.reconstruct`` and ``ctflow.load_prior``."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .consistency import screen
from .errors import InputError, MethodError, PriorError
from .noise import estimate_noise_std
from .operators import LinearOperator
from .priors.base import Prior
from .solvers import get_solver


@dataclass
class Reconstruction:
    """Result of :func:`reconstruct`: the image in the operator's input units and how it
    was obtained (network evaluations, wall time, per-method details in ``info``)."""

    image: torch.Tensor
    nfe: int
    seconds: float
    method: str
    info: dict[str, Any] = field(default_factory=dict)


def load_prior(name: str = "default", device: str | torch.device = "cpu") -> Prior:
    """Load a shipped prior by name (``default``, ``phantom-64``, ...) or from a path,
    offline, from ``data/priors``."""
    from .priors.registry import load_prior as _load

    return _load(name, device=device)


def reconstruct(
    y: torch.Tensor,
    op: LinearOperator,
    method: str = "conjugate",
    prior: str | Prior | None = "default",
    nfe: int | None = None,
    noise_std: float | None = None,
    seed: int = 0,
    progress: bool = False,
    consistency: str = "auto",
    **options: Any,
) -> Reconstruction:
    """Reconstruct images from measurements y ``(B, C, *op.out_shape)``.

    ``noise_std`` is the standard deviation of y's noise.  None on CT data with a flow
    method: estimated from the measurements (``ctflow.noise.estimate_noise_std``; 0 when
    they look noiseless) and reported in ``info["noise_std_estimated"]`` and
    ``info["notes"]``; None elsewhere: treated as noiseless.
    ``nfe`` is the network-evaluation budget of the step-based flow samplers; other options
    go to the method (see its docstring).
    ``consistency="auto"`` (CT operators) first leaves out dead or saturated views and
    detector columns (``ctflow.consistency``; ``info``: ``masked_views``,
    ``masked_detectors``, ``warnings``); ``"off"`` uses the data as given.
    """
    solve, spec = get_solver(method)
    _check_measurements(y, op)
    prior_obj: Prior | None = None
    if spec.needs_prior:
        prior_obj = prior if isinstance(prior, Prior) else load_prior(prior or "default",
                                                                       device=y.device)
        if prior_obj.image_size != op.in_shape[-1] or op.in_shape[0] != op.in_shape[-1]:
            raise PriorError(
                f"prior is for {prior_obj.image_size}² images, the operator for "
                f"{op.in_shape} images"
            )
        prior_obj.reset_nfe()
    if nfe is not None:
        options["nfe"] = int(nfe)
    accepted = inspect.signature(solve).parameters
    unknown = [k for k in options if k not in accepted]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        raise MethodError(f"method {method!r} takes no option(s) {', '.join(unknown)}")
    start = time.perf_counter()
    y, op, screened = screen(y, op, consistency, method)
    estimated = None
    if spec.needs_prior and noise_std is None and getattr(op, "family", None) == "ct":
        estimated = estimate_noise_std(y, op)
        noise_std = estimated.sigma or None
    out = solve(y, op, prior=prior_obj, noise_std=noise_std, seed=seed, progress=progress,
                **options)
    if out.image.is_cuda:  # CUDA runs asynchronously: time the finished work
        torch.cuda.synchronize(out.image.device)
    seconds = time.perf_counter() - start
    info = {**out.info, **screened}
    if estimated is not None:
        info["noise_std_estimated"] = estimated.sigma
        info["notes"] = [*info.get("notes", []), estimated.describe()]
    return Reconstruction(image=out.image, nfe=out.nfe, seconds=seconds, method=method,
                          info=info)


def _check_measurements(y: object, op: LinearOperator) -> None:
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise InputError("measurements must be a float torch.Tensor")
    if y.ndim != 2 + len(op.out_shape) or tuple(y.shape[2:]) != op.out_shape:
        raise InputError(
            f"measurements have shape {tuple(y.shape)}, the operator expects "
            f"(B, C, {', '.join(map(str, op.out_shape))})"
        )
    if not bool(torch.isfinite(y).all()):
        raise InputError("measurements contain NaN or Inf")
