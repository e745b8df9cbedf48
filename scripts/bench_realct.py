"""Real-anatomy headline: every method on the real validation patients at several sizes.

Runs ``ctflow bench --data realct`` (ctflow.bench.run_bench) once per (size, variant) into
OUT/<size>/<variant>/ (each a full bench report, resumable) and writes OUT/summary.md: one
table of mean PSNR (dB) per size, methods × tasks, and the best flow method's margin over
TV.  A *variant* is a set of methods with options, e.g. ``samples8`` = C-ΠGFM averaging 8
posterior samples (``ctflow.reconstruct(..., posterior_samples=8)``).

Example (the README's table; several hours of one CPU core at 256²):

    OMP_NUM_THREADS=1 python3 scripts/bench_realct.py -o docs/bench_realct \
        --sizes 64 128 256 --images 8 4 4
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ctflow.bench import BenchConfig, run_bench
from ctflow.io.atomic import atomic_file

TASKS = ["ct15", "ct30", "ct60", "ct30-1e5", "ct60-1e5", "fan60", "limited90"]
# label → (method, options, variant folder)
ROWS: dict[str, tuple[str, dict[str, Any], str]] = {
    "FBP": ("fbp", {}, "base"),
    "TV": ("tv", {}, "base"),
    "MBIR": ("mbir", {}, "base"),
    "C-ΠGFM@5": ("conjugate", {}, "base"),
    "ΠGFM@5": ("pigfm", {}, "base"),
    "C-ΠGFM@5 × 8 samples": ("conjugate", {"posterior_samples": 8}, "samples8"),
    "MS-Flow": ("msflow", {}, "msflow"),
}
SPLIT_TEXT = {
    "val": "ctflow.realct: Lung_Dx-A0002, both kernels, and two COVID-19-NY-SBU patients; "
           "never trained on, the presets tuned on them",
    "ood": "ctflow.realct: the GE head series, 28 slices; never trained or tuned on",
}
ATTRIBUTION = {
    "val": "Lung-PET-CT-Dx (TCIA, CC BY 4.0), COVID-19-NY-SBU (TCIA, CC BY 4.0)",
    "ood": "dcm_qa_ct head series (C. Rorden; Aliza Medical Imaging's public samples), "
           "BSD-2-Clause",
}
FLOW_LABELS = ("C-ΠGFM@5", "ΠGFM@5", "C-ΠGFM@5 × 8 samples", "MS-Flow")


def run(out: Path, size: int, images: int, tasks: list[str], rows: list[str], prior: str,
        msflow_tasks: list[str], split: str) -> None:
    """One bench run per variant folder at ``size`` (resumed if it exists)."""
    variants: dict[str, dict[str, Any]] = {}
    for label in rows:
        method, options, variant = ROWS[label]
        v = variants.setdefault(variant, {"methods": [], "options": {}})
        v["methods"].append(method)
        if options:
            v["options"][method] = options
    for variant, v in variants.items():
        folder = out / str(size) / variant
        run_tasks = msflow_tasks if variant == "msflow" else tasks
        if not run_tasks:
            continue
        folder.parent.mkdir(parents=True, exist_ok=True)
        config = BenchConfig(tasks=run_tasks, methods=v["methods"], size=size, images=images,
                             prior=prior, options=v["options"], out=folder, data="realct",
                             split=split, resume=(folder / "results.jsonl").exists(),
                             threads=1)
        print(f"== {size}² {variant}: {', '.join(v['methods'])} on {', '.join(run_tasks)}",
              flush=True)
        run_bench(config, progress=True)


def mean_psnr(out: Path, size: int, label: str) -> dict[str, float]:
    """Task → mean PSNR of a row's method at ``size`` (from its variant's results)."""
    method, _, variant = ROWS[label]
    path = out / str(size) / variant / "results.jsonl"
    if not path.is_file():
        return {}
    scores: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("method") == method and "psnr" in rec and rec.get("size") == size:
            scores.setdefault(rec["task"], []).append(float(rec["psnr"]))
    return {t: sum(v) / len(v) for t, v in scores.items()}


def summary(out: Path, sizes: list[int], images: list[int], tasks: list[str],
            rows: list[str], command: str, split: str = "val") -> str:
    title = ("the validation patients" if split == "val" else
             "the head series (out of distribution: never trained or tuned on)")
    lines = [f"# Real anatomy: mean PSNR (dB) on {title}", "",
             f"Command: `{command}`", "",
             f"Real patients' slices of the {split} split ({SPLIT_TEXT[split]}), resized to "
             "each size; every method at its defaults (the default prior's presets).  "
             f"Attribution: {ATTRIBUTION[split]}.  Full tables: OUT/<size>/<variant>/report.md.",
             ""]
    for size, count in zip(sizes, images, strict=True):
        table = {label: mean_psnr(out, size, label) for label in rows}
        lines += [f"## {size}² ({count} slices)", "",
                  "| method | " + " | ".join(tasks) + " |",
                  "|---|" + "---|" * len(tasks)]
        for label in rows:
            cells = [f"{table[label][t]:.2f}" if t in table[label] else "–" for t in tasks]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        margin = []
        for t in tasks:
            flows = [table[r][t] for r in rows if r in FLOW_LABELS and t in table[r]]
            tv = table.get("TV", {}).get(t)
            margin.append(f"{max(flows) - tv:+.2f}" if flows and tv is not None else "–")
        lines += ["| best flow − TV | " + " | ".join(margin) + " |", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--sizes", nargs="+", type=int, default=[64])
    p.add_argument("--images", nargs="+", type=int, default=[8],
                   help="slices per size (one value, or one per size)")
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--msflow-tasks", nargs="*", default=None,
                   help="tasks MS-Flow runs on (default: all; it is the slowest method)")
    p.add_argument("--prior", default="default")
    p.add_argument("--split", default="val", choices=["val", "ood"],
                   help="val: the held-out chest patients; ood: the head series "
                   "(out of distribution)")
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)
    images = args.images * len(args.sizes) if len(args.images) == 1 else args.images
    if len(images) != len(args.sizes):
        p.error("--images: one value, or one per size")
    out = Path(args.out)
    msflow_tasks = args.tasks if args.msflow_tasks is None else args.msflow_tasks
    if not args.summary_only:
        for size, count in zip(args.sizes, images, strict=True):
            run(out, size, count, args.tasks, args.rows, args.prior, msflow_tasks,
                args.split)
    command = "python3 scripts/bench_realct.py " + shlex.join(argv if argv is not None
                                                              else sys.argv[1:])
    text = summary(out, args.sizes, images, args.tasks, args.rows, command, args.split)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "summary.md", overwrite=True) as tmp:
        tmp.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
