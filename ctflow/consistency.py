"""Data-consistency screening of CT sinograms: dead or saturated views and detector columns.

Real scanners drop views, lose detector columns and saturate readings.  Such rows fit no
image, and solvers that trust the data exactly turn them into wild images (one zeroed view
of 60 in data/examples/chest64_60v.h5: C-ΠGFM −11 dB, MS-Flow −27 dB, against 53 and
56 dB).  :func:`find_inconsistent` finds them, :func:`masked_problem` removes them.

Statistics, per batch item:

* detector column d:  t_d = median over the kept views v of
  |y[v, d] − median(y[v, d−2], …, y[v, d+2])| (the neighbours are the nearest kept
  columns).  A column reads like its neighbours (the sinogram is smooth along the
  detector); the medians make bad views irrelevant here.  A reconstruction residual does
  not work for columns: FBP or least squares absorb a dead column into a ring (residual
  ≈ 0.15 of its signal), and in a 2π fan scan they split it with its conjugate rays.
* view v:  s_v = RMS over the kept detectors of box₅(r[v, :]), r = y − A x,
  x = FBP of the kept views (masked columns filled by interpolation along the detector).
  FBP weights each view 1/n, so a bad view moves x by O(1/n) only and keeps its own large
  residual (a least-squares fit would spread it into the image).  The 5-bin running mean
  box₅ drops the fine-scale mismatch between pixel-driven FBP and the projector, which is
  largest at the axis-aligned views (it flagged view 0 of clean 128² head phantoms).

Threshold (robust, over the kept columns resp. views): with med = median(s) and
MAD' = 1.4826·median|s − med|, an entry is an outlier when

    score = (s − med) / max(K_MAD·MAD', FLOOR·level) > 1,

level = median over the kept views of RMS(y[v, kept columns]) (the signal size; the floor
keeps clean noiseless data, whose MAD is tiny, from flagging anything).  Measured on 3
phantom kinds × 3 seeds × {parallel 60/30/15, fan 60 views} × {noiseless, 1e5, 1e4
photons}: clean data score ≤ 0.14 (views) and ≤ 0.22 (columns) at 64², ≤ 0.22 and ≤ 0.37
at 32²; a dead or saturated view ≥ 1.9.  A dead column scores > 1 at 98 % of the positions
whose signal is at least half the level (64²; 94 % at 32²): the misses sit at a sharp edge
of the body, where a dead column looks like the edge moved by one bin.  Limited-angle
scans (90°) are not flagged, but a dead view in them goes unnoticed (FBP is too poor).

Detection is greedy: columns first (their statistic ignores bad views, not the reverse),
then views; each round masks the outliers scoring at least GREEDY × the round's top score
(a dead column also shifts its neighbours' running medians, which recover once it is
masked) and scores again, until nothing scores above 1 (MAX_ROUNDS per kind).  At most
MAX_FRACTION of the views or columns is masked (beyond that the report says ``capped``);
with fewer than MIN_SIZE views or columns that kind is not screened.  A batch is screened
item by item and the union of the findings is masked.

Masking.  Dead views leave the geometry: the reduced operator is a genuine ParallelBeam2D /
FanBeam2D over the kept angles.  Dead detector columns are zero rows of the operator
(:class:`DetectorMask`): forward and adjoint multiply by the detector mask, and the exact
projector is the truncated SVD of the system matrix without those rows.  Either way the
new operator needs its own truncated SVD (SVD-projector route, ≤ 128²), built once per
fault pattern and cached on disk like any geometry's: ~10 s at 64² on an idle core,
minutes at 128²; the CG route (larger images) needs nothing new.  FBP, which needs
complete projections, gets masked columns filled by interpolation instead of zeros.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import InputError, MethodError
from .operators import CTOperator, FanBeam2D, LinearOperator, ParallelBeam2D, fbp
from .operators.astra_backends import (
    PROJECTOR,
    astra_version,
    matrix_description,
    system_matrix,
)
from .operators.svd import TruncatedSVD

MODES = ("auto", "off")
K_MAD = 12.0  # robust z-score (in MAD' units) an outlier must exceed
VIEW_FLOOR = 0.1  # least excess of a view's residual RMS, as a share of the signal level
RESIDUAL_BOX = 5  # detector bins the view residual is averaged over before its RMS
DETECTOR_FLOOR = 0.3  # least deviation of a column's median reading, as a share of the level
DETECTOR_WINDOW = 5  # columns of the running median a column's reading is compared with
GREEDY = 0.75  # a round masks the outliers scoring at least this share of its top score
MAX_ROUNDS = 8  # per kind (detector columns, then views)
MAX_FRACTION = 0.25  # never mask more than this share of the views or of the detectors
MAD_SCALE = 1.4826  # MAD of a normal distribution → its standard deviation
MIN_SIZE = 8  # fewer views (detectors) than this: no statistics over them, not screened


@dataclass
class ConsistencyReport:
    """What :func:`find_inconsistent` found (indices into the original sinogram)."""

    masked_views: list[int] = field(default_factory=list)
    masked_detectors: list[int] = field(default_factory=list)
    rounds: int = 0
    capped: bool = False  # more looked inconsistent than MAX_FRACTION allows to mask

    @property
    def any(self) -> bool:
        return bool(self.masked_views or self.masked_detectors)

    def warnings(self) -> list[str]:
        """One message per finding (empty for consistent data)."""
        out = []
        if self.masked_views:
            out.append(f"{len(self.masked_views)} view(s) inconsistent with the rest of the "
                       f"sinogram (dead or saturated?), left out: views "
                       f"{_list(self.masked_views)}")
        if self.masked_detectors:
            out.append(f"{len(self.masked_detectors)} detector column(s) inconsistent with "
                       f"the rest of the sinogram (dead or saturated?), left out: detectors "
                       f"{_list(self.masked_detectors)}")
        if self.capped:
            out.append(f"more views or detectors look inconsistent than the "
                       f"{MAX_FRACTION:.0%} that may be left out: the data may be corrupt")
        return out

    def info(self) -> dict[str, Any]:
        """The entries a reconstruction's ``info`` carries."""
        return {"masked_views": list(self.masked_views),
                "masked_detectors": list(self.masked_detectors),
                "warnings": self.warnings()}


