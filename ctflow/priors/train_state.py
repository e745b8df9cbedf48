"""The resumable state of a training run, stored without pickle: safetensors + JSON.

A run folder holds

* ``state-STEP.safetensors``: every tensor, under explicit names: ``net.KEY`` (network),
  ``ema.KEY`` (EMA weights) and ``opt.INDEX.NAME`` (optimizer state of parameter INDEX,
  e.g. ``opt.3.exp_avg``);
* ``state.json``: ``{"format": "ctflow-train-state", "version": 1, "step", "wall_seconds",
  "history", "unet", "config", "optimizer": {"param_groups": [...]}, "tensors": FILE,
  "tensors_sha256": ...}`` (the optimizer's scalar hyper-parameters are in ``param_groups``).

Saving writes the tensors under a new name (their step), then renames ``state.json`` into
place, then removes older tensors files: both writes are atomic and an interrupted save
leaves the previous state usable.  Loading checks the JSON, the checksum of the tensors file,
and every key, shape and dtype before anything is copied into the network; any mismatch is
one :class:`~ctflow.errors.InputError` naming the file.  Nothing is ever unpickled: an
old-format ``state.pt`` (a pickle, which could run code) is refused, never opened.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..io.atomic import atomic_file, one_line
from .checkpoint import file_sha256

FORMAT = "ctflow-train-state"
VERSION = 1
STATE_JSON = "state.json"
LEGACY_STATE = "state.pt"
_TENSORS_NAME = re.compile(r"state-\d{8,}\.safetensors")
_OPT_KEY = re.compile(r"opt\.(\d+)\.([A-Za-z_][A-Za-z0-9_]*)")


def _flatten(net: torch.nn.Module, ema: torch.nn.Module,
             opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """(named CPU tensors, optimizer param_groups) of a training state."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("net", net), ("ema", ema)):
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value.detach().to("cpu").contiguous()
    opt_state = opt.state_dict()
    for index, entry in opt_state["state"].items():
        for name, value in entry.items():
            if not torch.is_tensor(value):
                raise TypeError(f"optimizer state {name!r} is not a tensor ({type(value)})")
            tensors[f"opt.{index}.{name}"] = value.detach().to("cpu").contiguous()
    return tensors, opt_state["param_groups"]


