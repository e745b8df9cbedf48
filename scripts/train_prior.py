"""Train a flow-matching prior: the same flags as ``ctflow train`` (see its --help).

    python3 scripts/train_prior.py --out runs/p64 --size 64 --steps 20000 --threads 1
    torchrun --nproc_per_node 2 scripts/train_prior.py --out runs/ddp --size 32 --net tiny
"""

from __future__ import annotations

import argparse
import os
import sys

from ctflow.commands.train import EPILOG, add_arguments, config_from_args
from ctflow.errors import CtflowError
from ctflow.priors.train import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    full_argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    try:
        summary = train(config_from_args(args, full_argv))
    except CtflowError as exc:
        print(f"train_prior: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {summary['steps']} steps, loss {summary['final_loss']:.4f}, "
              f"{summary['wall_seconds']:.0f} s, checkpoint {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