def _list(indices: list[int], most: int = 10) -> str:
    text = ", ".join(map(str, indices[:most]))
    return text + (f", … ({len(indices)} in all)" if len(indices) > most else "")


# -- detection ----------------------------------------------------------------------------
def find_inconsistent(y: torch.Tensor, op: CTOperator) -> ConsistencyReport:
    """Views and detector columns of y ``(B, C, views, det)`` that do not fit the rest of
    the sinogram (module docstring: statistics and thresholds)."""
    if not isinstance(op, CTOperator):
        raise InputError(f"consistency screening needs a CT operator, got {type(op).__name__}")
    n_views, n_det = op.out_shape
    sino = y.detach().reshape(-1, n_views, n_det).to(torch.float64)
    keep_v = np.ones(n_views, dtype=bool)
    keep_d = np.ones(n_det, dtype=bool)
    report = ConsistencyReport()
    kinds = [(score_fn, keep) for score_fn, keep in
             ((_detector_scores, keep_d), (_view_scores, keep_v)) if keep.size >= MIN_SIZE]
    with torch.no_grad():
        # detector columns first: their statistic ignores bad views, not the reverse
        for score_fn, keep in kinds:
            for _ in range(MAX_ROUNDS):
                report.rounds += 1
                new = _outliers(score_fn(sino, op, keep_v, keep_d))
                if not new.any():
                    break
                if (~keep | new).sum() > MAX_FRACTION * keep.size:
                    report.capped = True
                    break
                keep &= ~new
    report.masked_views = [int(i) for i in np.flatnonzero(~keep_v)]
    report.masked_detectors = [int(i) for i in np.flatnonzero(~keep_d)]
    return report


def _level(sino: torch.Tensor, kv: torch.Tensor, kd: torch.Tensor) -> torch.Tensor:
    """Signal level per item (N,): median over the kept views of RMS(y[v, kept dets])."""
    return sino[:, kv][:, :, kd].pow(2).mean(-1).sqrt().median(dim=1).values


