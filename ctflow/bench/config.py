"""What ``ctflow bench`` runs (:class:`BenchConfig`) and the checks of a configuration before
anything is written: the methods, sizes, seeds, device and per-method options
(:func:`check_config`), the output folder, and whether a results folder being resumed was
made under the same settings (:func:`check_compatible`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, MethodError, OutputError, PriorError
from ..priors.base import Prior
from ..solvers import SOLVERS, get_solver, get_spec, validate_options
from ..solvers.options import option_names
from .report import ResultStore

FORMAT_VERSION = 1


@dataclass
class BenchConfig:
    """What to benchmark and where to store it.

    ``tasks``: task names (None: ``tasks.SOLVER_BENCH_TASKS``; with an HDF5 ``data`` file the
    file is the only task).  ``size``: image size or sizes.  ``images``: held-out images per
    task (with ``data``: at most this many slices).  ``prior``: a prior name (``{size}`` in it
    is replaced by the image size) or a :class:`~ctflow.priors.base.Prior` object, used by
    the methods that need one.  ``options``: per-method keyword overrides, e.g.
    ``{"conjugate": {"w": 8}}``.  ``data``: None (procedural phantoms of ``split``), a DICOM
    series folder, an HDF5 sinogram file, or ``"realct"`` (or the path of ``pool_256.h5``):
    real patients' slices of ``split`` (val | ood | train; see ctflow.realct).  ``resume``:
    continue the results already in ``out`` (otherwise an ``out`` holding results is refused).
    """

    tasks: Sequence[str] | None = None
    methods: Sequence[str] = ("fbp", "cgls", "tv")
    size: int | Sequence[int] = 64
    images: int = 8
    seeds: Sequence[int] = (0,)
    prior: str | Prior = "default"
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    out: str | os.PathLike[str] = "bench_results"
    data: str | os.PathLike[str] | None = None
    split: str = "test"
    resume: bool = False
    device: str = "cpu"
    threads: int | None = None


@dataclass(frozen=True)
class RunSettings:
    """A :class:`BenchConfig` checked and normalised by :func:`check_config`."""

    methods: list[str]
    sizes: list[int]
    seeds: list[int]
    device: torch.device
    options: dict[str, dict[str, Any]]
    tasks: list[str] | None
    out: Path


def check_config(config: BenchConfig) -> RunSettings:
    """The checked settings of ``config``; a typed error naming the first bad value."""
    methods = [str(m) for m in as_list(config.methods, "methods")]
    for method in methods:
        get_solver(method)  # MethodError if unknown or not built
    sizes = int_list(config.size, "sizes", 8)
    seeds = int_list(config.seeds, "seeds", 0)
    if isinstance(config.images, bool) or not isinstance(config.images, int) \
            or config.images < 1:
        raise InputError(f"images must be a positive integer, got {config.images!r}")
    if config.threads is not None and (not isinstance(config.threads, int) or config.threads < 1):
        raise InputError(f"threads must be a positive integer, got {config.threads!r}")
    if not isinstance(config.prior, (str, Prior)):
        raise PriorError(f"prior must be a name or a Prior, got {type(config.prior).__name__}")
    try:
        device = torch.device(config.device)
    except RuntimeError:
        raise InputError(f"unknown device {config.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' asked for, but no CUDA GPU is available")
    options = method_options(config, methods)
    tasks = None if config.tasks is None else [str(t) for t in as_list(config.tasks, "tasks")]
    out = Path(config.out)
    check_out_folder(out)
    return RunSettings(methods, sizes, seeds, device, options, tasks, out)


def as_list(value: Any, what: str) -> list:
    """``value`` (one item or a sequence) as a non-empty list of unique items, in order."""
    if isinstance(value, (str, int)):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise InputError(f"{what} must be a list, got {value!r}") from None
    if not items:
        raise InputError(f"give at least one {what.rstrip('s')}")
    return list(dict.fromkeys(items))  # unique, in order


def int_list(value: Any, what: str, minimum: int) -> list[int]:
    """as_list of integers >= ``minimum`` (InputError otherwise)."""
    out = []
    for v in as_list(value, what):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise InputError(f"{what} must be integers >= {minimum}, got {v!r}")
        out.append(int(v))
    return out


def prior_label(prior: str | Prior) -> str:
    """The prior as recorded in the results' configuration."""
    if isinstance(prior, Prior):
        return f"object:{type(prior).__name__}({prior.image_size})"
    return str(prior)


# Options ctflow.reconstruct itself takes for any method (e.g. conjugate.posterior_samples=8).
API_OPTIONS = ("posterior_samples", "consistency")


def method_options(config: BenchConfig, methods: list[str]) -> dict[str, dict[str, Any]]:
    """Validated per-method options: only benchmarked methods, only accepted names."""
    options: dict[str, dict[str, Any]] = {}
    for method, opts in dict(config.options or {}).items():
        if method not in methods:
            raise MethodError(f"options given for {method!r}, which is not benchmarked")
        options[method] = dict(opts)
    for method in methods:
        get_solver(method)  # unknown or unavailable method: MethodError now
        validate_options(method, {k: v for k, v in options.get(method, {}).items()
                                  if k not in API_OPTIONS})
    return options


def method_accepts(method: str, name: str) -> bool:
    """Whether ``method`` declares an option called ``name`` (its registry Options)."""
    return name in option_names(get_spec(method).options)


def check_out_folder(out: Path) -> None:
    """OutputError unless ``out`` is (or can be made as) a writable folder."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    parent = out.parent
    if not out.exists() and not parent.is_dir():
        raise OutputError(f"{out}: its folder {parent} does not exist")
    target = out if out.exists() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: folder is read-only")


def check_compatible(out: Path, old: dict[str, Any], new: dict[str, Any],
                      store: ResultStore) -> None:
    """Refuse to mix records made under different settings in one results file."""
    for key in ("format", "data", "device"):
        if old.get(key) != new.get(key):
            raise InputError(f"{out}: holds results made with {key} = {old.get(key)!r}, this "
                             f"run asks for {new.get(key)!r}; use another output folder")
    done = {r["method"] for r in store.records.values()}
    for method in (m for m in new["methods"] if m in done):
        before, now = old.get("options", {}).get(method, {}), new["options"].get(method, {})
        if before != now:
            raise InputError(f"{out}: holds {method} results made with options {before}, this "
                             f"run asks for {now}; use another output folder")
        if SOLVERS[method].needs_prior:
            if old.get("prior") not in (None, new["prior"]):
                raise InputError(f"{out}: holds {method} results made with prior "
                                 f"{old['prior']!r}, this run asks for {new['prior']!r}; "
                                 "use another output folder")


def merge_config(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The configuration of a results folder after this run (``old``: before it)."""
    merged = dict(new)
    if not old:
        return merged
    for key in ("tasks", "methods", "sizes", "seeds"):  # the latest command's order first
        merged[key] = list(dict.fromkeys(list(new[key]) + list(old.get(key, []))))
    merged["images"] = max(int(old.get("images", 0)), int(new["images"]))
    merged["options"] = {**old.get("options", {}), **new["options"]}
    merged["descriptions"] = {**old.get("descriptions", {}), **new["descriptions"]}
    if not any(SOLVERS[m].needs_prior for m in new["methods"]):
        merged["prior"] = old.get("prior", new["prior"])
    return merged
