"""Statistics of a study report: means with 95 % t-intervals over images, and paired
differences to a reference method.

The unit of replication is the image: the records of one (setting, method, image) are first
averaged over seeds, then for n images the interval is mean ± t(0.975, n−1)·s/√n with s the
sample standard deviation (ddof = 1); one image gives no interval (NaN).  A paired
difference takes, image by image, the method's seed-averaged score minus the reference
method's on the same image and setting (the same simulated data: the measurement noise is
seeded by the problem, not the method), over the images both have, and gives the same
interval for the differences.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .grid import Setting, setting_of


@dataclass(frozen=True)
class Interval:
    """mean, 95 % interval [low, high] and the number of images n."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and two-sided t-interval of ``values`` (NaN bounds for fewer than 2 values)."""
    from scipy.stats import t

    x = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def per_image(records: Iterable[dict[str, Any]], metric: str
              ) -> dict[tuple[Setting, str], dict[int, float]]:
    """{(setting, method): {image index: score averaged over seeds}} of the scored records."""
    sums: dict[tuple[Setting, str], dict[int, list[float]]] = defaultdict(
        lambda: defaultdict(list))
    for r in records:
        if "error" in r or metric not in r or r[metric] is None:
            continue
        sums[(setting_of(r), r["method"])][int(r["image_index"])].append(float(r[metric]))
    return {k: {i: float(np.mean(v)) for i, v in imgs.items()} for k, imgs in sums.items()}


def intervals(records: list[dict[str, Any]], metric: str) -> dict[tuple[Setting, str], Interval]:
    """{(setting, method): Interval over images} of one metric."""
    return {k: t_interval(list(v.values())) for k, v in per_image(records, metric).items()}


def paired(records: list[dict[str, Any]], metric: str,
           reference: str) -> dict[tuple[Setting, str], Interval]:
    """{(setting, method): Interval of (method − reference) over the images both have}."""
    scores = per_image(records, metric)
    out = {}
    for (setting, method), imgs in scores.items():
        ref = scores.get((setting, reference))
        if method == reference or ref is None:
            continue
        common = sorted(set(imgs) & set(ref))
        out[(setting, method)] = t_interval([imgs[i] - ref[i] for i in common])
    return out


def resource_summary(records: list[dict[str, Any]]
                     ) -> dict[tuple[Setting, str], dict[str, float]]:
    """{(setting, method): mean seconds per solve, max peak MB, mean NFE, solved, failed}."""
    groups: dict[tuple[Setting, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(setting_of(r), r["method"])].append(r)
    out = {}
    for key, recs in groups.items():
        ok = [r for r in recs if "error" not in r]
        out[key] = {
            "seconds": float(np.mean([r["seconds"] for r in ok])) if ok else math.nan,
            "peak_mb": float(max(r["peak_mb"] for r in ok)) if ok else math.nan,
            "nfe": float(np.mean([r["nfe"] for r in ok])) if ok else math.nan,
            "solved": len(ok), "failed": len(recs) - len(ok)}
    return out