def _detector_scores(sino: torch.Tensor, op: CTOperator, keep_v: np.ndarray,
                     keep_d: np.ndarray) -> np.ndarray:
    """Scores (N, D) of the detector columns: median over the kept views of
    |y[v, d] − running median of y[v, :] over the kept columns|."""
    kv = torch.as_tensor(keep_v, device=sino.device)
    kd = torch.as_tensor(keep_d, device=sino.device)
    kept = sino[:, kv][:, :, kd]  # (N, V', D')
    stat = torch.zeros(sino.shape[0], sino.shape[2], dtype=sino.dtype, device=sino.device)
    stat[:, kd] = (kept - median_filter(kept, DETECTOR_WINDOW)).abs().median(dim=1).values
    return _robust_score(stat, kd, DETECTOR_FLOOR * _level(sino, kv, kd)).cpu().numpy()


def _view_scores(sino: torch.Tensor, op: CTOperator, keep_v: np.ndarray,
                 keep_d: np.ndarray) -> np.ndarray:
    """Scores (N, V) of the views: RMS over the kept detectors of r = y − A·FBP(kept data)."""
    kv = torch.as_tensor(keep_v, device=sino.device)
    kd = torch.as_tensor(keep_d, device=sino.device)
    sub = reduced_operator(op, keep_v, np.ones_like(keep_d))
    x = fbp(fill_detectors(sino[:, kv], keep_d)[:, None].float(), sub)
    r = (sino - op(x)[:, 0].double()) * kd  # masked columns do not count
    stat = box_filter(r, RESIDUAL_BOX)[:, :, kd].pow(2).mean(-1).sqrt()  # (N, V)
    return _robust_score(stat, kv, VIEW_FLOOR * _level(sino, kv, kd)).cpu().numpy()


def box_filter(values: torch.Tensor, width: int) -> torch.Tensor:
    """Running mean over the last axis (odd ``width``, edges padded by replication)."""
    half = width // 2
    flat = values.reshape(-1, 1, values.shape[-1])
    padded = torch.nn.functional.pad(flat, (half, half), mode="replicate")
    kernel = torch.full((1, 1, width), 1.0 / width, dtype=values.dtype, device=values.device)
    return torch.nn.functional.conv1d(padded, kernel).reshape(values.shape)


def median_filter(values: torch.Tensor, window: int) -> torch.Tensor:
    """Running median over the last axis (odd ``window``, edges padded by replication)."""
    half = window // 2
    flat = values.reshape(-1, 1, values.shape[-1])
    padded = torch.nn.functional.pad(flat, (half, half), mode="replicate")[:, 0]
    return padded.unfold(-1, window, 1).median(dim=-1).values.reshape(values.shape)


def _outliers(score: np.ndarray) -> np.ndarray:
    """Entries (any item) scoring above 1 and at least GREEDY × their item's top score."""
    top = score.max(axis=1, keepdims=True)
    return ((score > 1.0) & (score >= GREEDY * top)).any(axis=0)


def _robust_score(stat: torch.Tensor, keep: torch.Tensor, floor: torch.Tensor
                  ) -> torch.Tensor:
    """(s − med) / max(K_MAD·MAD', floor) per item over the kept entries; −inf elsewhere
    and for items without signal."""
    kept = stat[:, keep]
    med = kept.median(dim=1, keepdim=True).values
    mad = MAD_SCALE * (kept - med).abs().median(dim=1, keepdim=True).values
    scale = torch.maximum(K_MAD * mad, floor[:, None])
    score = torch.where(scale > 0, (stat - med) / scale.clamp_min(1e-300),
                        torch.full_like(stat, -torch.inf))
    return torch.where(keep[None], score, torch.full_like(stat, -torch.inf))


def fill_detectors(sino: torch.Tensor, keep_d: np.ndarray) -> torch.Tensor:
    """Masked detector columns of sino (..., views, det) replaced by linear interpolation
    between the nearest kept columns (the nearest kept value beyond the ends)."""
    if keep_d.all():
        return sino
    kept = np.flatnonzero(keep_d)
    pos = np.interp(np.arange(keep_d.size), kept, np.arange(kept.size, dtype=np.float64))
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, kept.size - 1)
    w = torch.as_tensor(pos - lo, dtype=sino.dtype, device=sino.device)
    left = sino[..., torch.as_tensor(kept[lo], device=sino.device)]
    right = sino[..., torch.as_tensor(kept[hi], device=sino.device)]
    return left * (1 - w) + right * w


