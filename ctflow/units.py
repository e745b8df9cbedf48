"""Hounsfield units <-> linear attenuation:  μ = μ_water · (1 + HU/1000)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

MU_WATER_PER_MM = 0.0192  # linear attenuation of water at ~70 keV effective energy, 1/mm

Array = TypeVar("Array", np.ndarray, torch.Tensor, float)


def hu_to_mu(hu: Array, mu_water: float = MU_WATER_PER_MM) -> Array:
    """μ = μ_water (1 + HU/1000), in 1/mm."""
    return mu_water * (1.0 + hu / 1000.0)


def mu_to_hu(mu: Array, mu_water: float = MU_WATER_PER_MM) -> Array:
    """HU = 1000 (μ/μ_water − 1)."""
    return 1000.0 * (mu / mu_water - 1.0)
