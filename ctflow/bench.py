"""The benchmark harness behind ``ctflow bench`` (DESIGN §5).

For every task (``ctflow.tasks``), image size, held-out image, seed and method it simulates
the measurements, reconstructs them with :func:`ctflow.reconstruct` and scores the result
against the ground truth (PSNR, SSIM, RMSE in HU; ``ctflow.metrics``).  Each solve is one
JSON line in ``<out>/results.jsonl``, keyed by (task, size, method, image, seed), appended and
flushed as soon as it is done, so an interrupted run continues where it stopped.
:func:`write_report` turns the records into ``report.md`` (one table per task), one CSV and
one figure per task, next to ``machine.json`` (the machine and library versions).  The
results folder and the report live in :mod:`ctflow.bench_report`, the machine record and the
memory measurement in :mod:`ctflow.machine`; their public names are re-exported here.

Protocol details, fixed so that every method sees identical data:

* test images: ``tasks.heldout_images(size, n, split)`` (phantom seeds disjoint from
  training and validation), a user's DICOM series (HU slices, centre-cropped to a square and
  resized), or a user's HDF5 sinogram file (its slices, its geometry, its ``/image``);
* the measurement noise of image i under seed s is drawn with seed ``NOISE_SEED_STRIDE·s + i``;
  the solver gets ``seed = s``;
* the columns are mean ± sample std over the n = images × seeds solves; ``s/image`` is the
  solver wall time for one image (batch 1); ``NFE`` is network evaluations per image;
* ``peak MB`` is the largest extra memory one solve needed: on CPU the process's resident
  high-water mark during the solve minus its resident size just before it (Linux resets the
  mark through ``/proc/self/clear_refs``; elsewhere the ``ru_maxrss`` growth, a lower bound);
  on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before the solve.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bench_report import (
    CONFIG,
    EXAMPLES,
    MACHINE,
    RESULTS,
    ResultStore,
    read_json,
    result_key,
    summarize,
    write_report,
)
from .bench_report import CSV_COLUMNS as CSV_COLUMNS
from .bench_report import HU_WINDOW as HU_WINDOW

# CSV_COLUMNS, HU_WINDOW, MB and summarize are re-exported for callers of ctflow.bench.
from .bench_sources import (
    BenchTask,
    make_source,
    square_resize,
)
from .errors import CtflowError, InputError, MethodError, OutputError, PriorError
from .io.atomic import atomic_file, one_line
from .machine import MB as MB
from .machine import PeakMemory, machine_info
from .metrics import evaluate
from .operators import GeometryError, LinearOperator, OperatorInputError
from .priors.base import Prior
from .solvers import SOLVERS, get_solver
from .tasks import Problem
from .units import mu_to_hu

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


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------


def _as_list(value: Any, what: str) -> list:
    if isinstance(value, (str, int)):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise InputError(f"{what} must be a list, got {value!r}") from None
    if not items:
        raise InputError(f"give at least one {what.rstrip('s')}")
    return list(dict.fromkeys(items))  # unique, in order


def _int_list(value: Any, what: str, minimum: int) -> list[int]:
    out = []
    for v in _as_list(value, what):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise InputError(f"{what} must be integers >= {minimum}, got {v!r}")
        out.append(int(v))
    return out


def _prior_label(prior: str | Prior) -> str:
    if isinstance(prior, Prior):
        return f"object:{type(prior).__name__}({prior.image_size})"
    return str(prior)


def _method_options(config: BenchConfig, methods: list[str]) -> dict[str, dict[str, Any]]:
    """Validated per-method options: only benchmarked methods, only accepted names."""
    options: dict[str, dict[str, Any]] = {}
    for method, opts in dict(config.options or {}).items():
        if method not in methods:
            raise MethodError(f"options given for {method!r}, which is not benchmarked")
        options[method] = dict(opts)
    for method in methods:
        solve, _ = get_solver(method)
        params = inspect.signature(solve).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        bad = [k for k in options.get(method, {}) if k not in params and not takes_any]
        if bad:
            raise MethodError(f"method {method!r} takes no option(s) {', '.join(bad)}")
    return options


def method_accepts(method: str, name: str) -> bool:
    """Whether the solver function of ``method`` has a parameter called ``name``."""
    solve, _ = get_solver(method)
    return name in inspect.signature(solve).parameters


def _check_out_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    parent = out.parent
    if not out.exists() and not parent.is_dir():
        raise OutputError(f"{out}: its folder {parent} does not exist")
    target = out if out.exists() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: folder is read-only")


def _check_compatible(out: Path, old: dict[str, Any], new: dict[str, Any],
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


def _merge_config(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
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


def _write_json(path: Path, data: Any) -> None:
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _save_array(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array.astype(np.float32))


class _Priors:
    """Priors loaded on first use, one per image size."""

    def __init__(self, prior: str | Prior, device: torch.device):
        self.prior = prior
        self.device = device
        self._cache: dict[int, Prior] = {}

    def get(self, size: int) -> Prior:
        if isinstance(self.prior, Prior):
            obj = self.prior
        elif size in self._cache:
            obj = self._cache[size]
        else:
            from .api import load_prior

            name = self.prior.replace("{size}", str(size))
            try:
                obj = load_prior(name, device=self.device)
            except ModuleNotFoundError as exc:
                raise PriorError(f"cannot load prior {name!r}: prior loading is not "
                                 f"available in this build ({exc.name})") from exc
            self._cache[size] = obj
        if obj.image_size != size:
            raise PriorError(f"prior {_prior_label(self.prior)!r} is for {obj.image_size}² "
                             f"images, the benchmark runs at {size}²")
        return obj


def run_bench(config: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or continue) a benchmark and write its report; returns a summary dict with
    ``out``, ``new`` (solves run now), ``skipped`` (already stored), ``failed`` (solves a
    method refused, recorded with their message) and ``tables`` (see :func:`write_report`).
    """
    from tqdm.auto import tqdm

    methods = [str(m) for m in _as_list(config.methods, "methods")]
    for method in methods:
        get_solver(method)  # MethodError if unknown or not built
    sizes = _int_list(config.size, "sizes", 8)
    seeds = _int_list(config.seeds, "seeds", 0)
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
    options = _method_options(config, methods)
    tasks_arg = None if config.tasks is None else [str(t) for t in
                                                   _as_list(config.tasks, "tasks")]
    out = Path(config.out)
    _check_out_folder(out)

    source = make_source(config, sizes)
    sizes = source.sizes
    tasks = source.tasks(tasks_arg)
    new_cfg = {
        "format": FORMAT_VERSION, "tasks": [t.name for t in tasks], "methods": methods,
        "sizes": sizes, "images": config.images, "seeds": seeds,
        "prior": _prior_label(config.prior), "options": options,
        "data": source.fingerprint(), "device": device.type,
        "descriptions": {t.name: t.description for t in tasks},
    }
    priors = _Priors(config.prior, device)
    if any(SOLVERS[m].needs_prior for m in methods):
        for size in sizes:
            priors.get(size)  # a missing or mismatched prior stops the run before any write
    out.mkdir(exist_ok=True)
    store = ResultStore(out / RESULTS)
    old_cfg: dict[str, Any] = {}
    if store.records:
        if not config.resume:
            raise OutputError(f"{out}: already holds benchmark results; resume them "
                              "(--resume) or choose another output folder")
        old_cfg = read_json(out / CONFIG)
        _check_compatible(out, old_cfg, new_cfg, store)
    _write_json(out / CONFIG, _merge_config(old_cfg, new_cfg))

    plan = [(task, size, image, seed, method)
            for task in tasks for size in sizes
            for image in range(source.image_count(size)) for seed in seeds
            for method in methods]
    pending = [(t, size, image, seed, method) for t, size, image, seed, method in plan
               if result_key(t.name, size, method, image, seed) not in store]
    skipped = len(plan) - len(pending)

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    machine = machine_info()
    _record_machine(out, machine, len(pending))

    failed = 0
    bar = tqdm(total=len(pending), disable=not progress, unit="solve", desc="bench")
    try:
        for (task, size, image, seed), group in _grouped(pending):
            problem = source.problem(task.name, size, image, seed)
            first = image == 0 and seed == seeds[0]
            if first:
                _save_array(out / EXAMPLES / f"{task.name}_{size}" / "ground_truth.npy",
                            problem.gt_hu)
            if any(SOLVERS[m].needs_prior for m in group):
                try:
                    warm_projector(problem.op, device)
                except (CtflowError, OperatorInputError, GeometryError):
                    pass  # the solve that needs it records the error
            for method in group:
                bar.set_description(f"{task.name} {size}² {method}")
                record = _solve_one(problem, task, size, image, seed, method, options, priors,
                                    device, out / EXAMPLES if first else None)
                failed += "error" in record
                store.append(record)
                bar.update(1)
    finally:
        bar.close()
    tables = write_report(out)
    return {"out": str(out), "new": len(pending), "skipped": skipped, "failed": failed,
            "tables": tables}


