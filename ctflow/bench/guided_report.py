"""The report of the guided samplers' benchmark (scripts/bench_conjugate.py,
:mod:`ctflow.bench.guided`): one Markdown table per task, the issue's targets as PSNR
differences paired per image, the CSV rows (and reading them back, to merge the reports of
partial runs), and the tuning runs behind the presets in use.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .tasks import get_task

METHOD_ORDER = ["conjugate", "conjugate+vjp", "conjugate-diffusion", "pigfm", "otode", "fbp",
                "tv"]


def markdown(rows: list[dict[str, Any]]) -> str:
    """One Markdown table per task (mean ± std PSNR, SSIM, RMSE, s/image, setting)."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        first = next(r for r in rows if r["task"] == task)
        lines += [f"\n### {task} — {get_task(task).description} "
                  f"({first['size']}², {first['images']} test images)\n",
                  "| method | NFE | PSNR (dB) | SSIM | RMSE (HU) | s/image | setting |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for r in (r for r in rows if r["task"] == task):
            lines.append(f"| {r['method']} | {r['nfe']:.0f} | {r['psnr']:.2f} ± "
                         f"{r['psnr_std']:.2f} | {r['ssim']:.3f} | {r['rmse_hu']:.1f} | "
                         f"{r['seconds']:.2f} | {r['setting']} |")
    return "\n".join(lines)


def paired_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Mean PSNR difference a − b with its standard error over the images both rows scored
    (d_i = a_i − b_i, SE = std(d, ddof=1)/√n), and on how many images a is ahead."""
    da, db = a.get("psnr_images", ""), b.get("psnr_images", "")
    va, vb = [float(v) for v in da.split()], [float(v) for v in db.split()]
    if not va or len(va) != len(vb):
        return f"{a['psnr'] - b['psnr']:+.2f}"
    d = np.array(va) - np.array(vb)
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return f"{d.mean():+.2f} ± {se:.2f} SE, ahead on {int((d > 0).sum())}/{d.size} images"


def targets(rows: list[dict[str, Any]]) -> str:
    """The issue's three targets per task, each method at its own tuned defaults; each
    difference is paired per image (mean ± standard error, see paired_difference)."""
    by: dict[str, dict[tuple[str, int], dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by[r["task"]][(r["method"], r["nfe_budget"])] = r
    lines = ["\n### Targets (PSNR differences in dB, paired per image; NaN = a method "
             "diverged)\n"]
    for task, d in by.items():
        c5, p5 = d.get(("conjugate", 5)), d.get(("pigfm", 5))
        best = max((r for (m, k), r in d.items()
                    if m == "pigfm" and k >= 50 and r["psnr"] == r["psnr"]),
                   key=lambda r: r["psnr"], default=None)
        parts = []
        if c5 is not None and p5 is not None:
            gap = c5["psnr"] - p5["psnr"]
            parts.append(f"C-ΠGFM@5 − ΠGFM@5 = {paired_difference(c5, p5)} "
                         f"({'met' if gap >= 1 else 'NOT met'}, target ≥ +1)")
        if c5 is not None and best is not None:
            gap = c5["psnr"] - best["psnr"]
            parts.append(f"C-ΠGFM@5 − best ΠGFM@≥50 (NFE {best['nfe_budget']}) = "
                         f"{paired_difference(c5, best)} "
                         f"({'met' if gap >= -0.5 else 'NOT met'}, target ≥ −0.5)")
        guided = [r for (m, k), r in d.items() if k > 0 and r["psnr"] == r["psnr"]]
        top = max(guided, key=lambda r: r["psnr"], default=None)
        if top is not None and p5 is not None:  # what any sampler here gains over ΠGFM@5
            parts.append(f"headroom: best guided row {top['method']}@{top['nfe_budget']} − "
                         f"ΠGFM@5 = {paired_difference(top, p5)}")
        tv = d.get(("tv", 0))
        if task == "ct60" and c5 is not None and tv is not None:
            gap = c5["psnr"] - tv["psnr"]
            parts.append(f"C-ΠGFM@5 − TV = {paired_difference(c5, tv)} "
                         f"({'met' if gap >= 2 else 'NOT met'}, target ≥ +2)")
        lines.append(f"- {task}: " + ("; ".join(parts) or "not measured"))
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV text (the union of their keys as columns)."""
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(key for r in rows for key in r))  # merged runs may differ
        writer = csv.DictWriter(buf, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def read_csv(name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and '# ' header lines of a CSV written by --csv."""
    lines = Path(name).read_text(encoding="utf-8").splitlines()
    notes = [ln[2:] for ln in lines if ln.startswith("# ")]
    rows = list(csv.DictReader(ln for ln in lines if not ln.startswith("# ")))
    for r in rows:
        for key in ("size", "nfe_budget", "images"):
            r[key] = int(r[key])
        for key in ("psnr", "ssim", "rmse_hu", "seconds", "nfe", "psnr_std"):
            r[key] = float(r[key])
        r.setdefault("psnr_images", "")  # CSVs written before per-image scores were kept
    return rows, notes


def report(rows: list[dict[str, Any]], commands: Sequence[str], machine: str, *,
           tasks: Sequence[str], size: int, split: str, device: str, log_path: Path) -> str:
    """The Markdown report (commands at the top): tables per task (in the order of
    ``tasks``, then of :data:`METHOD_ORDER` and budget), targets, CSV."""
    task_order = {t: i for i, t in enumerate(tasks)}
    rows = sorted(rows, key=lambda r: (task_order.get(r["task"], len(task_order)),
                                       METHOD_ORDER.index(r["method"])
                                       if r["method"] in METHOD_ORDER else len(METHOD_ORDER),
                                       r["nfe_budget"]))
    return "\n".join([
        f"# Conjugate integrators vs Euler baselines, {size}², split {split}\n",
        "Generated by\n", *[f"    {c}" for c in commands], "",
        f"Machine: {machine}.  Each guided sampler runs at its own validation-tuned "
        "defaults (the prior's presets, column *setting*); "
        "`+vjp` = jacobian=True (forward + VJP per step, so NFE/2 steps).  "
        "PSNR is mean ± std over the images; "
        + ("s/image shares 2 busy CPU cores." if device == "cpu" else
           "s/image is GPU time (synchronised), after one untimed warm-up solve."),
        tuning_summary(log_path), markdown(rows), targets(rows),
        "\n```csv\n" + to_csv(rows) + "```\n"])


def tuning_summary(log_path: Path) -> str:
    """The tuning runs behind the presets in use (from the tuning log)."""
    table = json.loads(log_path.read_text(encoding="utf-8")) if log_path.is_file() else {}
    lines = ["\nDefaults tuned on the validation split only, by:\n"]
    lines += [f"- `{run['command']}` on `{run['images']}`" for run in table.get("runs", [])]
    return "\n".join(lines)


def merge_csv(files: Sequence[str]) -> tuple[list[dict[str, Any]], list[str], str]:
    """Rows, commands and machine line of the CSV files of several partial runs."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for name in files:
        part, lines = read_csv(name)
        rows += part
        notes += lines
    commands = [n for n in notes if n.startswith("python ")]
    machines: dict[str, None] = {}
    seconds = 0
    for note in (n for n in notes if not n.startswith("python ")):
        found = re.fullmatch(r"(.*); (\d+) s", note)
        machines[found.group(1) if found else note] = None
        seconds += int(found.group(2)) if found else 0
    machine = "; ".join(machines) + f"; total {seconds} s over {len(files)} runs"
    return rows, commands, machine
