"""A learned flow-matching prior: a velocity network plus its normalisation.

Model space is HU/1000: with μ = μ_water(1 + HU/1000),

    x_model = scale·μ + offset,   scale = 1/μ_water,  offset = −1,

so air → −1, water → 0, bone ≈ +1…+1.5.  The network v_θ(x, t) is trained on the OT path
x_t = t·x1 + (1−t)·z (t = 0 noise, t = 1 data) to regress x1 − z; ``Prior`` derives
x̂1 = x + (1−t)·v, ε̂ = x − t·v, the VP-diffusion view and the NFE counter from it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..units import MU_WATER_PER_MM
from .base import Prior
from .sizes import ImageSizes
from .unet import build_unet, velocity_net_forward


class FlowPrior(Prior):
    """Flow prior around a ``UNet2DModel`` velocity network (evaluation mode, no gradients
    to its weights; gradients with respect to x are available for VJPs)."""

    def __init__(
        self,
        net: torch.nn.Module,
        image_size: int,
        mu_water: float = MU_WATER_PER_MM,
        scale: float | None = None,
        offset: float = -1.0,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.image_size = int(image_size)
        self.mu_water = float(mu_water)
        self.scale = float(1.0 / mu_water if scale is None else scale)
        self.offset = float(offset)
        self.config: dict[str, Any] = dict(config or {})
        if "sizes" in self.config:
            self.image_sizes = ImageSizes.from_config({**self.config,
                                                       "image_size": self.image_size})

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FlowPrior:
        """A prior with a freshly initialised network described by a checkpoint config."""
        norm = config.get("normalisation", {})
        return cls(
            build_unet(config["unet"]),
            image_size=int(config["image_size"]),
            mu_water=float(norm.get("mu_water", MU_WATER_PER_MM)),
            scale=norm.get("scale"),
            offset=float(norm.get("offset", -1.0)),
            config=config,
        )

    def _velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v_θ(x, t) = UNet(x, 1000·t)."""
        return velocity_net_forward(self.net, x, t)

    def to(self, device: str | torch.device) -> FlowPrior:
        self.net.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def __repr__(self) -> str:
        name = self.config.get("name", "unnamed")
        return f"FlowPrior(name={name!r}, image_size={self.image_size}, device={self.device})"