# -- masking ------------------------------------------------------------------------------
class DetectorMask:
    """Mixin: a CT operator whose masked detector columns are zero rows, A_m = M A.

    ``keep_detectors`` (bool, det_count) says which columns stay.  The exact projector is
    the truncated SVD of the system matrix without the masked rows (cached per mask)."""

    keep_detectors: np.ndarray

    def _det_weight(self, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.keep_detectors, dtype=like.dtype, device=like.device)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return super()._apply(x) * self._det_weight(x)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return super()._apply_adjoint(y * self._det_weight(y))

    def svd(self) -> TruncatedSVD:
        """The truncated SVD of the system matrix without the masked detector rows."""
        if self._svd is None:
            g = self.geometry
            mask = np.packbits(self.keep_detectors).tobytes().hex()
            key = g.cache_key("svd", PROJECTOR[g.type], astra_version(), self.svd_threshold,
                              "detector-mask", mask)
            rows = np.tile(self.keep_detectors, g.num_views)
            shape = (int(rows.sum()), g.image_size**2)
            self._svd = TruncatedSVD.cached(
                key, lambda: system_matrix(g)[rows], self.svd_threshold,
                {**matrix_description(g), "detector_mask": mask}, shape)
        return self._svd

    def __repr__(self) -> str:
        return (f"{super().__repr__()[:-1]}, masked_detectors="
                f"{np.flatnonzero(~self.keep_detectors).tolist()})")


class MaskedParallelBeam2D(DetectorMask, ParallelBeam2D):
    """ParallelBeam2D with masked detector columns (see :class:`DetectorMask`)."""


class MaskedFanBeam2D(DetectorMask, FanBeam2D):
    """FanBeam2D with masked detector columns (see :class:`DetectorMask`)."""


def reduced_operator(op: CTOperator, keep_views: np.ndarray, keep_dets: np.ndarray
                     ) -> CTOperator:
    """The operator of the kept views (a new geometry) and kept detector columns."""
    g = op.geometry
    geometry = dataclasses.replace(g, angles=g.angles[keep_views])
    if keep_dets.all():
        cls: type[CTOperator] = ParallelBeam2D if g.type == "parallel" else FanBeam2D
    else:
        cls = MaskedParallelBeam2D if g.type == "parallel" else MaskedFanBeam2D
    out = cls.from_geometry(geometry, op.backend, op.projection, op.svd_threshold)
    if not keep_dets.all():
        out.keep_detectors = np.asarray(keep_dets, dtype=bool).copy()
    return out


def masked_problem(y: torch.Tensor, op: CTOperator, report: ConsistencyReport,
                   fill: bool = False) -> tuple[torch.Tensor, CTOperator]:
    """(y, op) without the report's views and detector columns.  Masked columns of the new
    y are 0, or with ``fill`` interpolated along the detector (for FBP)."""
    keep_v = np.ones(op.out_shape[0], dtype=bool)
    keep_v[report.masked_views] = False
    keep_d = np.ones(op.out_shape[1], dtype=bool)
    keep_d[report.masked_detectors] = False
    y_kept = y[..., torch.as_tensor(keep_v, device=y.device), :]
    if fill:
        y_kept = fill_detectors(y_kept, keep_d)
    elif not keep_d.all():
        y_kept = y_kept * torch.as_tensor(keep_d, dtype=y.dtype, device=y.device)
    return y_kept, reduced_operator(op, keep_v, keep_d)


def screen(y: torch.Tensor, op: LinearOperator, mode: str = "auto", method: str = ""
           ) -> tuple[torch.Tensor, LinearOperator, dict[str, Any]]:
    """The hook of :func:`ctflow.reconstruct`: with ``mode="auto"`` and a CT operator,
    find inconsistent views / detector columns and return the problem without them plus the
    ``info`` entries (``masked_views``, ``masked_detectors``, ``warnings``); else (y, op, {})
    unchanged."""
    if mode not in MODES:
        raise MethodError(f"consistency must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off" or not isinstance(op, CTOperator):
        return y, op, {}
    report = find_inconsistent(y, op)
    if report.any:
        y, op = masked_problem(y, op, report, fill=method == "fbp")
    return y, op, report.info()
