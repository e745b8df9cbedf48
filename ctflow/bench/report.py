"""The results folder of a benchmark (:mod:`ctflow.bench.harness`) and the report made from it.

Layout of ``<out>``: ``results.jsonl`` (one JSON record per solve, keyed by (task, size,
method, image, seed)), ``config.json``, ``machine.json`` and ``examples/<task>_<size>/`` (the
ground truth and each method's reconstruction of the first image, .npy in HU).  The report is
``report.md`` (one Markdown table per task), ``<task>.csv`` and ``<task>.png``; a row holds
mean ± sample std (ddof = 1) over the n = images × seeds solves of one (task, size, method).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_file
from ..metrics import evaluate
from .tasks import TASKS

RESULTS = "results.jsonl"
CONFIG = "config.json"
MACHINE = "machine.json"
EXAMPLES = "examples"
HU_WINDOW = (-1000.0, 1000.0)  # figure window: air to dense bone


# ----------------------------------------------------------------------------------------
# Results store
# ----------------------------------------------------------------------------------------


def result_key(task: str, size: int, method: str, image: int, seed: int) -> str:
    return f"{task}|{size}|{method}|{image}|{seed}"


class ResultStore:
    """``results.jsonl``: one JSON object per solve, appended, flushed and fsync'ed.

    A last line cut short by an interruption is dropped on opening; a later duplicate of a
    key replaces the earlier record.
    """

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1  # the interrupted last line
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
            raw = raw[:cut]
        for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = rec["key"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{self.path}: line {number} is not a benchmark record") from None
            self.records[key] = rec

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"  # PSNR of an exact reconstruction is Infinity"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.records[record["key"]] = record


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object stored in ``path``; {} when there is no such file."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise InputError(f"{path}: is not valid JSON") from None


# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------

CSV_COLUMNS = ("task", "size", "method", "n", "failed", "psnr_mean", "psnr_std", "ssim_mean",
               "ssim_std", "rmse_hu_mean", "rmse_hu_std", "seconds_mean", "seconds_std",
               "peak_mb_max", "nfe_mean", "error")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from the records of one (task, size, method): mean and sample std
    (ddof = 1; 0 for a single solve) of each score, max of peak MB, mean NFE."""
    ok = [r for r in records if "error" not in r]
    first = records[0]
    row: dict[str, Any] = {"task": first["task"], "size": first["size"],
                           "method": first["method"], "n": len(ok),
                           "failed": len(records) - len(ok), "error": ""}
    for name in ("psnr", "ssim", "rmse_hu", "seconds"):
        values = np.array([r[name] for r in ok], dtype=np.float64)
        row[f"{name}_mean"] = float(values.mean()) if len(values) else math.nan
        row[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else \
            (0.0 if len(values) else math.nan)
    row["peak_mb_max"] = max((r["peak_mb"] for r in ok), default=math.nan)
    row["nfe_mean"] = float(np.mean([r["nfe"] for r in ok])) if ok else math.nan
    errors = sorted({r["error"] for r in records if "error" in r})
    row["error"] = "; ".join(errors)
    return row


def write_report(out: str | os.PathLike[str],
                 window: tuple[float, float] = HU_WINDOW) -> dict[str, list[dict[str, Any]]]:
    """Write ``report.md``, ``<task>.csv`` and ``<task>.png`` from ``<out>/results.jsonl``.

    Returns the table rows per task (:func:`summarize`), in the configured order of tasks,
    sizes and methods.
    """
    out = Path(out)
    store = ResultStore(out / RESULTS)
    if not store.records:
        raise InputError(f"{out}: holds no benchmark results ({RESULTS} missing or empty)")
    config = read_json(out / CONFIG)
    machine = read_json(out / MACHINE)
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for rec in store.records.values():
        groups.setdefault((rec["task"], int(rec["size"]), rec["method"]), []).append(rec)
    order = _ordering(config, groups)
    tables: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(groups, key=order):
        tables.setdefault(key[0], []).append(summarize(groups[key]))
    for task, rows in tables.items():
        _write_csv(out / f"{task}.csv", rows)
        _write_figure(out, task, rows, window)
    with atomic_file(out / "report.md", overwrite=True) as tmp:
        tmp.write_text(_markdown(tables, config, machine), encoding="utf-8")
    return tables


def _ordering(config: dict[str, Any], groups: Mapping) -> Any:
    def rank(items: list, value: Any) -> tuple[int, str]:
        return (items.index(value), "") if value in items else (len(items), str(value))

    tasks = list(config.get("tasks", []))
    methods = list(config.get("methods", []))
    return lambda k: (rank(tasks, k[0]), k[1], rank(methods, k[2]))


def _fmt(value: float, digits: int) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}f}"


def _pm(row: dict[str, Any], name: str, digits: int) -> str:
    return f"{_fmt(row[name + '_mean'], digits)} ± {_fmt(row[name + '_std'], digits)}"


