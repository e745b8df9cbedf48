"""Filtered back-projection for parallel and flat-detector fan beam, batched, in torch.

Parallel beam (Kak & Slaney ch. 3):
    f(x) = ∫₀^π Q_θ(x cos θ + y sin θ) dθ,      Q_θ = R_θ ∗ h
Fan beam, flat detector, rebinned to a virtual detector through the origin (spacing
d' = d/M, coordinate s):
    R'_β(s) = R_β(s)·D/√(D² + s²),   Q_β = R'_β ∗ h/2,
    f(x) = ∫₀^{2π} Q_β(s(x)) / U² dβ,  U = (D − x·ê_β)/D,  s(x) = D (x·û_β)/(D − x·ê_β)
with D the source–origin distance, ê_β the unit vector towards the source and û_β the
detector axis.  h is the band-limited ramp (the discrete Ram-Lak kernel h(0) = 1/(4d²),
h(k odd) = −1/(π²k²d²), 0 for even k), convolved with zero padding and optionally
apodised by a window of ν = f/f_Nyquist: shepp-logan sinc(ν/2), cosine cos(πν/2),
hamming 0.54 + 0.46 cos(πν), hann 0.5 + 0.5 cos(πν).
The integral over angles uses per-view weights (half the gaps to the neighbouring views;
cyclic for a full scan), so irregular and limited-angle views work, and the
back-projection is pixel-driven with linear interpolation along the detector.
Output is μ in 1/mm when the sinogram holds line integrals of μ.  Fan-beam FBP assumes a
full (2π) scan: short scans get no Parker weighting.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import LinearOperator, check_tensor
from .errors import OperatorInputError
from .geometry import CTGeometry

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
_CHUNK_ELEMENTS = 1 << 21  # back-projection works on blocks of this many samples


def ramp_filter(det_count: int, spacing: float, name: str = "ram-lak") -> np.ndarray:
    """Frequency response (rfft of length ``padded_length(det_count)``) of the windowed
    discrete ramp for detector spacing ``spacing``, including the factor d of the
    convolution sum."""
    if name not in FILTERS:
        raise OperatorInputError(f"unknown FBP filter {name!r}; choose one of "
                                 f"{', '.join(FILTERS)}")
    n = padded_length(det_count)
    k = np.fft.fftfreq(n, 1.0 / n)  # integer offsets 0, 1, …, −1 in circular order
    h = np.zeros(n)
    h[0] = 1.0 / (4.0 * spacing**2)
    odd = (np.abs(k) % 2) == 1
    h[odd] = -1.0 / (math.pi**2 * k[odd] ** 2 * spacing**2)
    response = np.fft.rfft(h).real * spacing
    nu = np.fft.rfftfreq(n) / 0.5
    if name == "shepp-logan":
        response *= np.sinc(nu / 2)
    elif name == "cosine":
        response *= np.cos(math.pi * nu / 2)
    elif name == "hamming":
        response *= 0.54 + 0.46 * np.cos(math.pi * nu)
    elif name == "hann":
        response *= 0.5 + 0.5 * np.cos(math.pi * nu)
    return response


def padded_length(det_count: int) -> int:
    """Power of two ≥ 2·det_count (zero padding against circular wrap-around)."""
    return int(2 ** math.ceil(math.log2(max(2 * det_count, 2))))


def angle_weights(angles: np.ndarray, period: float) -> np.ndarray:
    """Quadrature weights of the views for ∫ dθ over one period.

    Half the gaps to the two neighbouring views.  For (nearly) complete coverage the gaps
    wrap around (uniform views get exactly period/n); for a limited range the two end
    views get the median gap on their open side.
    """
    n = angles.size
    if n == 1:
        return np.array([period if period else 1.0])
    theta = np.mod(angles, period)
    order = np.argsort(theta, kind="stable")
    t = theta[order]
    gaps = np.diff(np.concatenate([t, [t[0] + period]]))  # gap after each sorted view
    median = float(np.median(gaps[:-1])) if n > 2 else float(gaps[0])
    if gaps[-1] > 2.0 * max(median, 1e-12):  # limited angle: do not bridge the hole
        gaps[-1] = median
        prev = np.concatenate([[median], gaps[:-1]])
    else:
        prev = np.roll(gaps, 1)
    w = np.empty(n)
    w[order] = 0.5 * (gaps + prev)
    return w


def fbp(sinogram: torch.Tensor, op: LinearOperator, filter: str = "ram-lak") -> torch.Tensor:
    """μ images (B, C, N, N) from post-log sinograms (B, C, views, det) of a CT operator."""
    geometry = getattr(op, "geometry", None)
    if not isinstance(geometry, CTGeometry):
        raise OperatorInputError(f"fbp needs a CT operator with a geometry, got "
                                 f"{type(op).__name__}")
    if filter not in FILTERS:
        raise OperatorInputError(f"unknown FBP filter {filter!r}; choose one of "
                                 f"{', '.join(FILTERS)}")
    check_tensor(sinogram, geometry.sinogram_shape, "sinogram", "fbp")
    if sinogram.ndim != 4:
        raise OperatorInputError(f"fbp: sinogram must be (B, C, views, det), got "
                                 f"{tuple(sinogram.shape)}")
    dtype = torch.float64 if sinogram.dtype == torch.float64 else torch.float32
    b, c = sinogram.shape[:2]
    sino = sinogram.detach().to(dtype).reshape(b * c, *geometry.sinogram_shape)
    with torch.no_grad():
        image = _fbp(sino, geometry, filter)
    return image.reshape(b, c, *geometry.image_shape).to(sinogram.dtype)


def _fbp(sino: torch.Tensor, g: CTGeometry, filter: str) -> torch.Tensor:
    dev, dt = sino.device, sino.dtype
    n_det = g.det_count
    d_iso = g.det_spacing_mm / g.magnification  # detector spacing at the isocentre
    s = (np.arange(n_det) - (n_det - 1) / 2) * d_iso
    if g.type == "fan":
        dso = _source_distance(g)
        sino = sino * torch.as_tensor(dso / np.sqrt(dso**2 + s**2), device=dev, dtype=dt)
    response = ramp_filter(n_det, d_iso, filter)
    if g.type == "fan":
        response = response / 2
    n_pad = padded_length(n_det)
    spec = torch.fft.rfft(sino, n=n_pad, dim=-1)
    filtered = torch.fft.irfft(spec * torch.as_tensor(response, device=dev, dtype=dt),
                               n=n_pad, dim=-1)[..., :n_det]
    period = math.pi if g.type == "parallel" else 2 * math.pi
    weights = angle_weights(g.angles, period)
    return _backproject(filtered, g, weights, d_iso)


def _backproject(q: torch.Tensor, g: CTGeometry, weights: np.ndarray, d_iso: float
                 ) -> torch.Tensor:
    """Σ_v w_v · W_v(x) · q_v(s_v(x)) with linear interpolation along the detector.

    Pixel-driven, in blocks of pixels × all views small enough to stay in the CPU cache
    (``_CHUNK_ELEMENTS``): per block one affine map to detector indices, two ``take``s
    (q and its forward difference at the same index) and one multiply–add per sample.
    The view weights w_v are folded into q beforehand (times W_v for fan beam).
    Measured at 512², 768 views, one thread: 1.3–1.8 s (the previous per-view-chunk
    version with float64 positions and two gathers: 56 s).
    """
    dev, dt = q.device, q.dtype
    batch, n_views, n_det = q.shape
    n = g.image_size
    coords = ((np.arange(n) - (n - 1) / 2) * g.pixel_size_mm)
    xs = torch.as_tensor(np.tile(coords, n), device=dev, dtype=dt)  # column → x
    ys = torch.as_tensor(np.repeat(-coords, n), device=dev, dtype=dt)  # row 0 at the top → y
    cos = torch.as_tensor(np.cos(g.angles), device=dev, dtype=dt)[:, None]
    sin = torch.as_tensor(np.sin(g.angles), device=dev, dtype=dt)[:, None]
    w = torch.as_tensor(weights, device=dev, dtype=dt)[:, None]
    # zero outside the detector: padded index k ∈ [0, n_det + 1], q_pad[k + 1] − q_pad[k]
    padded = torch.nn.functional.pad(q * w, (1, 2))
    slope = torch.nn.functional.pad(padded[..., 1:] - padded[..., :-1], (0, 1))
    row = n_det + 3
    base = (torch.arange(n_views, device=dev) * row)[:, None]
    flat_q, flat_s = padded.reshape(batch, -1), slope.reshape(batch, -1)
    centre = (n_det - 1) / 2 + 1
    out = torch.empty(batch, n * n, device=dev, dtype=dt)
    step = max(64, _CHUNK_ELEMENTS // n_views)
    for p0 in range(0, n * n, step):
        x, y = xs[None, p0:p0 + step], ys[None, p0:p0 + step]
        if g.type == "parallel":
            idx = torch.addcmul((y * (sin / d_iso)).add_(centre), x, cos / d_iso)
            scale = None
        else:
            dso = _source_distance(g)
            inv = 1.0 / (dso - (x * sin - y * cos))  # 1/distance to the source along ê
            idx = ((x * cos + y * sin) * inv * (dso / d_iso)).add_(centre)
            scale = (dso * inv) ** 2
        idx.clamp_(0, n_det + 1)
        i0 = idx.long()
        frac = idx.sub_(i0)
        i0 += base
        for b in range(batch):
            vals = torch.addcmul(flat_q[b].take(i0), frac, flat_s[b].take(i0))
            if scale is not None:
                vals *= scale
            out[b, p0:p0 + step] = vals.sum(0)
    return out.reshape(batch, n, n)


def _source_distance(g: CTGeometry) -> float:
    """D_so of a fan-beam geometry (OperatorInputError if it has none)."""
    if g.source_origin_mm is None:
        raise OperatorInputError("fan-beam geometry without a source distance")
    return g.source_origin_mm
