"""The task grid of a study: images × acquisition settings × seeds × methods.

Each task has a stable text key, and its random numbers come from the key alone, never from
the worker that runs it or the order of execution: the measurement noise (and which views
are dead) from the *problem* key (the task key without the method, so every method sees the
same data and differences between methods are paired), the solver's seed from the task key.
Seed = the first 4 bytes of SHA-256(key), big-endian, masked to 31 bits.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import asdict, dataclass
from typing import Any

from .config import StudyConfig


@dataclass(frozen=True)
class Setting:
    """One acquisition: geometry, angular range (None: full), views, photons (None:
    noiseless) and dead views."""

    geometry: str
    range_deg: float | None
    views: int
    photons: float | None
    dead_views: int

    @property
    def label(self) -> str:
        rng = "full" if self.range_deg is None else f"{self.range_deg:g}"
        dose = "none" if self.photons is None else f"{self.photons:g}"
        return (f"{self.geometry} range={rng} views={self.views} photons={dose} "
                f"dead={self.dead_views}")


def key_seed(key: str) -> int:
    """A 31-bit seed derived from a text key (SHA-256)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "big") & 0x7FFFFFFF


def settings(config: StudyConfig) -> list[Setting]:
    """Every acquisition setting of the grid, in a fixed order."""
    acq = config.acquisition
    return [Setting(g, r, v, p, d) for g, r, v, p, d in itertools.product(
        acq.geometry, acq.angular_range_deg, acq.views, acq.photons, acq.dead_views)]


def image_id(config: StudyConfig, index: int) -> str:
    """A readable, stable name of the study's image ``index``."""
    return f"{config.data.source}:{config.data.split}:{index}"


def problem_key(image: str, setting: Setting, seed: int, size: int) -> str:
    return f"{image}|{size}|{setting.label}|seed={seed}"


def task_key(problem: str, method: str) -> str:
    return f"{problem}|{method}"


def expand(config: StudyConfig) -> list[dict[str, Any]]:
    """The tasks of a study, as small picklable dicts, in a fixed order (images outermost,
    then settings, seeds, methods)."""
    tasks = []
    first_seed = config.seeds[0]
    for index in range(config.data.images):
        image = image_id(config, index)
        for setting in settings(config):
            for seed in config.seeds:
                problem = problem_key(image, setting, seed, config.size)
                for method in config.methods:
                    key = task_key(problem, method)
                    tasks.append({
                        "key": key, "image": image, "image_index": index,
                        **asdict(setting), "seed": seed, "method": method,
                        "noise_seed": key_seed(problem), "solver_seed": key_seed(key),
                        "example": index < config.examples and seed == first_seed,
                    })
    return tasks


def setting_of(record: dict[str, Any]) -> Setting:
    """The acquisition setting a task or result record belongs to."""
    return Setting(record["geometry"], record["range_deg"], int(record["views"]),
                   record["photons"], int(record["dead_views"]))
