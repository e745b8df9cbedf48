"""2-D CT projection operators: ``ParallelBeam2D`` and ``FanBeam2D``.

Images are μ (1/mm) on an N×N grid of pixel size p mm; sinograms are line integrals
(unitless), shape (views, det).  The backend (see ``astra_backends``) is resolved per call
from the input's device when ``backend="auto"``.

Pseudo-inverse and projector (``projection``):

* ``"svd"``  exact truncated-SVD projector P = V_k V_kᵀ, cached on disk per geometry
  (``svd`` module); singular values ≤ ``svd_threshold``·σ_max count as zero.
* ``"sym"``  exact projector of the symmetrised matrix A_s = (1/|G|) Σ_g R_gᵀ A C_g over the
  scan's grid symmetries G (``symmetric`` module): block eigendecompositions, cached on
  disk per geometry; scales to 512².  A_s differs from ASTRA's A by ≈1e-5–1e-4 (relative);
  forward and adjoint stay A.  Needs D4 or a Klein four-group (uniform parallel views, or
  fan views over 2π in an even number); elsewhere (limited or irregular angles) it falls
  back to svd up to 128², else cg, with one warning.
* ``"cg"``   A⁺ y by CGLS from 0 (minimum-norm least squares), P x = A⁺(A x); only as
  idempotent as the Krylov solve is converged (measure with ``idempotence_error``).
* ``"auto"`` sym where the geometry has a usable symmetry group (any size), else svd when
  image_size ≤ 128, else cg.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .astra_backends import (
    BACKENDS,
    PROJECTOR,
    ProjectionBackend,
    astra_version,
    make_backend,
    matrix_description,
    resolve_backend,
    system_matrix,
)
from .base import LinearOperator
from .errors import GeometryError, OperatorInputError
from .geometry import CTGeometry, make_geometry
from .svd import TruncatedSVD
from .symmetric import SymmetricProjector
from .symmetric_group import Symmetry, group_name, scan_symmetries, usable

log = logging.getLogger(__name__)

PROJECTIONS = ("auto", "svd", "sym", "cg")
SVD_AUTO_MAX_SIZE = 128
SVD_THRESHOLD = 1e-3


class CTOperator(LinearOperator):
    """A: μ image (N, N) → sinogram (views, det) for a :class:`CTGeometry`."""

    family = "ct"

    def __init__(self, geometry: CTGeometry, backend: str = "auto", projection: str = "auto",
                 svd_threshold: float = SVD_THRESHOLD):
        if not isinstance(geometry, CTGeometry):
            raise GeometryError(f"expected a CTGeometry, got {type(geometry).__name__}")
        geometry.validate()
        if backend not in BACKENDS:
            raise OperatorInputError(f"unknown backend {backend!r}; choose one of "
                                     f"{', '.join(BACKENDS)}")
        if projection not in PROJECTIONS:
            raise OperatorInputError(f"unknown projection {projection!r}; choose one of "
                                     f"{', '.join(PROJECTIONS)}")
        if not 0 < svd_threshold < 1:
            raise OperatorInputError(f"svd_threshold must be in (0, 1), got {svd_threshold}")
        super().__init__(geometry.image_shape, geometry.sinogram_shape)
        self.geometry = geometry
        self.backend = backend
        self.projection = projection
        self.svd_threshold = float(svd_threshold)
        self._backends: dict[str, ProjectionBackend] = {}
        self._svd: TruncatedSVD | None = None
        self._sym: SymmetricProjector | None = None
        self._symmetries: list[Symmetry] | None = None
        self._warned_fallback = False
        if backend in ("astra-cpu", "astra-cuda"):
            self._backend(backend)  # fail early (e.g. BackendUnavailableError without a GPU)

    @classmethod
    def from_geometry(cls, geometry: CTGeometry, backend: str = "auto",
                      projection: str = "auto", svd_threshold: float = SVD_THRESHOLD):
        obj = cls.__new__(cls)
        CTOperator.__init__(obj, geometry, backend, projection, svd_threshold)
        return obj

    # -- backends ------------------------------------------------------------------------
    def backend_for(self, device: torch.device | str) -> str:
        """The concrete backend used for tensors on ``device``."""
        return resolve_backend(self.backend, torch.device(device), self.geometry)

    def _backend(self, name: str) -> ProjectionBackend:
        if name not in self._backends:
            self._backends[name] = make_backend(name, self.geometry)
        return self._backends[name]

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._backend(self.backend_for(x.device)).forward(x)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._backend(self.backend_for(y.device)).adjoint(y)

    # -- pseudo-inverse, projector, normal equations --------------------------------------
    def symmetries(self) -> list[Symmetry]:
        """The grid symmetries that map this scan's views onto themselves (identity first)."""
        if self._symmetries is None:
            self._symmetries = scan_symmetries(self.geometry)
        return self._symmetries

    def _symmetric_route_applies(self) -> bool:
        """False for subclasses that redefine the system matrix behind ``svd`` (e.g. masked
        detector rows): the symmetric route builds from the plain geometry's matrix."""
        return type(self).svd is CTOperator.svd

    @property
    def projection_method(self) -> str:
        """``sym``, ``svd`` or ``cg``: ``auto`` (and ``sym`` without a usable symmetry
        group) resolved as in the module docstring."""
        if self.projection in ("svd", "cg"):
            return self.projection
        if usable(self.symmetries()) and self._symmetric_route_applies():
            return "sym"
        fallback = "svd" if self.geometry.image_size <= SVD_AUTO_MAX_SIZE else "cg"
        if self.projection == "sym" and not self._warned_fallback:
            self._warned_fallback = True
            log.warning("projection 'sym': this scan's views have no usable grid symmetry "
                        "(group of %s); using the %s route instead",
                        group_name(self.symmetries()), fallback)
        return fallback

    def svd(self) -> TruncatedSVD:
        """The cached truncated SVD of the system matrix (computed on first use; the disk
        entry is verified against this geometry and rebuilt if stale or corrupt)."""
        if self._svd is None:
            g = self.geometry
            key = g.cache_key("svd", PROJECTOR[g.type], astra_version(), self.svd_threshold)
            shape = (g.num_views * g.det_count, g.image_size**2)
            self._svd = TruncatedSVD.cached(key, lambda: system_matrix(g), self.svd_threshold,
                                            matrix_description(g), shape)
        return self._svd

    def sym(self) -> SymmetricProjector:
        """The cached block eigendecomposition of the symmetrised system matrix (computed
        on first use, its dense blocks on a GPU when one is present; verified on load like
        ``svd``); applies A_s through this operator."""
        if self._sym is None:
            g = self.geometry
            key = g.cache_key("sym", PROJECTOR[g.type], astra_version(), self.svd_threshold)
            self._sym = SymmetricProjector.cached(
                key, lambda: system_matrix(g), self.symmetries(), self.svd_threshold,
                matrix_description(g), g.sinogram_shape, self._apply, self._apply_adjoint,
                eigh_device="cuda" if torch.cuda.is_available() else None)
        return self._sym

    def _exact(self) -> TruncatedSVD | SymmetricProjector:
        return self.sym() if self.projection_method == "sym" else self.svd()

    def pinv(self, y: torch.Tensor, tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        """A⁺ y (truncated SVD or symmetric blocks, or CGLS from 0 with tolerance ``tol``)."""
        if self.projection_method == "cg":
            return super().pinv(y, tol=tol, maxiter=maxiter)
        self._check_out(y)
        if self.projection_method == "sym":
            with torch.no_grad():
                return self.sym().pinv(y)
        with torch.no_grad():  # float64 throughout: Σ⁻² amplifies the rounding of Aᵀy too
            return self.svd().inverse_gram(self.adjoint(y.to(torch.float64))).to(y.dtype)

    def projector(self, x: torch.Tensor, tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        """P x = A⁺ A x (V_k V_kᵀ x for the SVD and symmetric routes)."""
        self._check_in(x)
        if self.projection_method == "cg":
            with torch.no_grad():
                return self.pinv(self.forward(x), tol=tol, maxiter=maxiter)
        with torch.no_grad():
            return self._exact().project(x)

    def solve_normal(self, rhs: torch.Tensor, rho: float, x0: torch.Tensor | None = None,
                     tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        """(AᵀA + ρI) x = rhs.

        SVD or symmetric route, ρ > 0: the closed form over the kept *and* tail singular
        pairs (svd.py, symmetric.py), exact up to rounding; ``x0``, ``tol``, ``maxiter`` are
        not needed.  In float32 the attainable relative residual is
        ~1e-7·σ_max²/ρ·‖tail part of rhs‖/‖rhs‖ (rounding of the stored factors), which no
        float32 iteration improves on.  ρ = 0, or the CG route:
        CG on the normal equations from x0 to ``tol``.
        """
        if self.projection_method == "cg" or rho == 0:
            return super().solve_normal(rhs, rho, x0=x0, tol=tol, maxiter=maxiter)
        if not rho >= 0:
            raise OperatorInputError(f"solve_normal needs rho >= 0, got {rho}")
        self._check_in(rhs)
        with torch.no_grad():
            return self._exact().solve_normal(rhs, float(rho))

    def projected_solve_normal(self, rhs: torch.Tensor, rho: float) -> torch.Tensor:
        """P (AᵀA + ρI)⁻¹ rhs; SVD route, ρ > 0: one pass over the kept factors (svd.py)."""
        if self.projection_method == "cg" or not rho > 0:
            return super().projected_solve_normal(rhs, rho)
        self._check_in(rhs)
        with torch.no_grad():
            return self._exact().projected_solve_normal(rhs, float(rho))

    def __repr__(self) -> str:
        g = self.geometry
        return (f"{type(self).__name__}(image_size={g.image_size}, views={g.num_views}, "
                f"det_count={g.det_count}, backend={self.backend!r}, "
                f"projection={self.projection!r})")


class ParallelBeam2D(CTOperator):
    """Parallel-beam CT; ``views`` int → uniform angles in [0, π), else radians.

    Defaults: detector spacing = pixel size, det_count covers the image diagonal.
    """

    def __init__(self, image_size: int = 128, views: int | np.ndarray = 60,
                 pixel_size_mm: float = 1.0, det_count: int | None = None,
                 det_spacing_mm: float | None = None, backend: str = "auto",
                 projection: str = "auto", svd_threshold: float = SVD_THRESHOLD):
        geometry = make_geometry("parallel", image_size, views, pixel_size_mm, det_count,
                                 det_spacing_mm)
        super().__init__(geometry, backend, projection, svd_threshold)


class FanBeam2D(CTOperator):
    """Fan-beam CT with a flat detector; ``views`` int → uniform angles in [0, 2π).

    Defaults: source–origin 4·FOV, origin–detector 2·FOV (FOV = N·p), detector spacing =
    pixel size × magnification, det_count covers the shadow of the image circle.
    """

    def __init__(self, image_size: int = 128, views: int | np.ndarray = 60,
                 source_origin_mm: float | None = None, origin_det_mm: float | None = None,
                 pixel_size_mm: float = 1.0, det_count: int | None = None,
                 det_spacing_mm: float | None = None, backend: str = "auto",
                 projection: str = "auto", svd_threshold: float = SVD_THRESHOLD):
        geometry = make_geometry("fan", image_size, views, pixel_size_mm, det_count,
                                 det_spacing_mm, source_origin_mm, origin_det_mm)
        super().__init__(geometry, backend, projection, svd_threshold)


def make_ct_operator(geometry: CTGeometry, backend: str = "auto",
                     projection: str = "auto", svd_threshold: float = SVD_THRESHOLD
                     ) -> CTOperator:
    """ParallelBeam2D or FanBeam2D for a geometry (e.g. read from an HDF5 file)."""
    if not isinstance(geometry, CTGeometry):
        raise GeometryError(f"expected a CTGeometry, got {type(geometry).__name__}")
    cls = ParallelBeam2D if geometry.type == "parallel" else FanBeam2D
    return cls.from_geometry(geometry, backend, projection, svd_threshold)
