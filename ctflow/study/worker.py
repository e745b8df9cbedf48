"""One study task on a worker: simulate + reconstruct + score, with a per-process cache.

A worker process (a Dask worker, or the driver itself in a serial run) keeps the operators
it built, keyed by (geometry, device), in a small LRU, and the priors it loaded, keyed by
(name, size, device): a geometry's system matrix and projector factors and a prior's weights
are loaded once per worker and reused by every task that needs them.

Task = one image × acquisition setting × seed × method:

1. μ = μ_water(1 + HU/1000) of the ground truth; y = simulate(μ, A, photons, seed =
   ``noise_seed``) (Poisson on I0·exp(−Aμ) when photons are given, else noiseless);
2. ``dead_views`` views, drawn without replacement with the same ``noise_seed``, read 0
   (a dead detector row); ``ctflow.reconstruct`` screens them out (consistency="auto");
3. reconstruct with the method's options, ``noise_std`` = the simulated noise std (None
   for noiseless data) and ``seed = solver_seed``; seconds and peak memory of the solve;
4. PSNR, SSIM, RMSE (HU) against the ground truth, and in the region if one is set.

The record returned is a small dict (plus the reconstruction for the example tasks).
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from .config import DataSpec
from .scoring import score

OPERATOR_CACHE_SIZE = 4
TIMING_FIELDS = ("seconds", "task_seconds", "peak_mb", "mem_kind", "worker")
"""Record fields that depend on the machine and the moment, not on the study."""


class WorkerCache:
    """Operators (LRU of OPERATOR_CACHE_SIZE) and priors of this process; build counts."""

    def __init__(self) -> None:
        self.operators: OrderedDict[tuple, Any] = OrderedDict()
        self.priors: dict[tuple[str, int, str], Any] = {}
        self.builds = {"operators": 0, "priors": 0}

    def operator(self, geometry: str, range_deg: float | None, views: int, size: int,
                 device: str) -> Any:
        """The CT operator of a geometry (built on first use; its projector warmed for the
        device of the flow methods by :meth:`warm`)."""
        key = (geometry, range_deg, views, size, device)
        if key in self.operators:
            self.operators.move_to_end(key)
            return self.operators[key]
        from ..operators import FanBeam2D, ParallelBeam2D

        full = math.pi if geometry == "parallel" else 2 * math.pi
        span = full if range_deg is None else math.radians(range_deg)
        angles = np.linspace(0.0, span, views, endpoint=False)
        cls = ParallelBeam2D if geometry == "parallel" else FanBeam2D
        op = cls(image_size=size, views=angles)
        self.operators[key] = op
        self.builds["operators"] += 1
        while len(self.operators) > OPERATOR_CACHE_SIZE:
            self.operators.popitem(last=False)
        return op

    def prior(self, name: str, size: int, device: str) -> Any:
        key = (name, size, device)
        if key not in self.priors:
            from ..api import load_prior
            from ..errors import PriorError

            prior = load_prior(name, device=device)
            if prior.image_size != size:
                raise PriorError(f"prior {name!r} is for {prior.image_size}² images, the "
                                 f"study runs at {size}²")
            self.priors[key] = prior
            self.builds["priors"] += 1
        return self.priors[key]


CACHE = WorkerCache()


def run_batch(context: dict[str, Any], tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run tasks one after the other on this process; one record per task."""
    return [run_task(context, task) for task in tasks]


def run_task(context: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """Simulate, reconstruct and score one task (see the module docstring)."""
    from ..api import reconstruct
    from ..bench import warm_projector
    from ..bench.machine import PeakMemory
    from ..errors import CtflowError
    from ..io.atomic import one_line
    from ..operators import GeometryError, OperatorInputError
    from ..solvers import SOLVERS
    from ..units import mu_to_hu
    from .images import ground_truths

    start = time.perf_counter()
    torch.set_num_threads(int(context["threads"]))
    size = int(context["size"])
    flow = SOLVERS[task["method"]].needs_prior
    device = str(context["flow_device"]) if flow else "cpu"
    record = {k: task[k] for k in ("key", "image", "image_index", "geometry", "range_deg",
                                   "views", "photons", "dead_views", "seed", "method")}
    record["device"] = device
    gt = ground_truths(DataSpec(**context["data"]), size)[task["image_index"]]
    try:
        op = CACHE.operator(task["geometry"], task["range_deg"], task["views"], size, "cpu")
        y, sigma = measure(gt, op, task)
        prior = CACHE.prior(context["prior"], size, device) if flow else None
        if flow:
            warm_projector(op, device)
        _freeze_once()
        with PeakMemory(torch.device(device)) as mem:
            res = reconstruct(y.to(device), op, method=task["method"], prior=prior,
                              noise_std=sigma or None, seed=int(task["solver_seed"]),
                              **context["methods"][task["method"]])
    except (CtflowError, OperatorInputError, GeometryError) as exc:
        record["error"] = one_line(exc)
        return _timed(record, start)
    image_hu = mu_to_hu(res.image.detach().to("cpu", torch.float64).numpy()[0, 0])
    record.update(nfe=int(res.nfe), seconds=float(res.seconds), peak_mb=round(mem.mb, 3),
                  mem_kind=mem.kind)
    if not np.isfinite(image_hu).all():
        record["error"] = "the reconstruction contains NaN or Inf"
        return _timed(record, start)
    mask = context.get("mask")
    record.update(score(image_hu, gt, context["metrics"], context.get("window"),
                        None if mask is None else np.asarray(mask, dtype=bool)))
    if task.get("example"):
        record["_image"] = image_hu.astype(np.float32)
    return _timed(record, start)


_FROZEN = False


def _freeze_once() -> None:
    """Move the objects alive now (imported modules, caches) out of the garbage collector's
    reach, once per process: PeakMemory collects garbage before each solve, and scanning
    the ~10⁶ objects of torch, scipy and Dask took 0.12 s a task (30× a 32² FBP solve)."""
    global _FROZEN
    if not _FROZEN:
        gc.collect()
        gc.freeze()
        _FROZEN = True


def unfreeze() -> None:
    """Undo :func:`_freeze_once` (a serial run in a caller's process)."""
    global _FROZEN
    if _FROZEN:
        gc.unfreeze()
        _FROZEN = False


def _timed(record: dict[str, Any], start: float) -> dict[str, Any]:
    record["task_seconds"] = time.perf_counter() - start
    record["worker"] = f"{os.uname().nodename}:{os.getpid()}"
    return record


def measure(gt_hu: np.ndarray, op: Any, task: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """Simulated measurements of one ground truth for a task, and their noise std."""
    from ..simulate import noise_std, simulate
    from ..units import hu_to_mu

    x = torch.from_numpy(hu_to_mu(gt_hu.astype(np.float32)))[None, None]
    photons = task["photons"]
    seed = int(task["noise_seed"])
    y = simulate(x, op, photons=photons, seed=seed)
    with torch.no_grad():
        sigma = noise_std(op(x), photons=photons)
    dead = int(task["dead_views"])
    if dead:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(int(task["views"]), size=dead, replace=False))
        y = y.clone()
        y[..., torch.from_numpy(rows), :] = 0.0
    return y, sigma


def reset_cache() -> None:
    """Forget this process's operators and priors (a fresh worker)."""
    global CACHE
    CACHE = WorkerCache()


def cache_builds() -> dict[str, int]:
    """How many operators and priors this process has built (for reports and tests)."""
    return dict(CACHE.builds)
