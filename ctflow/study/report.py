"""The study report: ``report.md`` with a summary table (scores with 95 % intervals over
images, paired differences to the reference method, seconds and peak memory per solve,
NFE), ``summary.csv``, curves against views and dose, paired-difference curves and example
montages with error maps (PNG), and the machines and package versions (``machine.json``).
Statistics: :mod:`ctflow.study.stats`."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_file
from . import figures
from .grid import Setting, setting_of
from .runner import CONFIG, MACHINE, RESULTS
from .stats import Interval, intervals, paired, resource_summary

MONTAGE_ROWS = 6
MACHINE_KEYS = ("cpu", "cores", "ram_gb", "gpu", "torch_threads", "os", "python", "torch",
                "numpy", "astra", "ctflow", "git_commit")


def read_results(out: Path) -> list[dict[str, Any]]:
    """The records of ``out/results.jsonl`` (a cut-short last line is ignored)."""
    from ..bench import ResultStore

    path = Path(out) / RESULTS
    if not path.exists():
        raise InputError(f"{out}: holds no study results ({RESULTS})")
    return list(ResultStore(path).records.values())


def write_report(out: str | Path) -> dict[str, Any]:
    """Write the report files into ``out``; returns {"files": [...], "rows": n}."""
    out = Path(out)
    records = read_results(out)
    config = json.loads((out / CONFIG).read_text(encoding="utf-8"))
    methods = list(config["methods"])
    methods += sorted({r["method"] for r in records} - set(methods))
    reference = config["reference"]
    metrics = [m for m in ("psnr", "ssim", "rmse_hu") if m in config["metrics"]["names"]]
    region = [f"{m}_region" for m in metrics if any(f"{m}_region" in r for r in records)]
    ivals = {m: intervals(records, m) for m in metrics + region}
    diffs = {m: paired(records, m, reference) for m in metrics + region}
    res = resource_summary(records)
    files: list[str] = []
    families = sorted({(s.geometry, s.range_deg, s.dead_views) for s, _ in res},
                      key=lambda f: (f[0], f[1] or 0, f[2]))
    shown: dict[str, dict[tuple[Setting, str], Interval]] = {
        m: ivals[m] for m in ("psnr", "ssim") if m in ivals}
    for n, fam in enumerate(families):
        tag = "" if len(families) == 1 else f"_{n}"
        title = _family_title(fam)
        for along, name in (("views", "curves_views"), ("photons", "curves_dose")):
            if figures.curves(out / f"{name}{tag}.png", shown, methods, along, fam, title):
                files.append(f"{name}{tag}.png")
        pd: dict[str, dict[tuple[Setting, str], Interval]] = {
            m: diffs[m] for m in ("psnr", "ssim") if m in diffs}
        if any(pd.values()) and figures.curves(out / f"paired_views{tag}.png", pd,
                                               [m for m in methods if m != reference],
                                               "views", fam, f"{title}: difference to "
                                               f"{reference} (95 % CI)", zero_line=True):
            files.append(f"paired_views{tag}.png")
    files += _montages(out, records, methods)
    rows = _rows(res, ivals, diffs, methods, metrics + region)
    _write_csv(out / "summary.csv", rows)
    files.append("summary.csv")
    machine = _read_json(out / MACHINE)
    text = _markdown(config, records, rows, files, machine, metrics + region)
    with atomic_file(out / "report.md", overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return {"files": ["report.md", *files], "rows": len(rows)}


def _family_title(fam: tuple) -> str:
    geometry, range_deg, dead = fam
    rng = "full range" if range_deg is None else f"{range_deg:g}°"
    return f"{geometry} beam, {rng}, {dead} dead views"


def _rows(res: dict, ivals: dict, diffs: dict, methods: list[str],
          metrics: list[str]) -> list[dict[str, Any]]:
    order = {m: i for i, m in enumerate(methods)}
    keys = sorted(res, key=lambda k: (k[0].geometry, k[0].range_deg or 0, k[0].dead_views,
                                      k[0].photons is None, k[0].photons or 0, k[0].views,
                                      order.get(k[1], 99)))
    rows = []
    for setting, method in keys:
        row: dict[str, Any] = {"geometry": setting.geometry,
                               "range_deg": setting.range_deg or "full",
                               "views": setting.views,
                               "photons": figures.dose_label(setting.photons),
                               "dead_views": setting.dead_views, "method": method}
        for m in metrics:
            iv: Interval | None = ivals[m].get((setting, method))
            d: Interval | None = diffs[m].get((setting, method))
            row.update({f"{m}_mean": _num(iv, "mean"), f"{m}_ci_low": _num(iv, "low"),
                        f"{m}_ci_high": _num(iv, "high"), f"{m}_images": iv.n if iv else 0,
                        f"{m}_diff_mean": _num(d, "mean"), f"{m}_diff_ci_low": _num(d, "low"),
                        f"{m}_diff_ci_high": _num(d, "high")})
        row.update(res[(setting, method)])
        rows.append(row)
    return rows


def _num(iv: Interval | None, field: str) -> float:
    return math.nan if iv is None else float(getattr(iv, field))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def _montages(out: Path, records: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """One montage per example image: up to MONTAGE_ROWS settings (the fewest views and
    highest dose first)."""
    by_image: dict[int, dict[Setting, dict[str, str]]] = {}
    for r in records:
        if isinstance(r.get("example"), str) and "error" not in r:
            by_image.setdefault(int(r["image_index"]), {}).setdefault(
                setting_of(r), {})[r["method"]] = r["example"]
    files = []
    for index, per_setting in sorted(by_image.items()):
        gt_path = out / "examples" / f"gt_{index}.npy"
        if not gt_path.exists():
            continue
        gt = np.load(gt_path, allow_pickle=False)
        chosen = sorted(per_setting, key=lambda s: (s.geometry, s.range_deg or 0, s.dead_views,
                                                    s.photons is None, s.photons or 0,
                                                    s.views))[:MONTAGE_ROWS]
        rows = []
        for s in chosen:
            imgs = [(m, np.load(out / per_setting[s][m], allow_pickle=False))
                    for m in methods if m in per_setting[s]
                    and (out / per_setting[s][m]).exists()]
            if imgs:
                rows.append((s.label, imgs))
        if rows:
            name = f"montage_image{index}.png"
            figures.montage(out / name, gt, rows, f"image {index}: reconstructions (HU "
                            "−1000..1000) and errors (±200 HU)")
            files.append(name)
    return files


def _fmt(row: dict[str, Any], m: str, digits: int) -> str:
    mean, lo, hi = row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"]
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def _fmt_diff(row: dict[str, Any], m: str, digits: int) -> str:
    mean, lo, hi = row[f"{m}_diff_mean"], row[f"{m}_diff_ci_low"], row[f"{m}_diff_ci_high"]
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(lo):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _markdown(config: dict, records: list, rows: list, files: list, machine: dict,
              metrics: list[str]) -> str:
    ref = config["reference"]
    done = sum("error" not in r for r in records)
    lines = [f"# Study {config['name']}", "",
             f"{len(records)} tasks stored ({done} scored, {len(records) - done} refused by "
             f"their method); images: {config['data']['images']} from the "
             f"{config['data']['source']} source (split {config['data']['split']}) at "
             f"{config['size']}²; seeds {config['seeds']}.", "",
             "Scores: mean ± half-width of the 95 % t-interval over images (each image's "
             "score averaged over seeds first). Δ: paired difference to the reference method "
             f"**{ref}** on the same images and data, mean [95 % CI]. s/solve: mean solver "
             "wall time; peak MB: the largest extra memory of one solve.", ""]
    whole = [m for m in metrics if not m.endswith("_region")]
    region = [m for m in metrics if m.endswith("_region")]
    lines += _table(rows, whole, ref, resources=True)
    if region:
        window = config["metrics"].get("region_hu_window")
        what = (f"pixels whose ground truth lies in [{window[0]:g}, {window[1]:g}] HU"
                if window else f"the mask {Path(config['metrics']['region_mask']).name}")
        lines += ["", f"### In the region ({what})", ""]
        lines += _table(rows, region, ref, resources=False)
    errors = sorted({r["error"] for r in records if "error" in r})
    if errors:
        lines += ["", "Refusals:", *[f"* {e}" for e in errors]]
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in files if f.endswith(".png")]
    lines += ["", "## Machine", ""] + _machine_lines(machine)
    return "\n".join(lines) + "\n"


def _table(rows: list[dict[str, Any]], metrics: list[str], ref: str,
           resources: bool) -> list[str]:
    """One Markdown table: a row per (setting, method), score and Δ columns per metric."""
    digits = {"psnr": 2, "ssim": 4, "rmse_hu": 1}
    head = ["geometry", "range", "views", "photons", "dead", "method"]
    for m in metrics:
        head += [figures.LABELS.get(m, m), f"Δ vs {ref}"]
    head += ["s/solve", "peak MB", "NFE", "n", "failed"] if resources else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["geometry"]), str(row["range_deg"]), str(row["views"]),
                 str(row["photons"]), str(row["dead_views"]), row["method"]]
        for m in metrics:
            d = digits[m.removesuffix("_region")]
            cells += [_fmt(row, m, d), _fmt_diff(row, m, d)]
        if resources:
            cells += [f"{row['seconds']:.3f}", f"{row['peak_mb']:.1f}", f"{row['nfe']:.0f}",
                      str(row["solved"]), str(row["failed"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _machine_lines(machine: dict[str, Any]) -> list[str]:
    lines = []
    driver = machine.get("driver", {})
    if driver:
        lines.append("* driver: " + ", ".join(f"{k} {driver.get(k)}" for k in MACHINE_KEYS
                                             if k in driver))
    workers = machine.get("workers", {})
    if workers:
        kinds: dict[str, int] = {}
        for info in workers.values():
            text = ", ".join(f"{k} {info.get(k)}" for k in MACHINE_KEYS if k in info)
            kinds[text] = kinds.get(text, 0) + 1
        for text, count in kinds.items():
            lines.append(f"* {count} worker(s): {text}")
    packages = machine.get("packages", {})
    if packages:
        lines.append("* packages (driver): " + ", ".join(f"{k} {v}" for k, v in packages.items()))
    run = machine.get("last_run")
    if run:
        lines.append(f"* last run: {run['new']} tasks in {run['seconds']:.1f} s on "
                     f"{run['workers']} worker(s); {run['lost']} lost.")
    return lines or ["(not recorded)"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError:
        return {}
