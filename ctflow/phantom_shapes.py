"""Analytic drawing primitives of the procedural phantoms (:mod:`ctflow.phantoms`).

* :class:`Blob`: a rotated ellipse with radial harmonics, inside ⇔
  ρ < 1 + Σ_k a_k cos(kθ + φ_k) in the ellipse's own normalised polar coordinates (ρ, θ).
* :class:`Canvas`: supersampled HU and label images on the field of view [−1, 1]²,
  painted shape by shape (later shapes overwrite earlier ones).
* :class:`Frame`: body-relative coordinates (p, q) ∈ [−1, 1]² mapped onto the image.
* :func:`texture`: unit-std band-limited noise on [−1, 1]², the same physical field at
  every render resolution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class Blob:
    """Rotated ellipse (centre cx, cy; semi-axes a, b; angle) with radial harmonics.

    Inside ⇔ ρ < 1 + Σ amp_k cos(k θ + φ_k), with (ρ, θ) the polar coordinates of the
    point in the ellipse's own frame, scaled so the plain ellipse is the unit circle.
    """

    cx: float
    cy: float
    a: float
    b: float
    angle: float = 0.0
    harm: tuple[tuple[int, float, float], ...] = ()

    def scaled(self, s: float) -> Blob:
        return replace(self, a=self.a * s, b=self.b * s)

    def radius(self) -> float:
        return max(self.a, self.b) * (1.0 + sum(abs(h[1]) for h in self.harm))

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - self.cx, y - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (c * dx + s * dy) / self.a
        v = (c * dy - s * dx) / self.b
        r2 = u * u + v * v
        if not self.harm:
            return r2 < 1.0
        th = np.arctan2(v, u)
        bound = np.ones_like(th)
        for k, amp, ph in self.harm:
            bound += amp * np.cos(k * th + ph)
        return r2 < bound * bound


class Canvas:
    """Supersampled HU and label images on the field of view [−1, 1]²; ``labels`` maps
    tissue names to the uint8 codes stored in ``lab``."""

    def __init__(self, res: int, labels: Mapping[str, int]):
        self.res = res
        self.labels = labels
        self.coord = ((np.arange(res) + 0.5) * (2.0 / res) - 1.0).astype(np.float32)
        self.hu = np.full((res, res), -1000.0, np.float32)
        self.lab = np.zeros((res, res), np.uint8)

    def _window(self, blob: Blob) -> tuple[slice, slice] | None:
        r = blob.radius()
        lo = lambda c: max(0, int(math.floor((c - r + 1.0) * self.res / 2.0)))  # noqa: E731
        hi = lambda c: min(self.res, int(math.ceil((c + r + 1.0) * self.res / 2.0)))  # noqa: E731
        ys, xs = slice(lo(blob.cy), hi(blob.cy)), slice(lo(blob.cx), hi(blob.cx))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            return None
        return ys, xs

    def paint(self, blob: Blob, hu: float, label: str,
              where: Sequence[str] | None = None, within: Blob | None = None) -> None:
        """Set HU and label inside ``blob`` (optionally only over labels ``where`` and
        inside ``within``)."""
        win = self._window(blob)
        if win is None:
            return
        ys, xs = win
        x, y = self.coord[None, xs], self.coord[ys, None]
        m = blob.inside(x, y)
        if within is not None:
            m &= within.inside(x, y)
        if where is not None:
            allowed = np.zeros(256, bool)
            allowed[[self.labels[w] for w in where]] = True
            m &= allowed[self.lab[ys, xs]]
        self.hu[ys, xs][m] = hu
        self.lab[ys, xs][m] = self.labels[label]

    def shell(self, blob: Blob, outer_hu: float, outer_label: str, inner_scale: float,
              inner_hu: float, inner_label: str, where: Sequence[str] | None = None) -> None:
        """A shell (e.g. cortical bone) around a core (e.g. marrow)."""
        self.paint(blob, outer_hu, outer_label, where)
        self.paint(blob.scaled(inner_scale), inner_hu, inner_label, [outer_label])


@dataclass(frozen=True)
class Frame:
    """Body frame: relative coordinates (p, q) ∈ [−1, 1]² over the body's bounding
    ellipse, mapped to the image by the body's centre, semi-axes and rotation."""

    cx: float
    cy: float
    ax: float
    ay: float
    rot: float

    def point(self, p: float, q: float) -> tuple[float, float]:
        c, s = math.cos(self.rot), math.sin(self.rot)
        u, v = p * self.ax, q * self.ay
        return self.cx + c * u - s * v, self.cy + s * u + c * v

    def blob(self, p: float, q: float, sa: float, sb: float, angle: float = 0.0,
             harm: tuple[tuple[int, float, float], ...] = (), scale_x: bool = False) -> Blob:
        """Blob at relative position (p, q) with relative semi-axes (sa, sb); the semi-axes
        scale with (ax, ay), or both with ax when ``scale_x`` (round structures)."""
        cx, cy = self.point(p, q)
        a = sa * self.ax
        b = sb * (self.ax if scale_x else self.ay)
        return Blob(cx, cy, a, b, angle + self.rot, harm)


def harmonics(rng: np.random.Generator, orders: Sequence[int], amp: float
              ) -> tuple[tuple[int, float, float], ...]:
    """Random radial harmonics: amplitudes U(−amp, amp)/k^0.5, phases U(0, 2π)."""
    return tuple((int(k), float(rng.uniform(-amp, amp) / math.sqrt(k)),
                  float(rng.uniform(0, 2 * math.pi))) for k in orders)


def _bilinear(g: np.ndarray, res: int) -> np.ndarray:
    """Bilinear interpolation of a (grid, grid) lattice with nodes at the cell centres of
    [−1, 1]² to the res² render pixel centres (the same physical points at every size)."""
    grid = g.shape[0]
    pos = np.clip(((np.arange(res) + 0.5) / res) * grid - 0.5, 0, grid - 1)
    i0 = np.minimum(np.floor(pos).astype(int), grid - 2)
    w = (pos - i0).astype(np.float32)
    rows = g[i0] * (1 - w)[:, None] + g[i0 + 1] * w[:, None]
    return rows[:, i0] * (1 - w)[None, :] + rows[:, i0 + 1] * w[None, :]


def texture(rng: np.random.Generator, res: int) -> np.ndarray:
    """Unit-std band-limited noise field on [−1, 1]²: Gaussian-smoothed white noise on a
    coarse (24²) and a fine (64²) lattice, bilinearly interpolated, mixed 0.6 : 0.8."""
    field = np.zeros((res, res), np.float32)
    for grid, sigma, weight in ((24, 1.5, 0.6), (64, 1.0, 0.8)):
        g = gaussian_filter(rng.standard_normal((grid, grid)), sigma, mode="wrap")
        field += _bilinear((weight * g / g.std()).astype(np.float32), res)
    return field


def supersampling(size: int) -> int:
    """Sub-samples per pixel side: s = min(8, max(2, ⌈256 / size⌉))."""
    return min(8, max(2, math.ceil(256 / size)))
