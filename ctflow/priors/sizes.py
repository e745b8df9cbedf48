"""The image sizes a prior serves, read from its config.

A prior is trained at one ``image_size``.  A fully convolutional network trained on crops
taken at several pixel scales (the real-anatomy priors, ``ctflow.realct.training_patches``)
also serves other sizes; its config says which, as ``"sizes": {"min": 64, "max": 512,
"multiple_of": 8}`` (``multiple_of`` = 2^(levels − 1) of the UNet, so every level's
down-sampling is exact).  Without ``"sizes"`` a prior serves ``image_size`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import PriorError


@dataclass(frozen=True)
class ImageSizes:
    """Square sizes N a prior serves: N = native, or min ≤ N ≤ max with N % multiple_of = 0."""

    native: int
    minimum: int
    maximum: int
    multiple_of: int

    def supports(self, size: int) -> bool:
        if size == self.native:
            return True
        return self.minimum <= size <= self.maximum and size % self.multiple_of == 0

    def describe(self) -> str:
        if self.minimum == self.maximum == self.native:
            return f"{self.native}² images"
        return (f"{self.minimum}²–{self.maximum}² images (multiples of {self.multiple_of}; "
                f"trained at {self.native}²)")

    def nearest(self, size: int) -> int:
        """``size`` if served, else the largest served size below it (the native size when
        none is): the size to resample an image to for this prior."""
        if self.supports(size):
            return int(size)
        below = min(size, self.maximum) // self.multiple_of * self.multiple_of
        return below if below >= self.minimum and self.supports(below) else self.native

    @classmethod
    def fixed(cls, size: int) -> ImageSizes:
        return cls(size, size, size, 1)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: object = "prior config") -> ImageSizes:
        """The sizes of a checkpoint config (PriorError naming ``where`` if malformed)."""
        native = config.get("image_size")
        if not isinstance(native, int) or isinstance(native, bool) or native < 1:
            raise PriorError(f"{where}: image_size must be a positive integer, got {native!r}")
        sizes = config.get("sizes")
        if sizes is None:
            return cls.fixed(native)
        if not isinstance(sizes, Mapping):
            raise PriorError(f"{where}: 'sizes' must be an object with min, max, multiple_of")
        values = [sizes.get(k) for k in ("min", "max", "multiple_of")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise PriorError(f"{where}: 'sizes' needs positive integers min, max, multiple_of, "
                             f"got {dict(sizes)!r}")
        low, high, step = values
        if not low <= native <= high or low % step or high % step:
            raise PriorError(f"{where}: 'sizes' {dict(sizes)!r} must contain image_size "
                             f"{native} and have min and max divisible by multiple_of")
        return cls(native, low, high, step)
