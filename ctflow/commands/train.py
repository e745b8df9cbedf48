"""``ctflow train``: train a flow-matching prior (conditional flow matching, OT path)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from typing import Any

from ..errors import InputError

EPILOG = """\
The run folder gets state.json + state-STEP.safetensors (for --resume; checksummed, never
pickled), ema.safetensors + ema.json (a prior checkpoint:
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
    p.add_argument("--source", default=d.source,
                   choices=("phantoms", "dicom", "hdf5", "realct"),
                   help="training images: generated phantoms, your DICOM or HDF5 scans, or "
                   "realct, the training patients of the licensed real-CT pool (augmented "
                   "multi-scale crops; validation loss on the held-out patients) "
                   "(default: phantoms)")
    p.add_argument("--data", dest="data_path", default=None,
                   help="training images for --source dicom (a folder of CT series) or hdf5 "
                   "(a file or folder of files with /image in HU); for realct the pool "
                   "folder if not the default (shared/data/realct, or $CTFLOW_REALCT_DIR)")
    p.add_argument("--pool", dest="pool_size", type=int, default=d.pool_size,
                   help=f"phantoms generated once, or realct crops drawn once "
                   f"(default: {d.pool_size})")
    p.add_argument("--val-size", type=int, default=d.val_size,
                   help=f"held-out phantoms or held-out patients' crops for the validation "
                   f"loss (default: {d.val_size})")
    p.add_argument("--min-crop", type=int, default=d.min_crop,
                   help="realct: smallest crop side in pool pixels (the pool is 256² over the "
                   "field of view); crops from it to the whole slice let the network serve "
                   "sizes up to 256·SIZE/MIN_CROP, recorded in the prior's config "
                   f"(default: {d.min_crop})")
    p.add_argument("--init", dest="init_from", default=None, metavar="PRIOR",
                   help="start from this trained prior's weights (name or path; same --net "
                   "and --size), e.g. to fine-tune the phantom prior on real scans "
                   "(default: a fresh network)")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"optimiser steps in all, counting resumed ones (default: {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"training images per step and process (default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default: {d.lr})")
    p.add_argument("--warmup", type=int, default=d.warmup,
                   help=f"steps of linear learning-rate warm-up (default: {d.warmup})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW weight decay (default: {d.weight_decay})")
    p.add_argument("--ema", dest="ema_decay", type=float, default=d.ema_decay,
                   help=f"EMA decay (default: {d.ema_decay})")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip,
                   help=f"largest gradient norm; larger ones are scaled down to it "
                   f"(default: {d.grad_clip})")
    p.add_argument("--ot", dest="ot_coupling", action="store_true",
                   help="minibatch optimal-transport coupling of noise and images")
    p.add_argument("--max-shift", type=int, default=d.max_shift,
                   help="random translation augmentation in pixels (default: 0)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of the network initialisation and of every training batch "
                   f"(default: {d.seed})")
    p.add_argument("--no-amp", dest="amp", action="store_false",
                   help="no bf16 autocast on GPU")
    p.add_argument("--device", default=d.device,
                   help="training device: auto (a GPU if there is one), cpu, cuda or cuda:N "
                   "(default: auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log-every", type=int, default=d.log_every,
                   help=f"steps between lines of log.csv (mean training loss) "
                   f"(default: {d.log_every})")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every,
                   help=f"steps between checkpoints and validation losses "
                   f"(default: {d.ckpt_every})")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (with a checkpoint) after this much wall time")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/state.json")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bar")


HELP = "train a flow-matching prior on phantoms or your own scans"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help=HELP,
        description="Train a flow-matching prior (velocity UNet, OT path, AdamW, EMA) on "
        "procedural phantoms, a folder of DICOM CT or HDF5 image files.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run, input_args=("data_path",))


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


def validate(args: argparse.Namespace) -> None:
    """Every check of the flags that reads no training data, so bad input is refused before
    the run folder is created (InputError naming the flag)."""
    import torch

    from ..errors import PriorError
    from ..priors.unet import unet_config

    checks = [(args.image_size >= 8, "--size must be >= 8"),
              (args.steps >= 0, "--steps must be >= 0"),
              (args.batch_size >= 1, "--batch-size must be >= 1"),
              (args.source != "phantoms" or args.pool_size >= 1, "--pool must be >= 1"),
              (args.val_size >= 0, "--val-size must be >= 0"),
              (8 <= args.min_crop <= 256, "--min-crop must be in [8, 256]"),
              (args.lr > 0, "--lr must be > 0"),
              (args.warmup >= 0, "--warmup must be >= 0"),
              (args.weight_decay >= 0, "--weight-decay must be >= 0"),
              (0 <= args.ema_decay < 1, "--ema must be in [0, 1)"),
              (args.grad_clip > 0, "--grad-clip must be > 0"),
              (args.max_shift >= 0, "--max-shift must be >= 0"),
              (args.threads is None or args.threads >= 1, "--threads must be >= 1"),
              (args.log_every >= 1, "--log-every must be >= 1"),
              (args.ckpt_every >= 1, "--ckpt-every must be >= 1"),
              (args.max_minutes is None or args.max_minutes > 0, "--max-minutes must be > 0")]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    try:
        unet_config(args.image_size, args.net)
    except PriorError as exc:
        raise InputError(f"--net {args.net} --size {args.image_size}: {exc}") from exc
    if args.source == "phantoms" and args.data_path is not None:
        raise InputError("--data applies to --source dicom, hdf5 or realct (phantoms are "
                         "generated)")
    if args.source == "realct":
        from ..realct import POOL_FILE, realct_dir

        folder = args.data_path or realct_dir()
        if not (os.path.isfile(folder) or os.path.isfile(os.path.join(folder, POOL_FILE))):
            raise InputError(f"{folder}: no real-CT pool ({POOL_FILE}) there")
    elif args.source != "phantoms":
        if args.data_path is None:
            raise InputError(f"--source {args.source} needs --data PATH")
        if not os.path.exists(args.data_path):
            raise InputError(f"{args.data_path}: no such file or folder")
        if args.source == "dicom" and not os.path.isdir(args.data_path):
            raise InputError(f"{args.data_path}: --source dicom needs a folder of CT series")
    try:
        device = torch.device(args.device) if args.device != "auto" else None
    except RuntimeError as exc:
        raise InputError(f"--device {args.device!r}: expected auto, cpu, cuda or cuda:N") \
            from exc
    if device is not None and device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {args.device!r}: expected auto, cpu, cuda or cuda:N")
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: torch sees no CUDA GPU here; use --device "
                         "cpu or auto")


def _missing_folders(path: str) -> list[str]:
    """The folders of ``path`` (itself included) that do not exist yet, outermost first."""
    missing: list[str] = []
    folder = os.path.abspath(path)
    while not os.path.exists(folder):
        missing.insert(0, folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


def run(args: argparse.Namespace) -> int:
    from ..priors.train import train

    validate(args)
    created = _missing_folders(args.out_dir)
    try:
        summary = train(config_from_args(args))
    except BaseException:
        for folder in reversed(created):  # a failed start leaves no empty run folder behind
            try:
                os.rmdir(folder)  # only ever removes an empty folder
            except OSError:
                break
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        short = {k: summary[k] for k in ("run_dir", "steps", "final_loss", "val_loss",
                                         "wall_seconds", "parameters", "checkpoint")}
        print(json.dumps(short, indent=1))
    return 0
