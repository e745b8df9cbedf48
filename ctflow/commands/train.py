"""``ctflow train``: train a flow-matching prior (conditional flow matching, OT path)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from typing import Any

EPILOG = """\
The run folder gets state.pt (for --resume), ema.safetensors + ema.json (a prior checkpoint:
'ctflow reconstruct --prior RUN_DIR/ema.json' or ctflow.load_prior("RUN_DIR")) and log.csv.
SIGTERM / Ctrl-C write a checkpoint before stopping; --resume continues exactly.

Multi-GPU (one process per GPU, DistributedDataParallel; --batch-size is per process):
  torchrun --nproc_per_node 4 scripts/train_prior.py --out runs/p128 --size 128
On CPU the same runs with the gloo backend (e.g. --nproc_per_node 2).

examples:
  ctflow train --out runs/p64 --size 64 --steps 20000 --threads 1
  ctflow train --out runs/mine --source dicom --data scans/ --size 128 --net small128
  ctflow train --out runs/p64 --resume
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The training flags (shared by ``ctflow train`` and scripts/train_prior.py)."""
    from ..priors.train import TrainConfig

    d = TrainConfig()
    p.add_argument("--out", dest="out_dir", required=True, metavar="RUN_DIR",
                   help="run folder for checkpoints and logs")
    p.add_argument("--name", default=None, help="prior name (default: the run folder name)")
    p.add_argument("--size", dest="image_size", type=int, default=d.image_size,
                   help=f"image size in pixels (default: {d.image_size})")
    p.add_argument("--net", default=d.net,
                   help=f"network size preset: tiny, small, small128, medium (default: {d.net})")
    p.add_argument("--source", default=d.source, choices=("phantoms", "dicom", "hdf5"),
                   help="training images (default: phantoms)")
    p.add_argument("--data", dest="data_path", default=None,
                   help="DICOM folder, or HDF5 file/folder with /image (HU)")
    p.add_argument("--pool", dest="pool_size", type=int, default=d.pool_size,
                   help=f"number of phantoms generated once (default: {d.pool_size})")
    p.add_argument("--val-size", type=int, default=d.val_size,
                   help=f"held-out phantoms for the validation loss (default: {d.val_size})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"(default: {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"per process (default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW rate (default: {d.lr})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"(default: {d.warmup})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--ema", dest="ema_decay", type=float, default=d.ema_decay,
                   help=f"EMA decay (default: {d.ema_decay})")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--ot", dest="ot_coupling", action="store_true",
                   help="minibatch optimal-transport coupling of noise and images")
    p.add_argument("--max-shift", type=int, default=d.max_shift,
                   help="random translation augmentation in pixels (default: 0)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-amp", dest="amp", action="store_false",
                   help="no bf16 autocast on GPU")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (with a checkpoint) after this much wall time")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/state.pt")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a flow-matching prior on phantoms or your own scans",
        description="Train a flow-matching prior (velocity UNet, OT path, AdamW, EMA) on "
        "procedural phantoms, a folder of DICOM CT or HDF5 image files.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace, argv: list[str] | None = None,
                     parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """TrainConfig fields from parsed flags, with the command that produced them: ``argv``
    as typed if given, else the ``ctflow train`` flags that differ from the defaults."""
    from pathlib import Path

    from ..priors.train import TrainConfig

    keys = set(TrainConfig.__dataclass_fields__)
    cfg = {k: v for k, v in vars(args).items() if k in keys}
    cfg["name"] = args.name or Path(args.out_dir).name
    if argv is not None:
        cfg["command"] = typed_command(argv)
    else:
        cfg["command"] = canonical_command(args, parser or _parser())
    return cfg


def typed_command(argv: list[str]) -> str:
    """The command as typed, without an absolute path to the script or entry point."""
    head = os.path.basename(argv[0]) if os.path.isabs(argv[0]) else argv[0]
    if head.endswith(".py"):
        head = "python3 " + (argv[0] if not os.path.isabs(argv[0]) else head)
    return " ".join([head, shlex.join(argv[1:])]).strip()


def canonical_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """``ctflow train`` with every flag whose value differs from its default."""
    words = ["ctflow", "train"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if value == action.default and action.dest != "out_dir":
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            words.append(action.option_strings[0])
        else:
            words += [action.option_strings[0], str(value)]
    return shlex.join(words)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctflow train")
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..priors.train import train

    summary = train(config_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:
        short = {k: summary[k] for k in ("run_dir", "steps", "final_loss", "val_loss",
                                         "wall_seconds", "parameters", "checkpoint")}
        print(json.dumps(short, indent=1))
    return 0
