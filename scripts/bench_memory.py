"""Peak memory of MS-Flow and D-Flow as the total number of Euler steps grows.

Each point (method, image size, total steps) runs in a fresh subprocess
(``python3 scripts/bench_memory.py --worker ...``) that builds a randomly initialised
diffusers ``UNet2DModel`` velocity network (architecture from ``ctflow.priors.unet``; memory
does not depend on training), warms it up, records the baseline, runs the solver for a few
iterations and reports

* CPU: the process peak RSS (``ru_maxrss``) raw and its increment over the baseline taken
  just before the solve (workers run with glibc malloc set to map large blocks on their
  own, ``MALLOC_ENV``, so RSS follows the live tensors);
* CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` and its increment.

Every point is measured in ``--repeats`` (default 3) fresh subprocesses and the median
increment is reported with its min–max spread.

MS-Flow keeps K = ``--shooting`` fixed and uses M = steps/K Euler steps per segment;
D-Flow back-propagates through all steps.  The task is inpainting of a random half of the
pixels (the operator's memory is negligible next to the network's).  Prints a Markdown and
a CSV table and writes a PNG plot (default ``docs/msflow_memory.png``).

    python3 scripts/bench_memory.py                 # 64² and 128², steps 8…128 (8,16 channels)
    python3 scripts/bench_memory.py --preset small --channels ''  # the shipped prior's size
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# glibc malloc in the workers: one arena, and every block over 128 KiB mapped and unmapped
# on its own, so the resident high-water mark follows the live tensors instead of what
# freed-but-kept heap happened to be around (without this the 128² MS-Flow points moved
# by ±18 MiB between repeats).
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "131072",
              "MALLOC_TRIM_THRESHOLD_": "131072"}


class NetPrior:
    """Factory for a Prior around a randomly initialised velocity UNet (imports lazily)."""

    @staticmethod
    def build(size: int, preset: str, channels: str | None, device: str):
        from ctflow.priors.base import Prior
        from ctflow.priors.unet import build_unet, unet_config, velocity_net_forward

        config = unet_config(size, preset)
        if channels:
            chans = [int(c) for c in channels.split(",")]
            config["block_out_channels"] = chans
            config["down_block_types"] = config["down_block_types"][: len(chans)]
            config["up_block_types"] = config["up_block_types"][-len(chans):]
            config["norm_num_groups"] = min(config["norm_num_groups"], chans[0])
            config["attention_head_dim"] = min(config["attention_head_dim"], chans[-1])
        torch.manual_seed(0)
        net = build_unet(config).to(device).eval()

        class _RandomNetPrior(Prior):
            def __init__(self) -> None:
                super().__init__()
                self.image_size = size
                self.net = net

            def _velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return velocity_net_forward(self.net, x, t)

            @property
            def device(self) -> torch.device:
                return torch.device(device)

        return _RandomNetPrior(), sum(p.numel() for p in net.parameters())


def _rss_now_kib() -> int:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() // 1024


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    from ctflow.operators import Inpainting
    from ctflow.solvers.dflow import dflow
    from ctflow.solvers.msflow import msflow

    prior, n_params = NetPrior.build(args.size, args.preset, args.channels, args.device)
    gen = torch.Generator().manual_seed(0)
    op = Inpainting(torch.rand(args.size, args.size, generator=gen) > 0.5)
    x = torch.rand(1, 1, args.size, args.size, generator=gen).to(args.device)
    y = op(x)
    with torch.no_grad():  # warm-up: allocator pools, lazy init
        prior.velocity(x, 0.5)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        base_now = _rss_now_kib() * 1024
    start = time.perf_counter()
    if args.method == "msflow":
        k = args.shooting
        out = msflow(y, op, prior=prior, shooting=k, segment_steps=max(args.steps // k, 1),
                     iters=args.iters, eta=args.eta)
        extra = {"grad_fallbacks": out.info["steps"]["grad_tried"]}
    else:
        out = dflow(y, op, prior=prior, steps=args.steps, iters=args.iters)
        extra = {"grad_fallbacks": 0}
    seconds = time.perf_counter() - start
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        record = {"peak_bytes": peak, "increment_bytes": peak - base, "baseline_bytes": base}
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        record = {"peak_bytes": peak, "increment_bytes": peak - max(base, base_now),
                  "baseline_bytes": base}
    record.update(method=args.method, size=args.size, steps=args.steps, seconds=seconds,
                  nfe=out.nfe, params=n_params, device=args.device, **extra)
    print("RESULT " + json.dumps(record), flush=True)


def run_point(args: argparse.Namespace, method: str, size: int, steps: int) -> dict:
    """The point measured in ``args.repeats`` fresh subprocesses; the record of the run with
    the median increment (its spread kept as ``increment_min/max_bytes``): RSS increments
    of a few MiB move with allocator and page-cache noise, the median of 3 is robust."""
    runs = sorted((_run_once(args, method, size, steps) for _ in range(args.repeats)),
                  key=lambda r: r["increment_bytes"])
    record = dict(runs[len(runs) // 2])
    record["increment_min_bytes"] = runs[0]["increment_bytes"]
    record["increment_max_bytes"] = runs[-1]["increment_bytes"]
    record["repeats"] = len(runs)
    return record


def _run_once(args: argparse.Namespace, method: str, size: int, steps: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--method", method,
           "--size", str(size), "--steps", str(steps), "--iters", str(args.iters),
           "--shooting", str(args.shooting), "--preset", args.preset, "--device", args.device,
           "--threads", str(args.threads), "--eta", str(args.eta)]
    if args.channels:
        cmd += ["--channels", args.channels]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **MALLOC_ENV})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {method} {size} {steps} failed:\n{proc.stderr[-2000:]}")


def tables(rows: list[dict]) -> tuple[str, str]:
    """Markdown and CSV tables (MiB)."""
    cols = ["size", "steps", "method", "peak_MiB", "increment_MiB (min–max)", "seconds", "nfe",
            "grad_fallbacks"]
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        vals = [r["size"], r["steps"], r["method"], f"{r['peak_bytes'] / 2**20:.0f}",
                f"{r['increment_bytes'] / 2**20:.1f} ({r['increment_min_bytes'] / 2**20:.1f}–"
                f"{r['increment_max_bytes'] / 2**20:.1f})", f"{r['seconds']:.1f}", r["nfe"],
                r["grad_fallbacks"]]
        md.append("| " + " | ".join(map(str, vals)) + " |")
        w.writerow(vals)
    return "\n".join(md), buf.getvalue()


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for size in sorted({r["size"] for r in rows}):
        for method, style in (("msflow", "o-"), ("dflow", "s--")):
            pts = sorted((r["steps"], r["increment_bytes"] / 2**20) for r in rows
                         if r["size"] == size and r["method"] == method)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"{method} {size}²")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("total Euler steps")
    ax.set_ylabel("peak memory increment (MiB)")
    ax.set_title("MS-Flow vs D-Flow memory")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from ctflow.io.atomic import atomic_file  # lazily: workers measure memory without it

    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def _parser() -> argparse.ArgumentParser:
    """The command line (a sweep, or one --worker point)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=["msflow", "dflow"], default="msflow",
                   help="solver of one --worker point; the sweep uses --methods "
                        "(default: %(default)s)")
    p.add_argument("--size", type=int, default=64,
                   help="image size of one --worker point; the sweep uses --sizes "
                        "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=8,
                   help="total Euler steps of one --worker point; the sweep uses --step-list "
                        "(default: %(default)s)")
    p.add_argument("--sizes", default="64,128",
                   help="image sizes in pixels swept, comma-separated (default: %(default)s)")
    p.add_argument("--step-list", default="8,16,32,64,128",
                   help="total Euler steps swept, comma-separated (default: %(default)s)")
    p.add_argument("--iters", type=int, default=1,
                   help="solver iterations per point (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="fresh subprocesses per point; the median increment is reported "
                        "(default: %(default)s)")
    p.add_argument("--methods", default="msflow,dflow",
                   help="methods to measure, comma-separated (default: %(default)s)")
    p.add_argument("--shooting", type=int, default=4,
                   help="MS-Flow K (fixed; steps/K Euler steps per segment) "
                        "(default: %(default)s)")
    p.add_argument("--eta", type=float, default=1.0, help="MS-Flow Jacobian-free step scale "
                   "(a large value forces the exact-gradient fallback: worst-case memory) "
                   "(default: %(default)s)")
    p.add_argument("--preset", default="tiny",
                   help="ctflow.priors.unet preset of the random network (default: %(default)s)")
    p.add_argument("--channels", default="8,16",
                   help="override block_out_channels ('' keeps the preset's); the default "
                   "keeps a 128-step D-Flow at 128² within a few GiB and minutes on a CPU "
                   "(default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device; cpu measures peak RSS, cuda peak allocated memory "
                        "(default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per worker (default: %(default)s)")
    p.add_argument("--out", default=str(ROOT / "docs" / "msflow_memory.png"),
                   help="PNG plot of the increments (default: docs/msflow_memory.png of the "
                        "source tree)")
    p.add_argument("--csv", default=None, help="also write the CSV table here (default: none)")
    return p


