"""Figures of a study report (matplotlib, Agg): score curves with 95 % intervals against
views and against dose, paired differences to the reference method, example montages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_file
from .grid import Setting
from .stats import Interval

HU_WINDOW = (-1000.0, 1000.0)
ERROR_RANGE_HU = 200.0
LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "rmse_hu": "RMSE (HU)",
          "psnr_region": "PSNR, region (dB)", "ssim_region": "SSIM, region",
          "rmse_hu_region": "RMSE, region (HU)"}
NOISELESS_LABEL = "none"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, dpi: int = 110) -> None:
    """Write a figure atomically as PNG and close it."""
    plt = _plt()
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def dose_label(photons: float | None) -> str:
    return NOISELESS_LABEL if photons is None else f"{photons:.0e}".replace("e+0", "e")


def _dose_axis(values: Sequence[float | None]) -> tuple[dict[float | None, float], list[str]]:
    """Positions for photon counts on a log axis, noiseless one decade beyond the highest."""
    finite = sorted(v for v in values if v is not None)
    pos: dict[float | None, float] = {v: math.log10(v) for v in finite}
    if None in values:
        pos[None] = (math.log10(finite[-1]) + 1.0) if finite else 0.0
    return pos, [dose_label(v) for v in sorted(pos, key=lambda k: pos[k])]


def curves(path: Path, ivals: dict[str, dict[tuple[Setting, str], Interval]],
           methods: Sequence[str], along: str, family: tuple, title: str,
           zero_line: bool = False) -> bool:
    """Score against ``along`` ("views" or "photons"), one column per value of the other,
    one row per metric; lines are methods with their 95 % interval as a band.  ``family``
    = (geometry, range_deg, dead_views) selects the settings.  False if nothing to plot."""
    other = "photons" if along == "views" else "views"
    keys = [k for m in ivals.values() for k in m
            if (k[0].geometry, k[0].range_deg, k[0].dead_views) == family]
    if not keys:
        return False
    cols = sorted({getattr(s, other) for s, _ in keys}, key=lambda v: (v is None, v or 0))
    xs_all = sorted({getattr(s, along) for s, _ in keys}, key=lambda v: (v is None, v or 0))
    pos, ticks = (_dose_axis(xs_all) if along == "photons"
                  else ({v: float(v) for v in xs_all}, [str(v) for v in xs_all]))
    plt = _plt()
    fig, axes = plt.subplots(len(ivals), len(cols), squeeze=False, layout="constrained",
                             figsize=(3.4 * len(cols), 2.6 * len(ivals)))
    for r, (metric, table) in enumerate(ivals.items()):
        for c, col in enumerate(cols):
            ax = axes[r][c]
            for method in methods:
                pts = sorted(((pos[getattr(s, along)], iv) for (s, m), iv in table.items()
                              if m == method and getattr(s, other) == col
                              and (s.geometry, s.range_deg, s.dead_views) == family),
                             key=lambda p: p[0])
                if not pts:
                    continue
                x = [p[0] for p in pts]
                mean = [p[1].mean for p in pts]
                line, = ax.plot(x, mean, marker="o", ms=3, label=method)
                ax.fill_between(x, [p[1].low for p in pts], [p[1].high for p in pts],
                                color=line.get_color(), alpha=0.2, lw=0)
            if zero_line:
                ax.axhline(0.0, color="k", lw=0.8)
            ax.set_xticks(sorted(pos.values()), ticks)
            if r == len(ivals) - 1:
                ax.set_xlabel("views" if along == "views" else "photons per ray")
            if r == 0:
                ax.set_title(f"photons {dose_label(col)}" if along == "views"
                             else f"{col} views", fontsize=9)
            ax.set_ylabel(LABELS.get(metric, metric))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save(fig, path)
    return True


def montage(path: Path, gt: np.ndarray, rows: list[tuple[str, list[tuple[str, np.ndarray]]]],
            title: str) -> None:
    """Per setting two rows: the ground truth and each method's reconstruction (HU window
    −1000..1000), then each method's error (reconstruction − truth, ±200 HU)."""
    plt = _plt()
    ncol = 1 + max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(2 * len(rows), ncol, squeeze=False, layout="constrained",
                             figsize=(1.5 * ncol + 0.8, 1.55 * 2 * len(rows) + 0.4))
    for ax in axes.ravel():
        ax.axis("off")
    for r, (label, images) in enumerate(rows):
        top, bottom = axes[2 * r], axes[2 * r + 1]
        top[0].imshow(gt, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1],
                          interpolation="nearest")
        top[0].set_title("ground truth", fontsize=7)
        bottom[0].text(0.5, 0.5, label.replace(" ", "\n"), ha="center", va="center",
                       fontsize=6, transform=bottom[0].transAxes)
        for c, (method, img) in enumerate(images, start=1):
            top[c].imshow(img, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1],
                          interpolation="nearest")
            top[c].set_title(method, fontsize=7)
            err = bottom[c].imshow(img - gt, cmap="RdBu_r", vmin=-ERROR_RANGE_HU,
                                   vmax=ERROR_RANGE_HU, interpolation="nearest")
            bottom[c].set_title(f"error {method}", fontsize=6)
    fig.colorbar(err, ax=axes.ravel().tolist(), shrink=0.3, label="error (HU)")
    fig.suptitle(title, fontsize=9)
    save(fig, path, dpi=80)  # 64² images: more pixels would only enlarge the file
