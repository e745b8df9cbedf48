"""The benchmarks of DESIGN §5: ``ctflow bench`` and everything the benchmark and tuning
scripts share.

Modules, one job each:

* :mod:`.tasks` — the benchmark tasks (operator, noise model) and the held-out phantoms;
* :mod:`.sources` — where ``ctflow bench`` gets its images (phantoms, DICOM, HDF5, real CT);
* :mod:`.config` — what ``ctflow bench`` runs and the checks of a configuration;
* :mod:`.harness` — :func:`run_bench` and :func:`warm_projector`;
* :mod:`.report` — the results folder and the report made from it;
* :mod:`.machine` — the machine record and the peak memory of one solve;
* :mod:`.tune` — the one tuner every tuning script uses (grid, score, tie-break, presets and
  tuning log);
* :mod:`.guided`, :mod:`.guided_report` — the guided samplers' benchmark, tuning and report
  (scripts/bench_conjugate.py); :mod:`.baselines` — tuning the flow baselines
  (scripts/tune_baselines.py); :mod:`.latent` — MS-Flow / D-Flow benchmark and tuning
  (scripts/bench_msflow.py); :mod:`.gaussian_fit` — their smoke-test Gaussian priors;
  :mod:`.htc2022` — the HTC2022 real fan-beam check (scripts/check_htc2022.py).

The names the command and ctflow.study use are exported here.
"""

from __future__ import annotations

from .config import BenchConfig, method_accepts
from .harness import run_bench, warm_projector
from .machine import MB, PeakMemory, machine_info
from .report import (
    CONFIG,
    CSV_COLUMNS,
    EXAMPLES,
    HU_WINDOW,
    MACHINE,
    RESULTS,
    ResultStore,
    result_key,
    summarize,
    write_report,
)
from .sources import REALCT, make_source, square_resize
from .tasks import SOLVER_BENCH_TASKS, TASKS, Problem, get_task, heldout_images

__all__ = ["CONFIG", "CSV_COLUMNS", "EXAMPLES", "HU_WINDOW", "MACHINE", "MB", "REALCT",
           "RESULTS", "SOLVER_BENCH_TASKS", "TASKS", "BenchConfig", "PeakMemory", "Problem",
           "ResultStore", "get_task", "heldout_images", "machine_info", "make_source",
           "method_accepts", "result_key", "run_bench", "square_resize", "summarize",
           "warm_projector", "write_report"]
