"""The one tuner of the tuning scripts (DESIGN §5, §7).

A tuning run scores every point of a grid of solver options on the same validation
problems (held-out images whose noise and solver seeds the caller fixes), picks the best
point by a stated score with a stated tie-break, and stores the chosen options as records of
the tuned prior's presets (:func:`ctflow.priors.presets.merge_records`, the one writer of
presets) and the run, with every grid score, in its tuning log (``docs/tuning/*.json``).

* :func:`grid_points` — the grid's combinations, in grid order;
* :func:`evaluate` — each point scored on every problem: the mean of each score over the
  problems, −inf PSNR where a solve failed on any of them;
* :func:`pick_best` — the highest score; points within ``tie`` of it are tied and the least
  by ``prefer``, then the earliest in grid order, wins;
* :func:`store` — presets records and tuning log written under one lock, so parallel tuning
  runs store one after the other.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..io.atomic import atomic_file
from ..priors.presets import Presets, load_presets, merge_records, presets_path

Options = dict[str, Any]
Scores = dict[str, float]
Records = Mapping[str, Sequence[Mapping[str, Any]]]  # method → presets records
T = TypeVar("T")
P = TypeVar("P")

LOCK_NAME = "ctflow-tuning.lock"  # in the temporary folder: one per machine


@dataclass(frozen=True)
class Trial:
    """One grid point scored: ``scores`` holds the mean of each score over the problems
    (PSNR −inf, the others NaN, when a solve failed), ``results`` each problem's scores
    (None: failed), ``wall`` the seconds the point took."""

    options: Options
    scores: Scores
    results: list[Scores | None]
    wall: float


def grid_points(grid: Mapping[str, Sequence[Any]],
                fixed: Mapping[str, Any] | None = None) -> list[Options]:
    """Every combination of the grid's values (the last key varying fastest), each over
    the ``fixed`` options."""
    return [{**(fixed or {}), **dict(zip(grid, values, strict=True))}
            for values in itertools.product(*grid.values())]


def mean_scores(results: Sequence[Scores | None], keys: Sequence[str]) -> Scores:
    """The mean of each score over ``results``; PSNR −inf (others NaN) if one failed."""
    if any(r is None for r in results):
        return {k: -math.inf if k == "psnr" else math.nan for k in keys}
    return {k: float(np.mean([r[k] for r in results if r is not None])) for k in keys}


def evaluate(points: Sequence[Options], problems: Sequence[P],
             solve: Callable[[P, Options], Scores | None], keys: Sequence[str] = ("psnr",),
             report: Callable[[Trial], None] | None = None) -> list[Trial]:
    """Score every point on every problem, in order; ``solve(problem, options)`` scores one
    reconstruction (None: it failed); ``report`` sees each trial when it is done."""
    trials = []
    for options in points:
        start = time.perf_counter()
        results = [solve(problem, options) for problem in problems]
        trial = Trial(options, mean_scores(results, keys), results,
                      time.perf_counter() - start)
        trials.append(trial)
        if report is not None:
            report(trial)
    return trials


def pick_best(items: Sequence[T], score: Callable[[T], float], tie: float = 0.0,
              prefer: Callable[[T], tuple] | None = None) -> T:
    """The best item: the highest ``score``; items within ``tie`` of it are tied, and the
    least by ``prefer`` among them (then the earliest) wins."""
    values = [score(item) for item in items]
    top = max(values)
    tied = [i for i, value in enumerate(values) if value >= top - tie]
    return items[min(tied, key=lambda i: ((prefer(items[i]) if prefer else ()), i))]


@contextlib.contextmanager
def tuning_lock() -> Iterator[None]:
    """An exclusive lock shared by the tuning runs of this machine (where ``fcntl`` exists)."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here: runs must not overlap
        yield
        return
    with open(Path(tempfile.gettempdir()) / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_log(path: Path) -> dict[str, Any]:
    """The tuning log at ``path`` ({} if there is none)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_log(path: Path, log: Mapping[str, Any]) -> None:
    """Write a tuning log (JSON, indent 1), atomically."""
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(log, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def store(stem: str | Path, prior: str, records: Callable[[Presets | None], Records],
          log_path: Path, update_log: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Store one tuning run, under :func:`tuning_lock`: ``records(presets)`` (given the
    presets stored beside the checkpoint ``stem`` now, None if none) are merged into them
    method by method (:func:`~ctflow.priors.presets.merge_records`: a record replaces the
    one with its selection key), then ``update_log`` turns the tuning log into the new one."""
    with tuning_lock():
        for method, recs in records(load_presets(presets_path(stem))).items():
            merge_records(stem, prior, method, recs)
        write_log(log_path, update_log(read_log(log_path)))
