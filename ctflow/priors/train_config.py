"""The options of a prior training run (:class:`TrainConfig`, the ``ctflow train`` flags)
and the JSON config its EMA checkpoint is saved with (:func:`prior_config`: network, model
space, data provenance and attribution, the sizes the prior serves, the exact command)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..units import MU_WATER_PER_MM
from .datasets import HU_MAX, HU_MIN, SOURCES
from .unet import TIME_SCALE


@dataclass
class TrainConfig:
    """Options of :func:`train` (also the ``ctflow train`` flags)."""

    out_dir: str = "runs/prior"
    name: str = "prior"
    image_size: int = 64
    net: str = "small"  # preset of ctflow.priors.unet.PRESETS
    source: str = "phantoms"  # phantoms | dicom | hdf5 | realct (datasets.SOURCES)
    data_path: str | None = None
    pool_size: int = 10000  # phantoms and realct (augmented crops)
    val_size: int = 64  # phantoms and realct: held-out "val" split for the validation loss
    min_crop: int = 64  # realct: smallest crop side, in pool pixels (sets the largest size served)
    init_from: str | None = None  # a prior (name or path) whose weights start the run
    steps: int = 10000
    batch_size: int = 32  # per process
    lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    ot_coupling: bool = False
    max_shift: int = 0  # random translation augmentation, pixels
    seed: int = 0
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    device: str = "auto"
    threads: int | None = None
    log_every: int = 50
    ckpt_every: int = 500
    max_minutes: float | None = None
    resume: bool = False
    progress: bool = True
    command: str = ""


def make_config(config: TrainConfig | dict[str, Any]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise InputError(f"unknown training option(s): {', '.join(unknown)}")
    return TrainConfig(**config)


def check_config(cfg: TrainConfig) -> None:
    if cfg.image_size < 8 or cfg.batch_size < 1 or cfg.steps < 0:
        raise InputError("image_size ≥ 8, batch_size ≥ 1 and steps ≥ 0 are required")
    if not (0.0 <= cfg.ema_decay < 1.0) or cfg.lr <= 0 or cfg.grad_clip <= 0:
        raise InputError("need 0 ≤ ema_decay < 1, lr > 0 and grad_clip > 0")
    if cfg.source not in SOURCES:
        raise InputError(f"unknown data source {cfg.source!r}; choose one of "
                         f"{', '.join(SOURCES)}")


def prior_config(cfg: TrainConfig, unet: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The JSON config of the EMA prior checkpoint of a run."""
    data: dict[str, Any] = {"source": cfg.source}
    if cfg.source == "phantoms":
        from ..phantoms import KINDS, PHANTOM_VERSION

        data.update(split="train", pool_size=cfg.pool_size, kinds=list(KINDS),
                    phantom_version=PHANTOM_VERSION)
    elif cfg.source == "realct":
        from ..realct import ATTRIBUTION, VALIDATION_PATIENTS, pool_slices

        data.update(split="train", pool_size=cfg.pool_size,
                    patients=sorted({s.patient for s in pool_slices("train", cfg.data_path)}),
                    held_out_patients=sorted(VALIDATION_PATIENTS),
                    augmentation=f"multi-scale square crops ({cfg.min_crop} px to the full "
                                 f"slice), left-right flips, intensity scale 1 ± 0.03",
                    attribution=ATTRIBUTION)
    else:
        data["path_name"] = Path(cfg.data_path or "").name
    import diffusers

    sizes = {"sizes": realct_sizes(cfg, unet)} if cfg.source == "realct" else {}
    return {
        "name": cfg.name,
        "image_size": cfg.image_size,
        **sizes,
        "unet": unet,
        "normalisation": {"scale": 1.0 / MU_WATER_PER_MM, "offset": -1.0,
                          "mu_water": MU_WATER_PER_MM, "model_space": "HU/1000",
                          "hu_clip": [HU_MIN, HU_MAX]},
        "time": {"convention": "t=0 noise, t=1 data; x_t = t*x1 + (1-t)*z",
                 "timestep_scale": TIME_SCALE},
        "weights": "ema",
        "training": {
            "data": data, "net": cfg.net, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "warmup": cfg.warmup, "weight_decay": cfg.weight_decay,
            "ema_decay": cfg.ema_decay, "grad_clip": cfg.grad_clip,
            "ot_coupling": cfg.ot_coupling, "max_shift": cfg.max_shift, "seed": cfg.seed,
            "init_from": cfg.init_from, "command": cfg.command, "torch": torch.__version__,
            "diffusers": diffusers.__version__, **info,
        },
    }


def realct_sizes(cfg: TrainConfig, unet: dict[str, Any]) -> dict[str, int]:
    """The sizes a prior trained on multi-scale real-CT crops serves: a crop of c pool
    pixels (pool slices are POOL_WIDTH² over the whole field of view) shown at image_size²
    has the pixel scale of a whole slice at POOL_WIDTH·image_size/c, so crops from
    ``min_crop`` to the whole slice cover sizes image_size … POOL_WIDTH·image_size/min_crop
    (multiples of the network's down-sampling factor)."""
    from ..realct import POOL_WIDTH

    step = 2 ** (len(unet["block_out_channels"]) - 1)
    largest = POOL_WIDTH * cfg.image_size // max(1, min(cfg.min_crop, POOL_WIDTH))
    largest = max(cfg.image_size, largest // step * step)
    return {"min": cfg.image_size, "max": int(largest), "multiple_of": int(step)}