def main() -> None:
    args = _parser().parse_args()
    if args.worker:
        worker(args)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    steps = [int(s) for s in args.step_list.split(",")]
    rows = []
    for size in sizes:
        for n in steps:
            for method in args.methods.split(","):
                r = run_point(args, method, size, n)
                rows.append(r)
                print(f"{method:7s} {size:4d}² {n:4d} steps: peak {r['peak_bytes'] / 2**20:8.0f}"
                      f" MiB, +{r['increment_bytes'] / 2**20:8.1f} MiB, {r['seconds']:.1f} s",
                      flush=True)
    md, csv_text = tables(rows)
    print(f"\nmachine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, device {args.device}, preset {args.preset}"
          f"{' channels ' + args.channels if args.channels else ''}, K={args.shooting}, "
          f"iters={args.iters}, median of {args.repeats} subprocess(es) per point\n")
    print(md)
    print()
    print(csv_text)
    for size in sizes:
        ms = [r["increment_bytes"] for r in rows if r["size"] == size and r["method"] == "msflow"]
        if not ms:
            continue
        df = {r["steps"]: r["increment_bytes"] for r in rows
              if r["size"] == size and r["method"] == "dflow"}
        msd = {r["steps"]: r["increment_bytes"] for r in rows
               if r["size"] == size and r["method"] == "msflow"}
        line = f"{size}²: MS-Flow largest/smallest increment {max(ms) / max(min(ms), 1):.2f}"
        if 64 in df and 64 in msd:
            line += f"; D-Flow/MS-Flow at 64 steps {df[64] / max(msd[64], 1):.1f}x"
        print(line)
    if args.csv:
        from ctflow.io.atomic import atomic_file

        with atomic_file(args.csv, overwrite=True) as tmp:
            tmp.write_text(csv_text)
    plot(rows, Path(args.out))
    out = Path(args.out).resolve()
    print(f"plot: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out.name}")


if __name__ == "__main__":
    main()
