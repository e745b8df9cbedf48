"""Projection backends for 2-D CT, all driving ASTRA with the same projector model.

* ``astra-cpu``  per-slice ASTRA calls (``direct_FP2D`` / ``direct_BP2D``) on one projector
  id created per operator; exact matched back-projection.
* ``matrix``     ASTRA's exported system matrix A as a torch sparse CSR matrix (and Aᵀ),
  applied to a whole batch in one sparse–dense product; cached on disk per geometry and
  moved to whatever device the input lives on.  Exact adjoint, float32 or float64.
* ``astra-cuda`` ASTRA's GPU projector with torch CUDA tensors linked without copies
  (no host↔device transfer in a call).  The 2-D scan is run as a 3-D scan of one voxel
  slice and one detector row (``parallel3d_vec`` / ``cone_vec``, rays in the slice's
  mid-plane).  ASTRA's 3-D volume rows run along +y while its 2-D rows run along −y, so
  the image is flipped upside down on the way in and the back-projection on the way out.
  Measured on an H100 against ``matrix`` (smooth test images, 60 views, 64²–256²):
  forward within 2e-4 (parallel) / 2.5e-2 (fan, other discretisation); but ASTRA's GPU
  back-projection is voxel-driven, so ``adjoint`` is NOT the transpose of ``forward``:
  ‖Aᵀy − A_matᵀy‖/‖A_matᵀy‖ = 1.7–3.4e-2 (parallel) and 4–8e-2 (fan, once ASTRA's cone
  back-projection is divided by the magnification it carries; 0.51 without), dot-product
  mismatch on smooth vectors ≤ 5e-5 (parallel), against ~1e-8 for ``matrix``
  (``scripts/check_gpu_backends.py``).  ``auto`` therefore uses ``matrix`` on CUDA tensors
  too (exact adjoint, and 18–1000× the images per second of ``astra-cuda`` there,
  ``scripts/bench_operators.py``) and falls back to ``astra-cuda`` only for geometries
  too large for the matrix.

Projector models: parallel beam ``linear`` (Joseph), fan beam ``line_fanflat``.  Line
integrals are in world units (mm), so with μ in 1/mm the sinogram is unitless.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .cache import csr_problem, load_or_build
from .errors import BackendUnavailableError, OperatorInputError
from .geometry import CTGeometry

BACKENDS = ("auto", "astra-cpu", "matrix", "astra-cuda")
PROJECTOR = {"parallel": "linear", "fan": "line_fanflat"}
MATRIX_VERSION = 1  # bump whenever the discretisation changes: cached matrices/SVDs rebuild
MATRIX_AUTO_MAX_NNZ = 15_000_000  # "auto" uses the matrix backend below this (estimated) size


def astra_version() -> str:
    import astra

    return str(astra.__version__)


def estimated_nnz(geometry: CTGeometry) -> int:
    """Upper estimate of the system matrix's non-zeros: about 2 per pixel column per ray."""
    return 2 * geometry.image_size * geometry.num_views * geometry.det_count


def cuda_available() -> bool:
    """True when torch sees a CUDA device and ASTRA was built with CUDA."""
    if not torch.cuda.is_available():
        return False
    try:
        import astra

        return bool(astra.use_cuda())
    except Exception:  # noqa: BLE001 - any ASTRA failure means "not available"
        return False


def resolve_backend(requested: str, device: torch.device, geometry: CTGeometry) -> str:
    """The concrete backend for a tensor on ``device`` (``auto`` picks one)."""
    if requested != "auto":
        return requested
    if estimated_nnz(geometry) <= MATRIX_AUTO_MAX_NNZ:
        return "matrix"
    if device.type == "cuda":
        return "astra-cuda" if cuda_available() else "matrix"
    return "astra-cpu"


def make_backend(name: str, geometry: CTGeometry) -> ProjectionBackend:
    if name == "astra-cpu":
        return AstraCPUBackend(geometry)
    if name == "matrix":
        return MatrixBackend(geometry)
    if name == "astra-cuda":
        return AstraCudaBackend(geometry)
    raise OperatorInputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


