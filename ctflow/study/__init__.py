"""Sparse-view CT studies on Dask: a config, a task grid, a results table and a report.

    from ctflow.study import load_config, run_study
    summary = run_study(load_config("study.toml"), "study_out", workers=2)

Modules: ``config`` (the TOML file, validated), ``grid`` (tasks and their seeds),
``images`` (ground truths), ``worker`` (one task, per-worker caches), ``scoring``,
``runner`` (serial, local cluster or existing cluster; results.jsonl; resume),
``stats``, ``figures`` and ``report`` (report.md, summary.csv, PNG).  A script that runs a
study on a local cluster must guard its entry point with ``if __name__ == "__main__":``
(worker processes are spawned and import the main module).
"""

from .config import StudyConfig, load_config, parse_config
from .report import write_report
from .runner import run_study

__all__ = ["StudyConfig", "load_config", "parse_config", "run_study", "write_report"]
