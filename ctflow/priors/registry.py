"""Named, shipped priors: ``load_prior("default")``, ``load_prior("phantom-64")`` or a path.

Priors are package data, NAME.safetensors + NAME.json in the package ``ctflow.priors.shipped``
(the folder ``data/priors`` of the source tree, mapped into the package by pyproject.toml),
found through :mod:`importlib.resources`, so editable and wheel installs both have them; the
environment variable ``CTFLOW_PRIORS_DIR`` overrides the folder.  ``registry.json`` in that
folder maps aliases to names, e.g. ``{"aliases": {"default": "phantom-128"}}``.  Everything
is offline; an unknown name, a broken file or a shipped prior without its weights' checksum
raises ``PriorError``.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path

import torch

from ..errors import PriorError
from .checkpoint import checkpoint_paths, load_checkpoint
from .flow import FlowPrior

ENV_VAR = "CTFLOW_PRIORS_DIR"
PACKAGE = "ctflow.priors.shipped"


def priors_dir() -> Path:
    """``$CTFLOW_PRIORS_DIR`` if set, else the folder of the package ``ctflow.priors.shipped``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    try:
        folder = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError as exc:
        raise PriorError(f"the shipped priors (package {PACKAGE}) are not installed: "
                         "reinstall ctflow, or set CTFLOW_PRIORS_DIR") from exc
    if not isinstance(folder, Path):
        raise PriorError(f"{folder}: the shipped priors must be installed as plain files "
                         "(not inside a zip archive)")
    return folder


def aliases(folder: Path | None = None) -> dict[str, str]:
    """Alias → prior name, from ``registry.json`` (empty if there is none)."""
    path = (folder or priors_dir()) / "registry.json"
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text()).get("aliases", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise PriorError(f"{path}: not a valid prior registry ({exc})") from exc
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise PriorError(f"{path}: 'aliases' must map names to prior names")
    return table


def list_priors() -> list[str]:
    """Loadable names: the aliases, then every NAME with NAME.json + NAME.safetensors."""
    folder = priors_dir()
    names = sorted(p.stem for p in folder.glob("*.json")
                   if p.name != "registry.json" and p.with_suffix(".safetensors").is_file())
    return [a for a, n in aliases(folder).items() if n in names] + names


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The checkpoint stem for a name, an alias or a path to either checkpoint file."""
    text = str(name_or_path)
    p = Path(name_or_path)
    is_path = text.endswith((".json", ".safetensors")) or os.sep in text
    if p.is_dir() and (p / "ema.json").is_file():  # a training run folder
        p, is_path = p / "ema", True
    if is_path:
        weights, config = checkpoint_paths(p)
        if not (weights.is_file() or config.is_file()):
            raise PriorError(f"{name_or_path}: no prior checkpoint found there")
        return p
    folder = priors_dir()
    name = aliases(folder).get(str(name_or_path), str(name_or_path))
    stem = folder / name
    if not checkpoint_paths(stem)[1].is_file():
        known = ", ".join(list_priors()) or "none"
        raise PriorError(f"unknown prior {str(name_or_path)!r} (available in {folder}: {known})")
    return stem


def load_prior(name_or_path: str | os.PathLike = "default",
               device: str | torch.device = "cpu") -> FlowPrior:
    """A shipped prior by name or alias, or a checkpoint by path, on ``device``."""
    return load_checkpoint(resolve(name_or_path), device=device)
