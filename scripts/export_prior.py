"""Export a training run's EMA weights as a shipped prior: data/priors/NAME.safetensors + .json.

    python3 scripts/export_prior.py runs/phantom-64 phantom-64 [--default]

The config keeps the run's training record (the exact command, steps, wall time, final and
validation loss) and gets a loss curve (≤ 40 points of the run's log.csv).  ``--default``
makes NAME the ``default`` alias in data/priors/registry.json.  The exported prior is loaded
back and compared with the run's checkpoint before the script reports success.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from ctflow.errors import CtflowError
from ctflow.io.atomic import atomic_file
from ctflow.priors.checkpoint import load_checkpoint, save_prior
from ctflow.priors.registry import priors_dir


def loss_curve(log_csv: Path, points: int = 40) -> list[list[float]]:
    """[[step, loss], ...] subsampled from a run's log.csv (always keeps the last row)."""
    if not log_csv.is_file():
        return []
    with open(log_csv, newline="") as fh:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh)]
    stride = max(1, len(rows) // points)
    keep = rows[::stride] + ([rows[-1]] if rows and (len(rows) - 1) % stride else [])
    return [[s, round(loss, 5)] for s, loss in keep]


def export(run_dir: Path, name: str, make_default: bool, out_dir: Path) -> Path:
    prior = load_checkpoint(run_dir / "ema")
    prior.config["name"] = name
    prior.config["exported_from_run"] = run_dir.name
    prior.config["loss_curve"] = loss_curve(run_dir / "log.csv")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights, config = save_prior(prior, out_dir / name)
    back = load_checkpoint(out_dir / name)
    x = torch.randn(2, 1, prior.image_size, prior.image_size,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.equal(back.velocity(x, 0.5), prior.velocity(x, 0.5)):
            raise CtflowError("the exported prior does not reproduce the run's outputs")
    if make_default:
        reg = out_dir / "registry.json"
        table = json.loads(reg.read_text()) if reg.is_file() else {}
        table.setdefault("aliases", {})["default"] = name
        with atomic_file(reg, overwrite=True) as tmp:
            tmp.write_text(json.dumps(table, indent=2) + "\n")
    return weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="training run folder (with ema.json)")
    parser.add_argument("name", help="prior name, e.g. phantom-64")
    parser.add_argument("--default", action="store_true", help="make it the default prior")
    parser.add_argument("--out", type=Path, default=None,
                        help="priors folder (default: $CTFLOW_PRIORS_DIR if set, else "
                             "data/priors of the source tree)")
    args = parser.parse_args()
    try:
        weights = export(args.run_dir, args.name, args.default, args.out or priors_dir())
    except CtflowError as exc:
        print(f"export_prior: error: {exc}", file=sys.stderr)
        return 2
    cfg = json.loads(weights.with_suffix(".json").read_text())
    tr = cfg["training"]
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB): {tr['steps']} steps, "
          f"loss {tr['final_loss']:.4f}, {tr['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
