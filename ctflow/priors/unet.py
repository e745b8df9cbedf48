"""The velocity network v_θ(x, t): a diffusers ``UNet2DModel`` built from a plain config dict.

The config (stored verbatim in a checkpoint's JSON) holds the ``UNet2DModel`` keyword
arguments; ``in_channels = out_channels = 1``.  Flow time t ∈ [0, 1] enters the network as
the continuous timestep 1000·t (sinusoidal embedding), see :func:`velocity_net_forward`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import PriorError

if TYPE_CHECKING:  # diffusers takes seconds to import: only when a network is built
    from diffusers import UNet2DModel

TIME_SCALE = 1000.0  # network timestep = TIME_SCALE · t

# Named sizes: channels per level, self-attention per level, residual blocks per level.
# Measured on a shared 2-core CPU (1 thread, see the prior's report): the full-resolution
# level dominates the cost, so it is kept narrow (16 channels) and attention is used only
# at the coarsest level (8×8).  "small" is the shipped 64² net, "small128" the 128² one.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"block_out_channels": [8, 16], "attention": [False, True],
             "layers_per_block": 1, "norm_num_groups": 4},
    "small": {"block_out_channels": [16, 32, 64, 128], "attention": [False, False, False, True],
              "layers_per_block": 1, "norm_num_groups": 8},
    "small128": {"block_out_channels": [16, 32, 64, 128, 128],
                 "attention": [False, False, False, False, True],
                 "layers_per_block": 1, "norm_num_groups": 8},
    "medium": {"block_out_channels": [32, 64, 96, 128], "attention": [False, False, False, True],
               "layers_per_block": 1, "norm_num_groups": 16},
}


def unet_config(image_size: int, preset: str = "small") -> dict[str, Any]:
    """``UNet2DModel`` keyword arguments for an ``image_size``² single-channel velocity net."""
    if preset not in PRESETS:
        raise PriorError(f"unknown network size {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    levels = len(p["block_out_channels"])
    if image_size % (2 ** (levels - 1)) != 0:
        raise PriorError(f"image size {image_size} is not divisible by {2 ** (levels - 1)}")
    down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in p["attention"]]
    up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(p["attention"])]
    return {
        "sample_size": int(image_size),
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": list(p["block_out_channels"]),
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": int(p["layers_per_block"]),
        "norm_num_groups": int(p["norm_num_groups"]),
        "attention_head_dim": min(32, *(c for c, a in zip(p["block_out_channels"],
                                                           p["attention"], strict=True) if a),
                                  p["block_out_channels"][-1]),
        "add_attention": True,
    }


def build_unet(config: dict[str, Any]) -> UNet2DModel:
    """A freshly initialised ``UNet2DModel`` from a config dict; PriorError if it is invalid."""
    from diffusers import UNet2DModel

    kwargs = dict(config)
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    if kwargs.get("in_channels") != 1 or kwargs.get("out_channels") != 1:
        raise PriorError("a velocity network must have in_channels = out_channels = 1")
    try:
        return UNet2DModel(**kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise PriorError(f"invalid network config: {exc}") from exc


def velocity_net_forward(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v_θ(x, t) = net(x, 1000·t) for x (B, 1, H, W) and t (B,) in [0, 1]."""
    return net(x, t.to(x.dtype) * TIME_SCALE).sample


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