class ProjectionBackend:
    """forward: images (N, H, W) → sinograms (N, views, det); adjoint the reverse.
    Outputs have the input's device and dtype."""

    name = ""

    def __init__(self, geometry: CTGeometry):
        self.geometry = geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _create_projector(geometry: CTGeometry, kind: str | None = None) -> int:
    import astra

    try:
        return astra.create_projector(kind or PROJECTOR[geometry.type],
                                      geometry.astra_proj_geom(), geometry.astra_vol_geom())
    except Exception as exc:  # ASTRA raises bare Exceptions with its own text
        raise BackendUnavailableError(f"ASTRA could not create a projector: {exc}") from None


class AstraCPUBackend(ProjectionBackend):
    """One ASTRA CPU projector id per operator; one ``direct_FP2D``/``BP2D`` per slice."""

    name = "astra-cpu"

    def __init__(self, geometry: CTGeometry):
        super().__init__(geometry)
        from astra import experimental

        self._fp, self._bp = experimental.direct_FP2D, experimental.direct_BP2D
        self.projector_id = _create_projector(geometry)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.detach().to("cpu", torch.float32).contiguous()
        out = torch.empty(xs.shape[0], *self.geometry.sinogram_shape, dtype=torch.float32)
        xn, on = xs.numpy(), out.numpy()
        for i in range(xn.shape[0]):
            self._fp(self.projector_id, xn[i], on[i])
        return out.to(x.device, x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        ys = y.detach().to("cpu", torch.float32).contiguous()
        out = torch.empty(ys.shape[0], *self.geometry.image_shape, dtype=torch.float32)
        yn, on = ys.numpy(), out.numpy()
        for i in range(yn.shape[0]):
            self._bp(self.projector_id, on[i], yn[i])
        return out.to(y.device, y.dtype)

    def __del__(self) -> None:
        pid = getattr(self, "projector_id", None)
        if pid is not None:
            try:
                import astra

                astra.projector.delete(pid)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def matrix_description(geometry: CTGeometry) -> dict[str, Any]:
    """Everything the system matrix depends on, stored in and checked against cache entries
    (of the matrix and of its SVD)."""
    return {**geometry.to_dict(), "angles": [float(a) for a in geometry.angles],
            "projector": PROJECTOR[geometry.type], "astra": astra_version(),
            "matrix_version": MATRIX_VERSION}


def system_matrix(geometry: CTGeometry) -> sp.csr_matrix:
    """ASTRA's system matrix (rows = views·det, columns = H·W pixels, row-major), float32,
    loaded from the verified disk cache or exported once and cached (``cache``)."""
    key = geometry.cache_key("matrix", PROJECTOR[geometry.type], astra_version())
    shape = (geometry.num_views * geometry.det_count, geometry.image_size**2)
    data = load_or_build("matrix", key, matrix_description(geometry), MATRIX_VERSION,
                         lambda: _export_matrix(geometry, shape),
                         lambda arrays: csr_problem(arrays, shape))
    return sp.csr_matrix((data["data"], data["indices"], data["indptr"]), shape=shape)


def _export_matrix(geometry: CTGeometry, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """ASTRA's matrix as CSR arrays (float32 data, int32 indices, int64 row pointers)."""
    import astra

    pid = _create_projector(geometry)
    mid = astra.projector.matrix(pid)
    try:
        mat = astra.matrix.get(mid).tocsr().astype(np.float32)
    finally:
        astra.matrix.delete(mid)
        astra.projector.delete(pid)
    mat.sort_indices()
    mat.eliminate_zeros()
    if mat.shape != shape:
        raise BackendUnavailableError(f"ASTRA exported a {mat.shape} matrix, expected {shape}")
    return {"data": mat.data, "indices": mat.indices.astype(np.int32),
            "indptr": mat.indptr.astype(np.int64), "shape": np.asarray(shape, dtype=np.int64)}


def _torch_csr(mat: sp.csr_matrix, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    itype = np.int32 if mat.nnz < 2**31 - 1 else np.int64
    with warnings.catch_warnings():  # "sparse CSR support is in beta" on every creation
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(mat.indptr.astype(itype)),
            torch.from_numpy(mat.indices.astype(itype)),
            torch.from_numpy(mat.data.astype(np.float32)).to(dtype), size=mat.shape,
            check_invariants=False,
        ).to(device)


class MatrixBackend(ProjectionBackend):
    """y = A x and x = Aᵀ y as batched sparse (CSR) × dense products (columns = batch)."""

    name = "matrix"

    def __init__(self, geometry: CTGeometry):
        super().__init__(geometry)
        self.matrix = system_matrix(geometry)
        self._transposed = self.matrix.T.tocsr()
        self._copies: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] \
            = {}

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    def _pair(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._copies:
            self._copies[key] = (_torch_csr(self.matrix, device, dtype),
                                 _torch_csr(self._transposed, device, dtype))
        return self._copies[key]

    @staticmethod
    def _dtype(t: torch.Tensor) -> torch.dtype:
        return torch.float64 if t.dtype == torch.float64 else torch.float32

    def _product(self, mat: torch.Tensor, v: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        dt = self._dtype(v)
        cols = v.detach().to(dt).reshape(v.shape[0], -1).T.contiguous()
        out = (mat @ cols).T.reshape(v.shape[0], *shape)
        return out.to(v.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self._pair(x.device, self._dtype(x))
        return self._product(a, x, self.geometry.sinogram_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        _, at = self._pair(y.device, self._dtype(y))
        return self._product(at, y, self.geometry.image_shape)


class AstraCudaBackend(ProjectionBackend):
    """ASTRA GPU projection on linked torch CUDA tensors (no host copies).

    Not the exact adjoint (see the module docstring).  Raises BackendUnavailableError at
    construction where torch has no CUDA device or ASTRA has no CUDA support.
    """

    name = "astra-cuda"

    def __init__(self, geometry: CTGeometry):
        super().__init__(geometry)
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "backend 'astra-cuda' needs an NVIDIA GPU, and torch sees none here; "
                "use backend='matrix' or 'astra-cpu'")
        if not cuda_available():
            raise BackendUnavailableError(
                "backend 'astra-cuda': this ASTRA build cannot use the GPU")
        import astra
        from astra import experimental

        self._fp, self._bp = experimental.direct_FP3D, experimental.direct_BP3D
        n, p = geometry.image_size, geometry.pixel_size_mm
        half = geometry.fov_mm / 2
        vol = astra.create_vol_geom(n, n, 1, -half, half, -half, half, -p / 2, p / 2)
        v2 = geometry.vectors()
        zeros = np.zeros(len(v2))
        row = np.full(len(v2), p)  # detector row height = one voxel
        vec3 = np.stack([v2[:, 0], v2[:, 1], zeros, v2[:, 2], v2[:, 3], zeros,
                         v2[:, 4], v2[:, 5], zeros, zeros, zeros, row], 1)
        kind = "parallel3d_vec" if geometry.type == "parallel" else "cone_vec"
        proj = astra.create_proj_geom(kind, 1, geometry.det_count, vec3)
        self.projector_id = astra.create_projector("cuda3d", proj, vol)
        # ASTRA's cone back-projection comes out scaled by the magnification
        # (D_so + D_od) / D_so (H100: ratio to the matrix transpose 1.50–1.52 over the image)
        self._bp_scale = (1.0 if geometry.type == "parallel" else geometry.source_origin_mm
                          / (geometry.source_origin_mm + geometry.origin_det_mm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device if x.device.type == "cuda" else torch.device("cuda")
        xs = x.detach().to(dev, torch.float32).flip(-2).contiguous()  # rows along +y
        out = torch.zeros(xs.shape[0], 1, *self.geometry.sinogram_shape, device=dev)
        for i in range(xs.shape[0]):
            self._fp(self.projector_id, xs[i:i + 1], out[i])  # vol (1, H, W), proj (1, V, D)
        return out[:, 0].to(x.device, x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        dev = y.device if y.device.type == "cuda" else torch.device("cuda")
        ys = y.detach().to(dev, torch.float32).contiguous().unsqueeze(1)
        out = torch.zeros(ys.shape[0], 1, *self.geometry.image_shape, device=dev)
        for i in range(ys.shape[0]):
            self._bp(self.projector_id, out[i], ys[i])
        out = out[:, 0].flip(-2) * self._bp_scale  # back to rows along −y
        return out.to(y.device, y.dtype)

    def __del__(self) -> None:
        pid = getattr(self, "projector_id", None)
        if pid is not None:
            try:
                import astra

                astra.projector3d.delete(pid)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass
