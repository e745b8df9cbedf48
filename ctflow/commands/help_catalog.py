"""What the CLI tells a new user about priors and methods, read cheaply: the shipped priors'
names and image sizes come from their JSON configs (no weights are loaded), each method's
options and defaults from its registry entry's Options dataclass.  Called only when a command
runs or ``ctflow reconstruct --help`` is printed, never while the parsers are built."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from ..errors import CtflowError, PriorError
from ..priors.sizes import ImageSizes


def prior_sizes(name_or_path: str = "default") -> ImageSizes:
    """The image sizes a prior serves, from its JSON config only (no weights loaded)."""
    from ..priors.checkpoint import checkpoint_paths
    from ..priors.registry import resolve

    config = checkpoint_paths(resolve(name_or_path))[1]
    try:
        table = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise PriorError(f"{config}: unreadable prior config ({exc})") from exc
    if not isinstance(table, dict):
        raise PriorError(f"{config}: prior config must be a JSON object")
    return ImageSizes.from_config(table, config)


def prior_image_size(name_or_path: str = "default") -> int:
    """The image size a prior was trained at, from its JSON config only."""
    return prior_sizes(name_or_path).native


def shipped_priors() -> dict[str, ImageSizes]:
    """Every loadable prior name (aliases first, as ``list_priors``) → the sizes it serves."""
    from ..priors.registry import list_priors

    return {name: prior_sizes(name) for name in list_priors()}


def priors_for_size(size: int) -> list[str]:
    """The shipped prior names (not aliases) that serve ``size``² images."""
    from ..priors.registry import aliases

    alias_names = set(aliases())
    return [n for n, s in shipped_priors().items() if s.supports(size) and n not in alias_names]


def size_mismatch_message(source: str, prior: str, sizes: ImageSizes, data_size: int) -> str:
    """The error for a prior that does not serve the data's image size, naming the fix."""
    fits = priors_for_size(data_size)
    use = (f"use --prior {fits[0]}" if fits else
           f"train a prior for them (ctflow train --size {data_size})")
    return (f"{source}: the images are {data_size}² but the prior {prior!r} serves "
            f"{sizes.describe()}: {use}, or simulate the data with --size {sizes.native}")


def priors_text() -> str:
    """The ``priors:`` section of ``ctflow reconstruct --help``."""
    from ..priors.registry import aliases, priors_dir

    try:
        table = shipped_priors()
        alias_table = aliases()
        folder: Path | str = priors_dir()
    except PriorError as exc:
        return f"priors:\n  (the shipped priors cannot be listed: {exc})\n"
    lines = [_wrap(f"priors (--prior NAME, a checkpoint .json or a training run folder; "
                   f"shipped in {folder}):")]
    for name, sizes in table.items():
        target = f" (= {alias_table[name]})" if name in alias_table else ""
        lines.append(f"  {name + target:<28}{sizes.describe()}")
    return "\n".join(lines) + "\n"


def _wrap(text: str, indent: int = 0) -> str:
    return textwrap.fill(text, width=92, initial_indent=" " * indent,
                         subsequent_indent=" " * indent)


def _default_text(name: str, default: object) -> str:
    return f"{name}=auto" if default is None else f"{name}={default!r}"


def method_options(method: str) -> list[str]:
    """``name=default`` for each declared option of a method (``auto``: chosen by the
    method), from its registry Options; MethodError if the method is unknown or absent."""
    from ..solvers import get_solver
    from ..solvers.options import option_defaults

    _, spec = get_solver(method)
    return [_default_text(k, v) for k, v in option_defaults(spec.options).items()]


def methods_text() -> str:
    """The ``methods:`` section of ``ctflow reconstruct --help``: summary and options."""
    from ..solvers import SOLVERS

    lines = [_wrap("methods (--method NAME) and their options (--nfe, --iters or --opt "
                   "KEY=VALUE) with defaults; auto: chosen by the method, for the flow "
                   "methods from the prior's tuned presets:")]
    for name, spec in SOLVERS.items():
        lines.append(f"  {name:<20}{spec.summary}" + ("" if spec.needs_prior else
                                                      "  [no prior]"))
        try:
            text = ", ".join(method_options(name)) or "(no options)"
        except (CtflowError, ImportError) as exc:  # help must print: say what is missing
            text = f"(options unavailable: {exc})"
        lines.append(_wrap(text, indent=22))
    return "\n".join(lines) + "\n"