def _grouped(pending: list[tuple]) -> Iterator[tuple[tuple, list[str]]]:
    """Consecutive plan entries sharing (task, size, image, seed): one problem, many methods."""
    current: tuple | None = None
    methods: list[str] = []
    for task, size, image, seed, method in pending:
        key = (task, size, image, seed)
        if key != current:
            if current is not None:
                yield current, methods
            current, methods = key, []
        methods.append(method)
    if current is not None:
        yield current, methods


_WARMED: weakref.WeakKeyDictionary[LinearOperator, set[str]] = weakref.WeakKeyDictionary()


def warm_projector(op: LinearOperator, device: torch.device | str = "cpu") -> None:
    """Build (or load from the cache) what the flow methods use of an operator — the exact
    projector P, the pseudo-inverse A⁺ and the normal-equation solve — so that a geometry's
    one-off set-up is not timed or measured as the first solve's.  All three are applied to
    zeros on ``device``: the SVD route builds its factors and their float32 and float64
    copies there (A⁺ and the solves run in float64), the CG route returns at once.  Once
    per operator and device: the tasks share one operator across their images."""
    done = _WARMED.setdefault(op, set())
    if str(device) in done:
        return
    image = torch.zeros(1, 1, *op.in_shape, device=device)
    op.projector(image)
    op.pinv(torch.zeros(1, 1, *op.out_shape, device=device))
    op.solve_normal(image, 1.0)
    done.add(str(device))


