"""``ctflow study`` on a local Dask cluster: 2 workers give exactly the serial results; a
worker killed mid-run loses nothing (Dask reruns its batch) and a killed run continues with
--resume, each task stored once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from ctflow.study.config import load_config
from ctflow.study.grid import expand
from ctflow.study.runner import RESULTS, run_study
from ctflow.study.worker import TIMING_FIELDS, cache_builds

pytestmark = [pytest.mark.usefixtures("private_cache"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[study]
size = 32
seeds = [3]
[data]
source = "phantom"
images = 2
[acquisition]
views = [15, 30]
photons = ["none", 1e5]
dead_views = [0, 1]
[methods.fbp]
[methods.tv]
iters = 20
[methods.sirt]
iters = 10
[report]
reference = "tv"
examples = 1
"""

# Slow enough (≈ 0.1–0.3 s a task) that the run is still going when it is interrupted.
LONGER = """
[study]
size = 64
[data]
source = "phantom"
images = 4
[acquisition]
views = [30, 60]
photons = ["none", 1e5]
[methods.tv]
iters = 400
[methods.sirt]
iters = 200
"""


def _records(out: Path) -> list[dict]:
    """The complete lines of the results table (one cut short by a kill is not a record)."""
    lines = (out / RESULTS).read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines if line]


def _scores(out: Path) -> dict[str, dict]:
    return {r["key"]: {k: v for k, v in r.items() if k not in TIMING_FIELDS}
            for r in _records(out)}


def test_two_workers_equal_the_serial_run(tmp_path):
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY)
    config = load_config(config_path)
    serial = run_study(config, tmp_path / "serial", serial=True, progress=False, report=False)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=40)
    client = Client(cluster)
    try:
        dask = run_study(config, tmp_path / "dask", progress=False, report=False,
                         client=client)
        builds = client.run(cache_builds)  # per worker: operators built, priors loaded
    finally:
        client.close()
        cluster.close()
    assert serial["new"] == dask["new"] == len(expand(config)) == 48
    assert dask["workers"] == 2 and dask["lost"] == 0 and dask["failed"] == 0
    # 48 tasks over 2 geometries (15 and 30 views): each worker builds each at most once.
    assert all(b["operators"] <= 2 and b["priors"] == 0 for b in builds.values())
    a, b = _scores(tmp_path / "serial"), _scores(tmp_path / "dask")
    assert len(a) == 48 and a == b  # every score, NFE and seed identical
    assert len(_records(tmp_path / "dask")) == 48
    assert all(r["psnr"] > 15 for r in a.values())


def _start(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ctflow.cli", "study", str(config), "-o",
                             str(out), "--no-progress", *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for_results(out: Path, count: int, proc: subprocess.Popen,
                      limit: float = 120.0) -> list[dict]:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if (out / RESULTS).exists():
            records = _records(out)
            if len(records) >= count:
                return records
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the study produced no results in time")


def test_killed_worker_and_interrupted_run_lose_nothing(tmp_path):
    config_path = tmp_path / "longer.toml"
    config_path.write_text(LONGER)
    total = len(expand(load_config(config_path)))
    out = tmp_path / "out"
    # 1. SIGKILL a worker process mid-run: its batch is rerun elsewhere, the run completes.
    proc = _start(config_path, out, "--workers", "2", "--batch", "1")
    first = _wait_for_results(out, 2, proc)
    victim = int(first[0]["worker"].rsplit(":", 1)[1])
    os.kill(victim, signal.SIGKILL)
    # 2. Then stop the whole run (SIGTERM, as a batch system does) before it finishes.
    _wait_for_results(out, len(first) + 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "continue them with --resume" in err
    stored = _records(out)
    keys = [r["key"] for r in stored]
    assert len(keys) == len(set(keys)) and 0 < len(keys) < total
    assert any(r["worker"].endswith(f":{victim}") for r in stored)
    # 3. --resume runs only the rest; every task is then stored exactly once.
    proc = _start(config_path, out, "--workers", "1", "--resume")
    text, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"{total - len(keys)} tasks run on 1 worker(s)" in text
    assert f"{len(keys)} already stored" in text
    final = _records(out)
    assert sorted(r["key"] for r in final) == sorted(t["key"] for t in expand(
        load_config(config_path)))
    assert final[: len(stored)] == stored  # nothing rewritten
    assert (out / "report.md").exists()