def save_train_state(run_dir: Path, net: torch.nn.Module, ema: torch.nn.Module,
                     opt: torch.optim.Optimizer, meta: dict[str, Any]) -> Path:
    """Write the state (``meta``: step, wall_seconds, history, unet, config); returns the
    path of ``state.json``."""
    tensors, groups = _flatten(net, ema, opt)
    name = f"state-{int(meta['step']):08d}.safetensors"
    with atomic_file(run_dir / name, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    record = {"format": FORMAT, "version": VERSION, **meta,
              "optimizer": {"param_groups": groups}, "tensors": name,
              "tensors_sha256": file_sha256(run_dir / name)}
    json_path = run_dir / STATE_JSON
    with atomic_file(json_path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    for old in run_dir.glob("state-*.safetensors"):
        if old.name != name and _TENSORS_NAME.fullmatch(old.name):
            old.unlink(missing_ok=True)
    return json_path


def _read_record(json_path: Path) -> dict[str, Any]:
    """The validated JSON record of a training state."""
    try:
        record = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{json_path}: not a valid training state ({one_line(exc)})") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InputError(f"{json_path}: not a {FORMAT} file")
    if record.get("version") != VERSION:
        raise InputError(f"{json_path}: unsupported {FORMAT} version {record.get('version')!r}")
    types = {"step": int, "wall_seconds": (int, float), "history": list, "unet": dict,
             "optimizer": dict, "tensors": str, "tensors_sha256": str}
    for key, kind in types.items():
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise InputError(f"{json_path}: training state lacks a valid {key!r}")
    if record["step"] < 0 or not all(isinstance(h, dict) for h in record["history"]):
        raise InputError(f"{json_path}: training state has a bad 'step' or 'history'")
    if not isinstance(record["optimizer"].get("param_groups"), list):
        raise InputError(f"{json_path}: training state lacks the optimizer's param_groups")
    if not _TENSORS_NAME.fullmatch(record["tensors"]):
        raise InputError(f"{json_path}: bad tensors file name {record['tensors']!r}")
    return record


def _load_tensors(path: Path, json_path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """The tensors file, after its checksum is verified against the JSON record."""
    if not path.is_file():
        raise InputError(f"{path}: training state tensors not found (named in {json_path.name})")
    if file_sha256(path) != expected_sha256.lower():
        raise InputError(f"{path}: checksum does not match {json_path.name} "
                         "(the file was changed or damaged)")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types on a corrupt header
        raise InputError(f"{path}: unreadable safetensors file ({one_line(exc)})") from exc


def _check_module(path: Path, tensors: dict[str, torch.Tensor], prefix: str,
                  module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The ``prefix.*`` tensors as a state dict, if they match ``module`` key for key."""
    expected = module.state_dict()
    found = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        what = f"lacks {prefix}.{missing[0]}" if missing else f"has unexpected {prefix}.{extra[0]}"
        raise InputError(f"{path}: training state {what} (another network?)")
    for key, ref in expected.items():
        if found[key].shape != ref.shape or found[key].dtype != ref.dtype:
            raise InputError(f"{path}: {prefix}.{key} is {found[key].dtype} "
                             f"{tuple(found[key].shape)}, expected {ref.dtype} {tuple(ref.shape)}")
    return found


def _optimizer_state(path: Path, json_path: Path, tensors: dict[str, torch.Tensor],
                     groups: list[Any], opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state dict from the ``opt.*`` tensors and the JSON param_groups."""
    fresh = opt.state_dict()["param_groups"]
    params = [p for group in opt.param_groups for p in group["params"]]
    if len(groups) != len(fresh):
        raise InputError(f"{json_path}: {len(groups)} optimizer param groups, expected "
                         f"{len(fresh)}")
    restored = []
    for saved, ref in zip(groups, fresh, strict=True):
        if (not isinstance(saved, dict) or set(saved) != set(ref)
                or saved["params"] != ref["params"]):
            raise InputError(f"{json_path}: optimizer param groups do not match this optimizer")
        group = {}
        for key, value in saved.items():
            if isinstance(ref[key], tuple) and isinstance(value, list):
                value = tuple(value)
            if ref[key] is not None and type(value) is not type(ref[key]):
                raise InputError(f"{json_path}: optimizer setting {key!r} has the wrong type")
            group[key] = value
        restored.append(group)
    state: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in tensors.items():
        if key.startswith(("net.", "ema.")):
            continue
        match = _OPT_KEY.fullmatch(key)
        if match is None or int(match[1]) >= len(params):
            raise InputError(f"{path}: unexpected tensor {key!r} in the training state")
        shape = params[int(match[1])].shape
        if value.dim() > 0 and value.shape != shape:
            raise InputError(f"{path}: {key} has shape {tuple(value.shape)}, expected "
                             f"{tuple(shape)}")
        state[int(match[1])][match[2]] = value
    names = {frozenset(entry) for entry in state.values()}
    if len(names) > 1:
        raise InputError(f"{path}: the optimizer state is incomplete for some parameters")
    return {"state": dict(state), "param_groups": restored}


def load_train_state(run_dir: Path, net: torch.nn.Module, ema: torch.nn.Module,
                     opt: torch.optim.Optimizer, unet: dict[str, Any]) -> dict[str, Any] | None:
    """Restore net, EMA and optimizer from ``run_dir``; returns the JSON record (step,
    wall_seconds, history, ...), or None if the folder holds no state.  InputError on an
    old pickled ``state.pt`` or any mismatch; nothing is loaded unless everything checks."""
    json_path = run_dir / STATE_JSON
    if not json_path.is_file():
        legacy = run_dir / LEGACY_STATE
        if legacy.exists():
            raise InputError(
                f"{legacy}: old-format training state (a pickle, which can run code when "
                "loaded): ctflow does not open it; start the run again without --resume")
        return None
    record = _read_record(json_path)
    if record["unet"] != json.loads(json.dumps(unet)):
        raise InputError(f"{json_path}: the run was trained with another network config")
    path = run_dir / record["tensors"]
    tensors = _load_tensors(path, json_path, record["tensors_sha256"])
    net_state = _check_module(path, tensors, "net", net)
    ema_state = _check_module(path, tensors, "ema", ema)
    opt_state = _optimizer_state(path, json_path, tensors,
                                 record["optimizer"]["param_groups"], opt)
    net.load_state_dict(net_state)
    ema.load_state_dict(ema_state)
    opt.load_state_dict(opt_state)
    return record
