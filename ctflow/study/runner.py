"""Run a study: in this process, on a local Dask cluster, or on an existing Dask cluster.

Results stream to ``OUT/results.jsonl`` (one JSON line per task, appended, flushed and
fsync'ed as each batch of tasks comes back; a last line cut short by a crash is dropped on
reading), so a killed run or a lost worker loses nothing finished, and ``resume=True`` runs
only the tasks whose keys are not there yet.  A worker lost mid-task makes Dask run that
batch again elsewhere; a batch that keeps killing workers is left for a later ``--resume``.

Scheduling: classical tasks sharing a geometry go in batches (a 64² FBP task takes a few
milliseconds, a Dask task costs about a millisecond of scheduling); flow-method tasks go one
per Dask task and, when the cluster declares ``GPU`` resources (``dask worker ...
--resources GPU=1``), ask for ``{"GPU": 1}`` and run on CUDA.  Local clusters:
``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)``; with CUDA each local
worker declares GPU=1 and they share the local GPU.  Workers run one torch thread per task
(``study.threads``) and Dask's default ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputError
from ..io.atomic import atomic_file, one_line
from .config import StudyConfig
from .grid import expand

RESULTS = "results.jsonl"
CONFIG = "config.json"
MACHINE = "machine.json"
EXAMPLES = "examples"
MAX_BATCH = 16
BATCHES_PER_WORKER = 16
# Keys of config.json that must match to resume: the grid may grow, the rest may not change.
FIXED_KEYS = ("size", "prior", "device", "threads", "data", "metrics")


def check_inputs(config: StudyConfig) -> None:
    """Everything that can be checked before any work: the images exist (enough of them)
    and a prior needed by the flow methods loads and fits the image size."""
    from .images import ground_truths

    found = len(ground_truths(config.data, config.size))
    if found < config.data.images:
        raise InputError(f"{config.source_file}: data.images: {config.data.images} asked for, "
                         f"the {config.data.source} source has {found}")
    if config.needs_prior():
        from ..errors import PriorError
        from .worker import CACHE

        try:
            CACHE.prior(config.prior, config.size, "cpu")
        except (PriorError, ModuleNotFoundError) as exc:
            raise InputError(f"{config.source_file}: study.prior: {exc}") from None


def check_output(config: StudyConfig, out: Path, resume: bool) -> None:
    """OutputError / InputError, before anything is written, if ``out`` cannot take this
    study's results (not a folder, read-only, holds results without ``resume``, or holds
    results made with other fixed settings or other options of a method)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if not out.exists() and not out.parent.is_dir():
        raise OutputError(f"{out}: its folder {out.parent} does not exist")
    if not os.access(out if out.exists() else out.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: folder is read-only")
    new = config.as_dict()
    if (out / RESULTS).exists():
        if not resume:
            raise OutputError(f"{out}: already holds study results; continue them with "
                              "--resume or choose another output folder")
        old = _read_json(out / CONFIG)
        for key in FIXED_KEYS:
            if old.get(key) != new.get(key):
                raise InputError(f"{out}: holds results made with {key} = {old.get(key)}, "
                                 f"this study has {new.get(key)}; use another output folder")
        for method, opts in new["methods"].items():
            if method in old.get("methods", {}) and old["methods"][method] != opts:
                raise InputError(f"{out}: holds {method} results made with options "
                                 f"{old['methods'][method]}, this study has {opts}; use "
                                 "another output folder")


def open_results(config: StudyConfig, out: Path, resume: bool) -> Any:
    """The results table of ``out`` (the folder and ``config.json`` written) after
    :func:`check_output`."""
    from ..bench import ResultStore

    check_output(config, out, resume)
    out.mkdir(exist_ok=True)
    write_json(out / CONFIG, config.as_dict())
    return ResultStore(out / RESULTS)


def context_of(config: StudyConfig, flow_device: str) -> dict[str, Any]:
    """What every task needs besides its own dict (small, sent once to each worker)."""
    from dataclasses import asdict

    return {"size": config.size, "prior": config.prior, "threads": config.threads,
            "flow_device": flow_device, "data": asdict(config.data),
            "methods": config.methods, "metrics": list(config.metrics.names),
            "window": config.metrics.region_hu_window,
            "mask": None if config.mask is None else config.mask.copy()}


def batches(pending: list[dict[str, Any]], workers: int,
            size: int | None = None) -> list[list[dict[str, Any]]]:
    """Flow tasks one per batch; classical tasks of one geometry in batches of ``size``.

    Default size: enough batches for ``BATCHES_PER_WORKER`` per worker, at most MAX_BATCH
    tasks each, so that the last batches, which run while other workers idle, are short.
    Longest first: flow tasks, then classical batches by decreasing view count (a
    largest-processing-time-first order that keeps the tail of the schedule short).
    """
    from ..solvers import SOLVERS

    classical = [t for t in pending if not SOLVERS[t["method"]].needs_prior]
    if size is None:
        per_batch = math.ceil(len(classical) / (BATCHES_PER_WORKER * max(workers, 1)))
        size = max(1, min(MAX_BATCH, per_batch))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    flow: list[list[dict[str, Any]]] = []
    full: list[list[dict[str, Any]]] = []
    for task in pending:
        if SOLVERS[task["method"]].needs_prior:
            flow.append([task])
            continue
        geo = (task["geometry"], task["range_deg"], task["views"])
        group = groups.setdefault(geo, [])
        group.append(task)
        if len(group) == size:
            full.append(group)
            groups[geo] = []
    full.extend(g for g in groups.values() if g)
    full.sort(key=lambda group: (-int(group[0]["views"]), -len(group)))
    return flow + full


def run_study(config: StudyConfig, out: str | os.PathLike[str], workers: int | None = None,
              scheduler: str | None = None, resume: bool = False, serial: bool = False,
              batch: int | None = None, progress: bool = True, report: bool = True,
              client: Any = None) -> dict[str, Any]:
    """Run (or continue) a study into ``out`` and write its report; returns a summary with
    ``new`` (tasks run now), ``skipped`` (already stored), ``failed`` (tasks a method
    refused, recorded with the message), ``lost`` (tasks not finished: run --resume),
    ``workers``, ``seconds`` (all of it) and ``run_seconds`` (from the first task submitted
    to the last result stored).  ``client``: a ``distributed.Client`` to use (kept open)
    instead of ``scheduler`` or a new local cluster."""
    from ..bench.machine import machine_info

    out = Path(out)
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be positive, got {workers}")
    if batch is not None and batch < 1:
        raise InputError(f"--batch must be positive, got {batch}")
    check_inputs(config)
    check_output(config, out, resume)
    tasks = expand(config)
    start = time.perf_counter()
    machines: dict[str, Any] = {"driver": machine_info(), "packages": package_versions()}
    if serial:
        flow_device = _local_flow_device(config.device)
        store = open_results(config, out, resume)
        pending = [t for t in tasks if t["key"] not in store]
        run = _run_serial(config, out, store, pending, flow_device, progress)
    else:
        with _client(config, workers, scheduler, client) as (dask, flow_device, gpu):
            store = open_results(config, out, resume)  # once the cluster fits the study
            pending = [t for t in tasks if t["key"] not in store]
            machines["workers"] = dask.run(machine_info)
            run = _run_dask(config, out, store, pending, dask, flow_device, gpu, batch,
                            progress)
    run.update(skipped=len(tasks) - len(pending), seconds=time.perf_counter() - start,
               out=str(out))
    write_json(out / MACHINE, {**machines, "last_run": {k: run[k] for k in (
        "new", "failed", "lost", "seconds", "run_seconds", "workers")}})
    if report:
        from .report import write_report

        write_report(out)
    return run


def package_versions() -> dict[str, str | None]:
    """Versions of the libraries a study's numbers and scheduling depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("dask", "distributed", "scipy", "scikit-image", "h5py", "pydicom",
                 "matplotlib", "tqdm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _local_flow_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("study.device: cuda asked for, but no CUDA GPU is available")
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) \
        else "cpu"


@contextmanager
def _client(config: StudyConfig, workers: int | None, scheduler: str | None,
            given: Any = None) -> Iterator[tuple[Any, str, bool]]:
    """A Dask client: ``given``, else on ``scheduler``, else on a new LocalCluster; yields
    it with the flow methods' device and whether GPU resources are declared."""
    from distributed import Client, LocalCluster

    cluster = None
    if given is not None:
        client = given
    elif scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
    else:
        flow_device = _local_flow_device(config.device)
        n = workers or os.cpu_count() or 1
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=40,
                               resources={"GPU": 1} if flow_device == "cuda" else None)
        client = Client(cluster)
    try:
        info = client.scheduler_info()["workers"]
        gpu = any(w.get("resources", {}).get("GPU", 0) > 0 for w in info.values())
        if config.device == "cuda" and not gpu:
            raise InputError("study.device: cuda asked for, but no Dask worker declares a GPU "
                             "(start GPU workers with --resources GPU=1)")
        flow_device = "cuda" if gpu and config.device != "cpu" else "cpu"
        yield client, flow_device, gpu
    finally:
        if given is None:
            client.close()
        if cluster is not None:
            cluster.close()


