"""The two top-level calls: ``ctflow.reconstruct`` and ``ctflow.load_prior``."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .consistency import screen
from .errors import InputError, MethodError, PriorError
from .noise import estimate_noise_std
from .operators import LinearOperator
from .priors.base import Prior
from .solvers import SolverSpec, get_solver, validate_options
from .solvers import context as solver_context
from .solvers.options import option_names


@dataclass
class Reconstruction:
    """Result of :func:`reconstruct`: the image in the operator's input units and how it
    was obtained (network evaluations, wall time, per-method details in ``info``)."""

    image: torch.Tensor
    nfe: int
    seconds: float
    method: str
    info: dict[str, Any] = field(default_factory=dict)
    # posterior_samples > 1: the per-pixel standard deviation of the posterior samples (an
    # uncertainty map, same shape and units as ``image``); None otherwise
    spread: torch.Tensor | None = None


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
    posterior_samples: int = 1,
    **options: Any,
) -> Reconstruction:
    """Reconstruct images from measurements y ``(B, C, *op.out_shape)``.

    ``noise_std`` is the standard deviation of y's noise.  None on CT data with a flow
    method: estimated from the measurements (``ctflow.noise.estimate_noise_std``; 0 when
    they look noiseless) and reported in ``info["noise_std_estimated"]`` and
    ``info["notes"]``, unless the method is given ``photons`` (pre-log Poisson weights; the
    level then comes from the counts); None elsewhere: treated as noiseless.
    ``nfe`` is the network-evaluation budget of the step-based flow samplers; other options
    go to the method (see its docstring).
    ``posterior_samples`` = K > 1 (flow methods): K posterior samples per image, run as one batch
    (each with its own noise from ``seed``), and ``image`` is their mean — an estimate of
    the posterior mean, which has lower error than any one sample (for exact samples the
    expected squared error of one is twice the mean's) — with their per-pixel std in
    ``spread``; samples are drawn at ``temperature`` 1 unless it is given (a preset's
    lower temperature is a point estimate).  ``nfe`` then counts K network evaluations per
    batched call (``info["network_calls"]`` the calls).
    ``consistency="auto"`` (CT operators) first leaves out dead or saturated views and
    detector columns (``ctflow.consistency``; ``info``: ``masked_views``,
    ``masked_detectors``, ``warnings``); ``"off"`` uses the data as given.
    The task context (``ctflow.solvers.context``: family, noisy, mask kind, size) is built
    once, from the screened problem and the noise level passed on, handed to a flow method
    and reported in ``info["context"]``; ``info`` is typed by the method's TypedDict plus
    ``ctflow.solvers.info.ReconstructInfo``.
    """
    solve, spec = get_solver(method)
    _check_measurements(y, op)
    prior_obj: Prior | None = None
    if spec.needs_prior:
        prior_obj = prior if isinstance(prior, Prior) else load_prior(prior or "default",
                                                                       device=y.device)
        if op.in_shape[0] != op.in_shape[-1] or not prior_obj.supports_size(op.in_shape[-1]):
            raise PriorError(f"prior {prior_obj.name!r} serves {prior_obj.sizes().describe()}, "
                             f"the operator takes {op.in_shape} images")
        prior_obj.reset_nfe()
    samples = _check_samples(posterior_samples, spec, method, options)
    if nfe is not None:
        options["nfe"] = int(nfe)
    validate_options(method, options)  # the declared Options: unknown names, bad values
    start = time.perf_counter()
    y, op, screened = screen(y, op, consistency, method)
    estimated = None  # with photons the solver takes the noise level from the counts
    if spec.needs_prior and noise_std is None and getattr(op, "family", None) == "ct" \
            and options.get("photons") is None:
        estimated = estimate_noise_std(y, op)
        noise_std = estimated.sigma or None
    context = solver_context.task_context(op, options.get("task_family"), noise_std,
                                          options.get("photons"))
    if spec.needs_prior:  # the classical methods select no presets: not given the context
        options["context"] = context
    batch = y.repeat_interleave(samples, dim=0) if samples > 1 else y
    out = solve(batch, op, prior=prior_obj, noise_std=noise_std, seed=seed,
                progress=progress, **options)
    image, spread = out.image, None
    if samples > 1:  # (B·K, ...) → mean and std over each image's K samples
        grouped = image.reshape(y.shape[0], samples, *image.shape[1:])
        image, spread = grouped.mean(dim=1), grouped.std(dim=1)
    if image.is_cuda:  # CUDA runs asynchronously: time the finished work
        torch.cuda.synchronize(image.device)
    seconds = time.perf_counter() - start
    info = {**out.info, **screened, "context": asdict(context)}
    if samples > 1:
        info.update(posterior_samples=samples, network_calls=out.nfe)
    if estimated is not None:
        info["noise_std_estimated"] = estimated.sigma
        info["notes"] = [*info.get("notes", []), estimated.describe()]
    return Reconstruction(image=image, nfe=out.nfe * samples, seconds=seconds, method=method,
                          info=info, spread=spread)


def _sampling_temperature(options: dict[str, Any], samples: int, spec: SolverSpec) -> None:
    """Posterior samples need the start's full noise: ``temperature`` 1 unless given, and a
    given 0 refused (K identical samples)."""
    if samples == 1 or "temperature" not in option_names(spec.options):
        return
    if options.get("temperature") is None:
        options["temperature"] = 1.0
    elif options["temperature"] == 0:
        raise MethodError("posterior_samples > 1 needs temperature > 0 (at 0 every sample "
                          "is the same)")


def _check_samples(samples: object, spec: SolverSpec, method: str,
                   options: dict[str, Any]) -> int:
    """``posterior_samples`` as a positive int; more than one only for the (stochastic) flow
    methods, with the sampling temperature (_sampling_temperature) set in ``options``."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise MethodError(f"posterior_samples must be a positive integer, got {samples!r}")
    if samples > 1 and not spec.needs_prior:
        raise MethodError(f"posterior_samples applies to the flow methods; {method!r} is "
                          f"deterministic")
    _sampling_temperature(options, samples, spec)
    return samples


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
