"""Scaling and scheduling overhead of ``ctflow study`` on Dask (writes docs/bench_study.md).

1. Throughput: a CPU-bound study (64² phantoms, TV with ``--tv-iters`` iterations, views
   30/60 × photons none/1e5) on a local cluster of 1 worker and one of 2 workers, runs
   alternating between them; throughput = tasks / seconds from the first task submitted to
   the last result stored, after a warm-up study on each cluster (worker imports, operator
   builds).  Speed-up = throughput(2) / throughput(1), of the best and of the median runs.
2. Overhead: a study of 64² FBP tasks run serially in this process and on a 1-worker local
   cluster (automatic batches, and one task per Dask task); overhead per task =
   (Dask seconds − serial seconds) / tasks, compared with the serial time of one whole task
   (simulate + FBP + scores) and of the FBP solve alone.

    python3 scripts/bench_study.py                       # ≈ 8 min on 2 idle cores
    python3 scripts/bench_study.py --images 8 --fbp-images 16 --out bench_study_quick.md

Run it on an otherwise idle machine: other processes on the same cores depress the
speed-up.  The load average before and after is recorded in the output.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _config(size: int, images: int, views: list[int], methods: dict[str, dict],
            name: str) -> object:
    from ctflow.study.config import parse_config

    raw = {"study": {"name": name, "size": size, "seeds": [0]},
           "data": {"source": "phantom", "images": images},
           "acquisition": {"views": views, "photons": ["none", 1e5]},
           "methods": methods, "report": {"examples": 0}}
    return parse_config(raw, base=ROOT, label=name)


def _cluster(workers: int):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=40)
    return cluster, Client(cluster)


def _run(config, work: Path, tag: str, **kw) -> dict:
    from ctflow.study.runner import run_study

    return run_study(config, work / tag, progress=False, report=False, **kw)


def throughput(work: Path, images: int, iters: int, repeats: int) -> list[dict]:
    """Tasks per second on 1 and on 2 local workers: both clusters warmed up first, then
    the runs alternate 1, 2, 1, 2, ... (``repeats`` each) so that a burst of load from
    other processes hits both alike; best and median of the repeats."""
    tv: dict[str, dict] = {"tv": {"iters": iters}}
    warm = _config(64, 2, [30, 60], tv, "warm-up")
    main = _config(64, images, [30, 60], tv, "tv-throughput")
    clusters = {w: _cluster(w) for w in (1, 2)}
    times: dict[int, list[float]] = {1: [], 2: []}
    try:
        for workers, (_, client) in clusters.items():
            _run(warm, work, f"warm{workers}", client=client)
        for r in range(repeats):
            for workers, (_, client) in clusters.items():
                res = _run(main, work, f"tv{workers}-{r}", client=client)
                times[workers].append(res["run_seconds"])
                print(f"TV study, {workers} worker(s), run {r + 1}: {res['new']} tasks in "
                      f"{res['run_seconds']:.1f} s", flush=True)
    finally:
        for cluster, client in clusters.values():
            client.close()
            cluster.close()
    tasks = res["new"]
    return [{"workers": w, "tasks": tasks, "runs": t, "best": min(t),
             "median": statistics.median(t), "per_s": tasks / min(t),
             "per_s_median": tasks / statistics.median(t)} for w, t in times.items()]


def _timings(res: dict, out: Path) -> dict:
    """Wall seconds of a run, and the summed seconds its tasks computed (``task_seconds``:
    simulate + solve + scores, measured inside each task) and solved (``seconds``)."""
    import json

    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    return {"wall": res["run_seconds"], "task": sum(r["task_seconds"] for r in recs),
            "solve": sum(r["seconds"] for r in recs), "tasks": len(recs)}


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def overhead(work: Path, images: int, repeats: int) -> dict:
    """Serial vs 1-worker Dask timings of the same FBP study (medians over repeats)."""
    fbp: dict[str, dict] = {"fbp": {}}
    config = _config(64, images, [30, 60, 90, 120], fbp, "fbp-overhead")
    _run(_config(64, 2, [30, 60, 90, 120], fbp, "warm-up"), work, "warm-serial", serial=True)
    out = {"serial": _median([_timings(_run(config, work, f"serial{r}", serial=True),
                                       work / f"serial{r}") for r in range(repeats)])}
    cluster, client = _cluster(1)
    try:
        _run(_config(64, 2, [30, 60, 90, 120], fbp, "warm-up"), work, "warm-dask",
             client=client)
        for label, batch in (("auto", None), ("single", 1)):
            out[label] = _median([_timings(_run(config, work, f"dask-{label}{r}",
                                                client=client, batch=batch),
                                           work / f"dask-{label}{r}") for r in range(repeats)])
    finally:
        client.close()
        cluster.close()
    print("FBP study: " + ", ".join(f"{k} {v['wall']:.2f} s" for k, v in out.items()),
          flush=True)
    return out


def report(tp: list[dict], ov: dict, args: argparse.Namespace, loads: tuple) -> str:
    from ctflow.bench.machine import machine_info
    from ctflow.study.runner import MAX_BATCH

    m = machine_info()
    speedup = tp[1]["per_s"] / tp[0]["per_s"]
    speedup_median = tp[1]["per_s_median"] / tp[0]["per_s_median"]
    n = ov["serial"]["tasks"]
    task_ms = 1e3 * ov["serial"]["task"] / n
    solve_ms = 1e3 * ov["serial"]["solve"] / n
    auto = min(MAX_BATCH, math.ceil(n / 4))  # runner.batches on one worker
    lines = ["# `ctflow study` on Dask: scaling and scheduling overhead", "",
             "Made by `python3 scripts/bench_study.py "
             f"--images {args.images} --tv-iters {args.tv_iters} --fbp-images "
             f"{args.fbp_images} --repeats {args.repeats}`.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB; torch "
             f"{m['torch']}, astra {m['astra']}, ctflow {m['ctflow']} ({m['git_commit']}). "
             f"Load average (1 min) {loads[0]:.2f} before, {loads[1]:.2f} after: other "
             "processes on the same cores depress the speed-up and inflate the overhead.", "",
             "## Throughput: 1 → 2 local workers", "",
             f"64² phantoms, TV with {args.tv_iters} iterations, views 30/60 × photons "
             "none/1e5; seconds from the first task submitted to the last result stored, "
             f"after a warm-up study on each cluster; {args.repeats} runs per cluster, "
             "alternating between them.", "",
             "| workers | tasks | seconds of each run | best | median | tasks/s (best) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['tasks']} | "
              f"{', '.join(f'{t:.1f}' for t in r['runs'])} | {r['best']:.1f} | "
              f"{r['median']:.1f} | {r['per_s']:.2f} |" for r in tp]
    lines += ["", f"**Speed-up 1 → 2 workers: {speedup:.2f}× (best runs), "
              f"{speedup_median:.2f}× (medians)** (target ≥ 1.7×).", "",
              "## Scheduling overhead per task", "",
              f"{n} tasks of 64² FBP (phantoms, views 30/60/90/120 × photons none/1e5), "
              f"medians of {args.repeats} runs. A task is simulate + FBP + scores "
              f"({task_ms:.1f} ms serially, of which the FBP solve {solve_ms:.1f} ms). "
              "*Wall* runs from the first task submitted to the last result stored (the "
              "driver appends and fsyncs one line per task); *not computing* = wall − the "
              "time spent inside the tasks, per task: on one Dask worker that is the "
              "worker's idle time, i.e. the scheduling overhead; serially it is the "
              "driver's own bookkeeping.", "",
              "| run | wall per task (ms) | computing per task (ms) | not computing per "
              "task (ms) | not computing / whole task | not computing / FBP solve |",
              "|---|---|---|---|---|---|"]
    for label, name in (("serial", "serial, in this process"),
                        ("auto", f"1 Dask worker, automatic batches ({auto} tasks each)"),
                        ("single", "1 Dask worker, one task per Dask task")):
        t = ov[label]
        wall, comp = 1e3 * t["wall"] / n, 1e3 * t["task"] / n
        idle = wall - comp
        lines.append(f"| {name} | {wall:.2f} | {comp:.2f} | {idle:.2f} | "
                     f"{100 * idle / task_ms:.1f} % | {100 * idle / solve_ms:.1f} % |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16,
                        help="images of the TV throughput study (4 tasks each)")
    parser.add_argument("--tv-iters", type=int, default=500, help="TV iterations per task")
    parser.add_argument("--fbp-images", type=int, default=32,
                        help="images of the FBP overhead study (8 tasks each)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each measurement (best and median reported)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_study.md"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_study_") as tmp:
        tp = throughput(Path(tmp), args.images, args.tv_iters, args.repeats)
        ov = overhead(Path(tmp), args.fbp_images, args.repeats)
    text = report(tp, ov, args, (before, os.getloadavg()[0]))
    from ctflow.io.atomic import atomic_file

    with atomic_file(args.out, overwrite=True) as tmp_path:
        Path(tmp_path).write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