def _run_serial(config: StudyConfig, out: Path, store: Any, pending: list[dict[str, Any]],
                flow_device: str, progress: bool) -> dict[str, Any]:
    import torch

    from .worker import run_task, unfreeze

    context = context_of(config, flow_device)
    threads = torch.get_num_threads()
    counts: dict[str, Any] = {"new": 0, "failed": 0, "lost": 0, "workers": 1}
    start = time.perf_counter()
    try:
        with _bar(len(pending), progress) as bar:
            for task in pending:
                _store(out, store, run_task(context, task), counts, config)
                bar.update(1)
        counts["run_seconds"] = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
        unfreeze()
    return counts


def _run_dask(config: StudyConfig, out: Path, store: Any, pending: list[dict[str, Any]],
              client: Any, flow_device: str, gpu: bool, batch: int | None,
              progress: bool) -> dict[str, Any]:
    from distributed import as_completed

    from ..solvers import SOLVERS
    from .worker import run_batch

    n_workers = len(client.scheduler_info()["workers"])
    counts: dict[str, Any] = {"new": 0, "failed": 0, "lost": 0, "workers": n_workers}
    start = time.perf_counter()
    context = client.scatter(context_of(config, flow_device), broadcast=True)
    futures, sizes = [], {}
    for group in batches(pending, n_workers, batch):
        flow = SOLVERS[group[0]["method"]].needs_prior
        resources = {"GPU": 1} if flow and gpu and flow_device == "cuda" else None
        future = client.submit(run_batch, context, group, pure=False, resources=resources,
                               key=f"study-{group[0]['key']}")
        futures.append(future)
        sizes[future.key] = len(group)
    try:
        with _bar(len(pending), progress) as bar:
            for future in as_completed(futures):
                try:
                    records = future.result()
                except Exception as exc:  # e.g. a batch that kept killing workers
                    counts["lost"] += sizes[future.key]
                    counts.setdefault("lost_reason", one_line(exc))
                    bar.update(sizes[future.key])
                    continue
                for record in records:
                    _store(out, store, record, counts, config)
                bar.update(len(records))
        counts["run_seconds"] = time.perf_counter() - start
    except BaseException:
        client.cancel(futures)
        raise
    return counts