def _markdown(tables: dict[str, list[dict[str, Any]]], config: dict[str, Any],
              machine: dict[str, Any]) -> str:
    m = machine.get("machine", {})
    data = config.get("data", {}) or {}
    source = {"phantoms": f"held-out phantoms (split {data.get('split', 'test')!r})",
              "dicom": f"DICOM series {data.get('name')}",
              "hdf5": f"HDF5 file {data.get('name')}",
              "realct": f"real patients' CT slices ({data.get('name')}, patient-level split "
                        f"{data.get('split')!r}; Lung-PET-CT-Dx and COVID-19-NY-SBU, TCIA, "
                        "CC BY 4.0; dcm_qa_ct, BSD-2-Clause)",
              }.get(data.get("kind"), "unknown")
    lines = [
        "# ctflow benchmark", "",
        f"- Test images: {source}; sizes {', '.join(f'{s}²' for s in config.get('sizes', []))};"
        f" up to {config.get('images')} images; seeds {config.get('seeds')}.",
        f"- Prior: {config.get('prior')}; method options: {json.dumps(config.get('options', {}))}.",
        f"- Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gb')} GB RAM, "
        f"GPU {m.get('gpu') or 'none'}, torch threads {m.get('torch_threads')}, "
        f"device {config.get('device')}.",
        f"- Versions: python {m.get('python')}, torch {m.get('torch')}, astra {m.get('astra')}, "
        f"ctflow {m.get('ctflow')} (commit {m.get('git_commit') or 'unknown'}).",
    ]
    machines = {json.dumps({k: r.get("machine", {}).get(k) for k in ("cpu", "cores", "gpu")})
                for r in machine.get("runs", [])}
    if len(machines) > 1:
        lines.append("- Warning: the results were computed in runs on different machines "
                     f"(see {MACHINE}); compare seconds and memory with care.")
    lines += [
        "",
        "Scores are mean ± sample std over the n solves (images × seeds), on HU images "
        "(PSNR and SSIM with data range = ground-truth max − min). s/image: solver wall time "
        "per image. Peak MB: the largest extra memory of one solve (resident high-water mark "
        "during the solve minus the resident size before it on CPU; allocated CUDA memory on "
        "GPU). NFE: network evaluations per image.", "",
    ]
    lines += _overview(tables)
    for task, rows in tables.items():
        desc = config.get("descriptions", {}).get(task) or \
            (TASKS[task].description if task in TASKS else "")
        lines += [f"## {task}" + (f" — {desc}" if desc else ""), "",
                  "| size | method | n | PSNR (dB) | SSIM | RMSE (HU) | s/image | peak MB | NFE |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["n"] == 0:
                lines.append(f"| {r['size']} | {r['method']} | 0 | n/a: {r['error']} "
                             "| | | | | |")
                continue
            lines.append(
                f"| {r['size']} | {r['method']} | {r['n']} | {_pm(r, 'psnr', 2)} | "
                f"{_pm(r, 'ssim', 3)} | {_pm(r, 'rmse_hu', 1)} | {_pm(r, 'seconds', 3)} | "
                f"{_fmt(r['peak_mb_max'], 1)} | {_fmt(r['nfe_mean'], 1)} |")
        failed = [r for r in rows if r["n"] and r["failed"]]
        for r in failed:
            lines.append(f"\n{r['method']} ({r['size']}²) failed on {r['failed']} solve(s): "
                         f"{r['error']}")
        lines += ["", f"![{task}]({task}.png)", ""]
    return "\n".join(lines)


def _overview(tables: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per size, one matrix of mean PSNR: a row per method, a column per task, the best of
    each column in bold ("–" where the method did not run on the task)."""
    lines: list[str] = []
    sizes = sorted({r["size"] for rows in tables.values() for r in rows})
    for size in sizes:
        cells = {(r["method"], task): r for task, rows in tables.items() for r in rows
                 if r["size"] == size and r["n"]}
        tasks = [t for t in tables if any(k[1] == t for k in cells)]
        methods = list(dict.fromkeys(k[0] for k in cells))
        best = {t: max(cells[m, t]["psnr_mean"] for m in methods if (m, t) in cells)
                for t in tasks}
        lines += [f"## Overview, {size}²: mean PSNR (dB)", "",
                  "| method | " + " | ".join(tasks) + " |",
                  "|---" * (len(tasks) + 1) + "|"]
        for m in methods:
            row = []
            for t in tasks:
                r = cells.get((m, t))
                text = _fmt(r["psnr_mean"], 2) if r else "–"
                row.append(f"**{text}**" if r and r["psnr_mean"] == best[t] else text)
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if isinstance(r[k], float) and not math.isfinite(r[k])
                             else r[k]) for k in CSV_COLUMNS})
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def _write_figure(out: Path, task: str, rows: list[dict[str, Any]],
                  window: tuple[float, float]) -> None:
    """Ground truth and each method's reconstruction of the first image, one row per size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sizes = sorted({r["size"] for r in rows})
    panels: list[list[tuple[str, np.ndarray | None]]] = []
    for size in sizes:
        folder = out / EXAMPLES / f"{task}_{size}"
        row: list[tuple[str, np.ndarray | None]] = [
            (f"ground truth ({size}²)", _load_npy(folder / "ground_truth.npy"))]
        for r in (r for r in rows if r["size"] == size):
            image = _load_npy(folder / f"{r['method']}.npy")
            gt = row[0][1]
            label = r["method"]
            if image is not None and gt is not None:
                label += f"\n{evaluate(image, gt)['psnr']:.2f} dB"
            elif image is None:
                label += "\nn/a"
            row.append((label, image))
        panels.append(row)
    cols = max(len(p) for p in panels)
    fig = Figure(figsize=(2.2 * cols, 2.4 * len(panels)), dpi=100)
    FigureCanvasAgg(fig)
    for i, row in enumerate(panels):
        for j, (label, image) in enumerate(row):
            ax = fig.add_subplot(len(panels), cols, i * cols + j + 1)
            if image is not None:
                ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1])
            ax.set_title(label, fontsize=8)
            ax.set_axis_off()
    fig.suptitle(f"{task}  (HU window [{window[0]:g}, {window[1]:g}])", fontsize=9)
    fig.tight_layout()
    with atomic_file(out / f"{task}.png", overwrite=True) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png")


def _load_npy(path: Path) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        return np.load(path)
    except (OSError, ValueError):
        return None
