"""Prior checkpoints: weights as safetensors next to a JSON config.

``NAME.safetensors`` holds the velocity network's (EMA) weights in float32; ``NAME.json``
holds everything needed to rebuild and use it::

    {"format": "ctflow-prior", "version": 1, "name": ..., "image_size": S,
     "unet": {UNet2DModel kwargs}, "normalisation": {"scale", "offset", "mu_water", ...},
     "time": {"convention": "t=0 noise, t=1 data", "timestep_scale": 1000},
     "weights_sha256": ..., "training": {data, steps, command, wall time, final loss, ...}}

Both files are written to a temporary name and renamed into place.  ``weights_sha256`` is
required on load, for shipped priors (found by name through the registry) and for
checkpoints loaded by path alike: :func:`save_checkpoint` always writes it, and a config
without it is refused rather than trusted.  Any problem on load (missing file, bad JSON,
missing or wrong checksum, wrong keys or shapes, NaN weights) raises ``PriorError`` naming
the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import PriorError
from ..io.atomic import atomic_file
from .flow import FlowPrior
from .presets import load_presets, presets_path
from .sizes import ImageSizes

FORMAT = "ctflow-prior"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "image_size", "unet", "normalisation")
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, config) paths of a checkpoint given either file or the common stem."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as 64 lowercase hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(
    path: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``state_dict`` (as float32) and ``config`` to PATH.safetensors + PATH.json.

    The config gets ``format``/``version`` and the weights' SHA-256; the weights file is
    renamed into place before the config, so a reader never sees a config without weights.
    """
    weights_path, config_path = checkpoint_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    with atomic_file(weights_path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    full = {"format": FORMAT, "version": VERSION, **config}
    full["format"], full["version"] = FORMAT, VERSION
    full["weights_sha256"] = file_sha256(weights_path)
    with atomic_file(config_path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(full, indent=2) + "\n")
    return weights_path, config_path


def read_config(path: str | Path) -> dict[str, Any]:
    """The validated JSON config of a checkpoint (PriorError if missing or malformed)."""
    _, config_path = checkpoint_paths(path)
    if not config_path.is_file():
        raise PriorError(f"{config_path}: prior config not found")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PriorError(f"{config_path}: not a valid JSON prior config ({exc})") from exc
    if not isinstance(config, dict):
        raise PriorError(f"{config_path}: prior config must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise PriorError(f"{config_path}: prior config lacks {', '.join(missing)}")
    if config["format"] != FORMAT or config["version"] != VERSION:
        raise PriorError(f"{config_path}: not a {FORMAT} v{VERSION} config")
    ImageSizes.from_config(config, config_path)  # validates image_size and "sizes"
    return config


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> FlowPrior:
    """Rebuild the ``FlowPrior`` stored at PATH(.safetensors/.json) on ``device``."""
    weights_path, config_path = checkpoint_paths(path)
    config = read_config(config_path)
    if not weights_path.is_file():
        raise PriorError(f"{weights_path}: prior weights not found")
    expected = config.get("weights_sha256")
    if not isinstance(expected, str) or not SHA256_HEX.fullmatch(expected):
        raise PriorError(f"{config_path}: prior config has no valid weights_sha256 (the "
                         f"SHA-256 of {weights_path.name}); re-save it with save_checkpoint")
    if file_sha256(weights_path) != expected.lower():
        raise PriorError(f"{weights_path}: weights are corrupt (checksum mismatch)")
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types on corrupt headers
        raise PriorError(f"{weights_path}: unreadable safetensors file ({exc})") from exc
    prior = FlowPrior.from_config(config)
    try:
        prior.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise PriorError(f"{weights_path}: weights do not match the config ({first})") from exc
    if not all(bool(torch.isfinite(v).all()) for v in state.values()):
        raise PriorError(f"{weights_path}: weights contain NaN or Inf")
    prior.name = str(config.get("name") or weights_path.stem)
    prior.presets = load_presets(presets_path(weights_path.with_suffix("")))
    return prior.to(device)


def save_prior(prior: FlowPrior, path: str | Path) -> tuple[Path, Path]:
    """Save a ``FlowPrior`` (its network weights and config) to PATH.safetensors + PATH.json."""
    config = dict(prior.config)
    config.setdefault("image_size", prior.image_size)
    if "unet" not in config:  # a network built by hand: take diffusers' own record of it
        config["unet"] = {k: v for k, v in prior.net.config.items() if not k.startswith("_")}
    config["normalisation"] = {
        **config.get("normalisation", {}),
        "scale": prior.scale,
        "offset": prior.offset,
        "mu_water": prior.mu_water,
    }
    return save_checkpoint(path, prior.net.state_dict(), config)