def _store(out: Path, store: Any, record: dict[str, Any], counts: dict[str, int],
           config: StudyConfig) -> None:
    """Append one record (its example image saved beside the table first)."""
    if record["key"] in store:
        return
    image = record.pop("_image", None)
    if image is not None:
        from .images import ground_truths

        folder = out / EXAMPLES
        folder.mkdir(exist_ok=True)
        index = int(record["image_index"])
        gt_path = folder / f"gt_{index}.npy"
        if not gt_path.exists():
            save_array(gt_path, ground_truths(config.data, config.size)[index])
        record["example"] = f"{EXAMPLES}/{example_name(record['key'])}.npy"
        save_array(out / record["example"], image)
    store.append(record)
    counts["new"] += 1
    counts["failed"] += "error" in record


def example_name(key: str) -> str:
    """A file name for a task key (letters, digits, ``._-``)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


@contextmanager
def _bar(total: int, progress: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, disable=not progress, unit="task", desc="study")
    try:
        yield bar
    finally:
        bar.close()


def save_array(path: Path, array: np.ndarray) -> None:
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(array, dtype=np.float32), allow_pickle=False)


def write_json(path: Path, data: Any) -> None:
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise InputError(f"{path}: is not valid JSON") from None
    return data if isinstance(data, dict) else {}
