"""The benchmark tasks of DESIGN §5: an operator, a noise model and a test image → a problem.

Each task is named (``ct60``, ``ct30-1e5``, ``inpaint-box``, ``sr4``, ...) and builds, for an
image size, the operator and the simulated measurements of a ground-truth HU image.  The
same definitions serve ``ctflow bench`` and the per-method benchmark scripts, so every
method sees identical data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..errors import InputError
from ..operators import (
    FanBeam2D,
    GaussianBlur,
    Inpainting,
    LinearOperator,
    ParallelBeam2D,
    SuperResolution,
)
from ..simulate import noise_std, simulate
from ..units import hu_to_mu

# Measurement noise of the non-CT tasks: relative Gaussian std (σ = noise · RMS(Ax)).
IMAGE_TASK_NOISE = None


@dataclass(frozen=True)
class Problem:
    """One reconstruction problem: y = A μ + η, with the ground truth kept for scoring."""

    task: str
    op: LinearOperator
    y: torch.Tensor  # (1, 1, *op.out_shape)
    gt_hu: np.ndarray  # (H, W)
    noise_std: float  # std of η (0 for noiseless)

    @property
    def gt_mu(self) -> torch.Tensor:
        return torch.from_numpy(hu_to_mu(self.gt_hu.astype(np.float32)))[None, None]


@dataclass(frozen=True)
class Task:
    name: str
    family: str  # "ct", "inpainting", "sr", "blur"
    description: str
    build: Callable[[int], LinearOperator]
    photons: float | None = None
    noise: float | None = None

    @property
    def noisy(self) -> bool:
        """Whether the task's measurements carry noise (Poisson photons or Gaussian)."""
        return self.photons is not None or self.noise is not None

    def problem(self, gt_hu: np.ndarray, seed: int = 0) -> Problem:
        """Simulate this task's measurements of one HU image (noise seeded by ``seed``)."""
        size = gt_hu.shape[-1]
        if gt_hu.shape != (size, size):
            raise InputError(f"task {self.name}: expected a square image, got {gt_hu.shape}")
        op = task_operator(self.name, size)
        x = torch.from_numpy(hu_to_mu(gt_hu.astype(np.float32)))[None, None]
        y = simulate(x, op, photons=self.photons, noise=self.noise, seed=seed)
        with torch.no_grad():
            sigma = noise_std(op(x), photons=self.photons, noise=self.noise)
        return Problem(task=self.name, op=op, y=y, gt_hu=gt_hu, noise_std=sigma)


def _box_mask(size: int) -> torch.Tensor:
    """Observed everywhere but a centred square hole of side size/4."""
    mask = torch.ones(size, size, dtype=torch.bool)
    a, b = size // 2 - size // 8, size // 2 + size // 8
    mask[a:b, a:b] = False
    return mask


def _random_mask(size: int, missing: float = 0.7, seed: int = 1234) -> torch.Tensor:
    """A fixed (seeded) mask observing 30 % of the pixels."""
    gen = torch.Generator().manual_seed(seed + size)
    return torch.rand(size, size, generator=gen) >= missing


def _ct(views: int | np.ndarray) -> Callable[[int], LinearOperator]:
    return lambda size: ParallelBeam2D(image_size=size, views=views)


def _limited_angle(views: int = 60, span_deg: float = 90.0) -> Callable[[int], LinearOperator]:
    angles = np.linspace(0.0, math.radians(span_deg), views, endpoint=False)
    return lambda size: ParallelBeam2D(image_size=size, views=angles)


TASKS: dict[str, Task] = {}


def _add(task: Task) -> None:
    TASKS[task.name] = task


for _v in (15, 30, 60):
    _add(Task(f"ct{_v}", "ct", f"parallel beam, {_v} views, noiseless", _ct(_v)))
    _add(Task(f"ct{_v}-1e5", "ct", f"parallel beam, {_v} views, Poisson 1e5 photons",
              _ct(_v), photons=1e5))
_add(Task("fan60", "ct", "fan beam, 60 views over 360°, noiseless",
          lambda size: FanBeam2D(image_size=size, views=60)))
_add(Task("limited90", "ct", "parallel beam, 60 views within 90° (limited angle)",
          _limited_angle()))
_add(Task("inpaint-box", "inpainting", "centred square hole of side N/4",
          lambda size: Inpainting(_box_mask(size)), noise=IMAGE_TASK_NOISE))
_add(Task("inpaint-random", "inpainting", "70 % of pixels missing at random (fixed mask)",
          lambda size: Inpainting(_random_mask(size)), noise=IMAGE_TASK_NOISE))
_add(Task("sr2", "sr", "×2 average-pool super-resolution",
          lambda size: SuperResolution(image_size=size, factor=2), noise=IMAGE_TASK_NOISE))
_add(Task("sr4", "sr", "×4 average-pool super-resolution",
          lambda size: SuperResolution(image_size=size, factor=4), noise=IMAGE_TASK_NOISE))
_add(Task("blur", "blur", "Gaussian blur, σ = N/64 pixels (circular)",
          lambda size: GaussianBlur(image_size=size, sigma=size / 64), noise=IMAGE_TASK_NOISE))

# The task sets of the benchmark protocol.
CT_TASKS = ("ct15", "ct30", "ct60", "ct15-1e5", "ct30-1e5", "ct60-1e5", "fan60", "limited90")
IMAGE_TASKS = ("inpaint-box", "inpaint-random", "sr2", "sr4", "blur")
SOLVER_BENCH_TASKS = ("ct30", "ct60", "ct30-1e5", "ct60-1e5", "inpaint-box",
                      "inpaint-random", "sr4", "blur")


@lru_cache(maxsize=2)
def task_operator(name: str, size: int) -> LinearOperator:
    """The operator of a task at a size, built once and shared by all its problems (a CT
    operator keeps its system matrix and projector factors, so they are loaded once).  Only
    the last two are kept: at 128² one CT operator holds 3–4 GB of SVD factors (float32 and
    float64 copies), and the benchmarks go task by task."""
    return get_task(name).build(size)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"unknown task {name!r}; choose from {', '.join(TASKS)}") from None


def heldout_images(size: int, count: int, split: str = "test") -> list[np.ndarray]:
    """The fixed held-out phantoms (HU) of a split: seeds disjoint from training."""
    from ..phantoms import PhantomDataset

    data = PhantomDataset.split(split, size=size, length=count)
    return [data[i][0].numpy() for i in range(count)]


def bench_images(size: int, count: int, split: str, data: str = "phantoms") -> list[np.ndarray]:
    """The HU images of a run: held-out phantoms, or with ``data="realct"`` real patients'
    slices (patient-level split; the phantom split "test" means the real "val" patients)."""
    if data == "realct":
        from ..realct import validation_images

        return [im.astype(np.float64) for im in validation_images(
            size, count, "val" if split == "test" else split)]
    return heldout_images(size, count, split=split)
