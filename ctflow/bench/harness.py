"""The benchmark harness behind ``ctflow bench`` (DESIGN §5).

For every task (:mod:`ctflow.bench.tasks`), image size, held-out image, seed and method it
simulates the measurements, reconstructs them with :func:`ctflow.reconstruct` and scores the
result against the ground truth (PSNR, SSIM, RMSE in HU; ``ctflow.metrics``).  Each solve is
one JSON line in ``<out>/results.jsonl``, keyed by (task, size, method, image, seed), appended
and flushed as soon as it is done, so an interrupted run continues where it stopped.
:func:`write_report` turns the records into ``report.md`` (one table per task), one CSV and
one figure per task, next to ``machine.json`` (the machine and library versions).  The
results folder and the report live in :mod:`ctflow.bench.report`, the machine record and the
memory measurement in :mod:`ctflow.bench.machine`, the configuration and its checks in
:mod:`ctflow.bench.config`, the image sources in :mod:`ctflow.bench.sources`.

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

import json
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CtflowError, OutputError, PriorError
from ..io.atomic import atomic_file, one_line
from ..metrics import evaluate
from ..operators import GeometryError, LinearOperator, OperatorInputError
from ..priors.base import Prior
from ..solvers import SOLVERS
from ..units import mu_to_hu
from .config import (
    FORMAT_VERSION,
    BenchConfig,
    RunSettings,
    check_compatible,
    check_config,
    merge_config,
    method_accepts,
    prior_label,
)
from .machine import PeakMemory, machine_info
from .report import (
    CONFIG,
    EXAMPLES,
    MACHINE,
    RESULTS,
    ResultStore,
    read_json,
    result_key,
    write_report,
)
from .sources import BenchTask, make_source
from .tasks import Problem


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
            from ..api import load_prior

            name = self.prior.replace("{size}", str(size))
            try:
                obj = load_prior(name, device=self.device)
            except ModuleNotFoundError as exc:
                raise PriorError(f"cannot load prior {name!r}: prior loading is not "
                                 f"available in this build ({exc.name})") from exc
            self._cache[size] = obj
        if not obj.supports_size(size):
            raise PriorError(f"prior {prior_label(self.prior)!r} serves "
                             f"{obj.sizes().describe()}, the benchmark runs at {size}²")
        return obj


def run_bench(config: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or continue) a benchmark and write its report; returns a summary dict with
    ``out``, ``new`` (solves run now), ``skipped`` (already stored), ``failed`` (solves a
    method refused, recorded with their message) and ``tables`` (see :func:`write_report`).
    """
    run = check_config(config)
    out = run.out
    source = make_source(config, run.sizes)
    sizes = source.sizes
    tasks = source.tasks(run.tasks)
    new_cfg = {
        "format": FORMAT_VERSION, "tasks": [t.name for t in tasks], "methods": run.methods,
        "sizes": sizes, "images": config.images, "seeds": run.seeds,
        "prior": prior_label(config.prior), "options": run.options,
        "data": source.fingerprint(), "device": run.device.type,
        "descriptions": {t.name: t.description for t in tasks},
    }
    priors = _Priors(config.prior, run.device)
    if any(SOLVERS[m].needs_prior for m in run.methods):
        for size in sizes:
            priors.get(size)  # a missing or mismatched prior stops the run before any write
    store = _open_store(out, config.resume, new_cfg)

    plan = [(task, size, image, seed, method)
            for task in tasks for size in sizes
            for image in range(source.image_count(size)) for seed in run.seeds
            for method in run.methods]
    pending = [(t, size, image, seed, method) for t, size, image, seed, method in plan
               if result_key(t.name, size, method, image, seed) not in store]
    skipped = len(plan) - len(pending)

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    machine = machine_info()
    _record_machine(out, machine, len(pending))
    failed = _solve_pending(pending, source, run, priors, store, progress)
    tables = write_report(out)
    return {"out": str(out), "new": len(pending), "skipped": skipped, "failed": failed,
            "tables": tables}


def _open_store(out: Path, resume: bool, new_cfg: dict[str, Any]) -> ResultStore:
    """The results store of ``out`` (created); stored results are continued only with
    ``resume`` and settings compatible with theirs.  Writes the merged configuration."""
    out.mkdir(exist_ok=True)
    store = ResultStore(out / RESULTS)
    old_cfg: dict[str, Any] = {}
    if store.records:
        if not resume:
            raise OutputError(f"{out}: already holds benchmark results; resume them "
                              "(--resume) or choose another output folder")
        old_cfg = read_json(out / CONFIG)
        check_compatible(out, old_cfg, new_cfg, store)
    _write_json(out / CONFIG, merge_config(old_cfg, new_cfg))
    return store


def _solve_pending(pending: list[tuple], source: Any, run: RunSettings, priors: _Priors,
                   store: ResultStore, progress: bool) -> int:
    """Solve and store every pending (task, size, image, seed, method), one problem per
    (task, size, image, seed); the first image's ground truth and reconstructions are kept
    as examples.  Returns how many solves a method refused."""
    from tqdm.auto import tqdm

    out, device = run.out, run.device
    failed = 0
    bar = tqdm(total=len(pending), disable=not progress, unit="solve", desc="bench")
    try:
        for (task, size, image, seed), group in _grouped(pending):
            problem = source.problem(task.name, size, image, seed)
            first = image == 0 and seed == run.seeds[0]
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
                record = _solve_one(problem, task, size, image, seed, method, run.options,
                                    priors, device, out / EXAMPLES if first else None)
                failed += "error" in record
                store.append(record)
                bar.update(1)
    finally:
        bar.close()
    return failed


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
    from ..api import reconstruct

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