def _solve_one(problem: Problem, task: BenchTask, size: int, image: int, seed: int,
               method: str, options: dict[str, dict[str, Any]], priors: _Priors,
               device: torch.device, examples: Path | None) -> dict[str, Any]:
    """Reconstruct one problem with one method and score it; a refusal (typed ctflow error)
    is recorded with its message instead of the scores."""
    from .api import reconstruct

    record: dict[str, Any] = {"key": result_key(task.name, size, method, image, seed),
                              "task": task.name, "size": size, "method": method,
                              "image": image, "seed": seed}
    opts = dict(options.get(method, {}))
    if "task_family" not in opts and method_accepts(method, "task_family"):
        opts["task_family"] = task.family
    try:
        prior = priors.get(size) if SOLVERS[method].needs_prior else None
        y = problem.y.to(device)
        with PeakMemory(device) as mem:
            res = reconstruct(y, problem.op, method=method, prior=prior,
                              noise_std=problem.noise_std or None, seed=seed, **opts)
    except (CtflowError, OperatorInputError, GeometryError) as exc:
        record["error"] = one_line(exc)
        return record
    image_hu = mu_to_hu(res.image.detach().to("cpu", torch.float64).numpy()[0, 0])
    record.update(seconds=float(res.seconds), nfe=int(res.nfe), peak_mb=round(mem.mb, 3),
                  mem_kind=mem.kind)
    if not np.isfinite(image_hu).all():
        record["error"] = "the reconstruction contains NaN or Inf"
        return record
    record.update({k: float(v) for k, v in evaluate(image_hu, problem.gt_hu).items()})
    if examples is not None:
        _save_array(examples / f"{task.name}_{size}" / f"{method}.npy", image_hu)
    return record


def _record_machine(out: Path, machine: dict[str, Any], solves: int) -> None:
    data = read_json(out / MACHINE)
    runs = list(data.get("runs", []))
    runs.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "solves": solves,
                 "machine": machine})
    _write_json(out / MACHINE, {"machine": machine, "runs": runs})


__all__ = ["BenchConfig", "PeakMemory", "ResultStore", "machine_info", "method_accepts",
           "result_key", "run_bench", "square_resize", "summarize", "write_report"]
