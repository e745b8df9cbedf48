"""Projection backends for 2-D CT, all driving ASTRA with the same projector model.

* ``astra-cpu``  per-slice ASTRA calls (``direct_FP2D`` / ``direct_BP2D``) on one projector
  id created per operator; exact matched back-projection.
* ``matrix``     ASTRA's exported system matrix, applied to a whole batch in one
  sparse–dense product; cached on disk per geometry.  Exact adjoint, float32 or float64.
  On the CPU one copy is held: the CSR arrays of Aᵀ (rows = pixels; int32 row pointers and
  column indices, float32 values, 8 B per non-zero), shared without copies by scipy (A x
  as the CSC view of A; Aᵀ y for batch 1) and a torch CSR tensor (Aᵀ y, MKL).  Measured at
  512², 60 views, one thread, 28.3 M non-zeros, batch 1/4/16, seconds:
  A x:  torch CSR(A) 0.031/0.035/0.32, scipy CSC(A) = CSR(Aᵀ)ᵀ 0.017/0.043/0.086;
  Aᵀ y: scipy CSC(Aᵀ) 0.028/0.054/0.34, torch CSR(Aᵀ) 0.024/0.025/0.062,
  scipy CSR(Aᵀ) 0.017/0.089/0.11; torch's own transpose views (CSC layout, or (yᵀA)ᵀ with
  a dense left factor) 4.8–6.6 s, as they convert the matrix on every call.  float64
  inputs add one float64 copy of the values (+8 B per non-zero).  On a GPU A and Aᵀ are
  both held as torch CSR there (16 B per non-zero of device memory).
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
  too large for the matrix.  Parallel beam: up to ``CUDA_BATCH_SLICES`` images per ASTRA
  call (the slices of one 3-D volume, one detector row each; written without a GPU at
  hand, checked by the GPU tests); fan beam: one call per image (cone rays cross slices).

``auto`` (:func:`resolve_backend`) takes ``matrix`` when the matrix fits in memory: its
real non-zero count (:func:`count_nnz`, exported for a few views and scaled) times
``MATRIX_PEAK_BYTES_PER_NNZ`` must stay below ``MATRIX_MEMORY_FRACTION`` of the memory
available now (``/proc/meminfo`` MemAvailable), else ``astra-cpu`` (``astra-cuda`` on GPU
tensors).  Per-call ASTRA is 3–22× slower per call at 512²; ASTRA's 2-D CPU projectors
have no batched call, so ``astra-cpu`` loops over the images.  The choice is made once per
geometry and device type in a process.

Projector models: parallel beam ``linear`` (Joseph), fan beam ``line_fanflat``.  Line
integrals are in world units (mm), so with μ in 1/mm the sinogram is unitless.

This module holds the backend choice and the ``matrix`` backend; the per-call ASTRA
backends are in :mod:`ctflow.operators.astra_direct` (their names are re-exported here).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .astra_direct import (  # noqa: F401  (re-exported: the backends' public names)
    CUDA_BATCH_SLICES,
    PROJECTOR,
    AstraCPUBackend,
    AstraCudaBackend,
    ProjectionBackend,
    astra_version,
    create_projector,
    cuda_available,
)
from .cache import load_or_build
from .cache_entries import csr_problem
from .errors import BackendUnavailableError, OperatorInputError
from .geometry import CTGeometry

BACKENDS = ("auto", "astra-cpu", "matrix", "astra-cuda")
MATRIX_VERSION = 1  # bump whenever the discretisation changes: cached matrices/SVDs rebuild
MATRIX_PEAK_BYTES_PER_NNZ = 32  # host bytes per non-zero while a matrix is exported and
# transposed (ASTRA's copy, scipy's, A and Aᵀ: measured +27 B at 512², 60 views)
MATRIX_MEMORY_FRACTION = 0.5  # "auto": the matrix's peak must fit in this share of free memory
MATRIX_FALLBACK_MAX_NNZ = 50_000_000  # "auto" limit where the free memory cannot be read
MATRIX_GPU_BYTES_PER_NNZ = 16  # A and Aᵀ as torch CSR on a GPU
NNZ_SAMPLE_VIEWS = 8  # count_nnz exports this many views and scales to all of them
_nnz_counts: dict[str, int] = {}
_auto_choice: dict[tuple[str, str], str] = {}


def estimated_nnz(geometry: CTGeometry) -> int:
    """Upper bound of the system matrix's non-zeros: 2·N per ray (Joseph: 2 per step along
    the major axis; line kernels: a ray crosses < 2N pixels); 1.6× the real count at 512²."""
    return 2 * geometry.image_size * geometry.num_views * geometry.det_count


def count_nnz(geometry: CTGeometry) -> int:
    """The system matrix's non-zero count, from ASTRA's export of ``NNZ_SAMPLE_VIEWS`` views
    (the middle ones of equal runs of views), scaled to all views (exact when the scan has
    no more views; measured within 5 % of the full export, parallel and fan, 64²–512²).
    Remembered per geometry in the process."""
    key = geometry.cache_key("nnz", PROJECTOR[geometry.type], astra_version())
    if key not in _nnz_counts:
        views = geometry.num_views
        m = min(views, NNZ_SAMPLE_VIEWS)  # the middle view of m equal runs of views
        picks = np.unique(((np.arange(m) + 0.5) * views / m).astype(int))
        sample = replace(geometry, angles=geometry.angles[picks])
        nnz = _export_matrix(sample, (len(picks) * geometry.det_count,
                                      geometry.image_size**2))["data"].size
        _nnz_counts[key] = int(round(nnz * views / len(picks)))
    return _nnz_counts[key]


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def matrix_fits(nnz: int, device: torch.device) -> bool:
    """Whether a matrix of ``nnz`` non-zeros can be exported and held (host memory, and
    device memory for a GPU)."""
    free = available_memory_bytes()
    if free is None:
        fits = nnz <= MATRIX_FALLBACK_MAX_NNZ
    else:
        fits = nnz * MATRIX_PEAK_BYTES_PER_NNZ <= MATRIX_MEMORY_FRACTION * free
    if fits and device.type == "cuda" and torch.cuda.is_available():
        gpu_free, _ = torch.cuda.mem_get_info(device)
        fits = nnz * MATRIX_GPU_BYTES_PER_NNZ <= MATRIX_MEMORY_FRACTION * gpu_free
    return fits


def resolve_backend(requested: str, device: torch.device, geometry: CTGeometry) -> str:
    """The concrete backend for a tensor on ``device`` (``auto`` picks one, see the module
    docstring; remembered per geometry and device type, so a solve never switches)."""
    if requested != "auto":
        return requested
    memo = (geometry.cache_key("auto", PROJECTOR[geometry.type]), device.type)
    if memo not in _auto_choice:
        # the bound 2·N per ray suffices where it fits; else count (a partial export)
        if matrix_fits(estimated_nnz(geometry), device) or matrix_fits(count_nnz(geometry),
                                                                        device):
            choice = "matrix"
        elif device.type == "cuda":
            choice = "astra-cuda" if cuda_available() else "matrix"
        else:
            choice = "astra-cpu"
        _auto_choice[memo] = choice
    return _auto_choice[memo]


def make_backend(name: str, geometry: CTGeometry) -> ProjectionBackend:
    """The backend called ``name`` (not "auto": see resolve_backend) for ``geometry``."""
    if name == "astra-cpu":
        return AstraCPUBackend(geometry)
    if name == "matrix":
        return MatrixBackend(geometry)
    if name == "astra-cuda":
        return AstraCudaBackend(geometry)
    raise OperatorInputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


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

    pid = create_projector(geometry)
    mid = astra.projector.matrix(pid)
    try:
        mat = astra.matrix.get(mid).tocsr().astype(np.float32, copy=False)
    finally:
        astra.matrix.delete(mid)
        astra.projector.delete(pid)
    mat.sort_indices()
    mat.eliminate_zeros()
    if mat.shape != shape:
        raise BackendUnavailableError(f"ASTRA exported a {mat.shape} matrix, expected {shape}")
    return {"data": mat.data, "indices": mat.indices.astype(np.int32, copy=False),
            "indptr": mat.indptr.astype(np.int64), "shape": np.asarray(shape, dtype=np.int64)}


def _index_dtype(mat: sp.spmatrix) -> type:
    return np.int32 if max(mat.nnz, *mat.shape) < 2**31 - 1 else np.int64


def _shared_csr(mat: sp.csr_matrix, dtype: torch.dtype) -> torch.Tensor:
    """A torch CSR tensor over ``mat``'s own arrays (no copy where the dtypes match)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta" on every creation
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(mat.indptr), torch.from_numpy(mat.indices),
            torch.from_numpy(mat.data).to(dtype), size=mat.shape, check_invariants=False)


def _compact_csr(mat: sp.csr_matrix) -> sp.csr_matrix:
    """``mat`` with float32 values and int32 indices (int64 only when needed)."""
    itype = _index_dtype(mat)
    return sp.csr_matrix((mat.data.astype(np.float32, copy=False),
                          mat.indices.astype(itype, copy=False),
                          mat.indptr.astype(itype, copy=False)), shape=mat.shape, copy=False)


class MatrixBackend(ProjectionBackend):
    """y = A x and x = Aᵀ y as batched sparse × dense products (columns = batch).

    CPU: one copy of the matrix, the CSR arrays of Aᵀ (``transposed``), shared by scipy
    (A x = CSC product with the same arrays) and torch (Aᵀ y, CSR product); see the module
    docstring for the measured options.  GPU: torch CSR copies of A and Aᵀ on the device.
    """

    name = "matrix"

    def __init__(self, geometry: CTGeometry):
        super().__init__(geometry)
        self.transposed = _compact_csr(system_matrix(geometry).T.tocsr())
        self._float64: sp.csr_matrix | None = None
        self._torch_t: dict[torch.dtype, torch.Tensor] = {}
        self._device: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] \
            = {}

    @property
    def matrix(self) -> sp.csc_matrix:
        """A as a scipy CSC view of the stored arrays (no copy)."""
        return self.transposed.T

    @property
    def nnz(self) -> int:
        return int(self.transposed.nnz)

    def nbytes(self) -> int:
        """Bytes of all matrix arrays held (host and devices; shared buffers counted once)."""
        seen: dict[tuple[str, int], int] = {}
        mats = [self.transposed] + ([self._float64] if self._float64 is not None else [])
        for m in mats:
            for a in (m.data, m.indices, m.indptr):
                seen[("cpu", a.ctypes.data)] = a.nbytes
        tensors = list(self._torch_t.values()) + [t for pair in self._device.values()
                                                  for t in pair]
        for t in tensors:
            for part in (t.crow_indices(), t.col_indices(), t.values()):
                seen[(str(part.device), part.data_ptr())] = part.nbytes
        return sum(seen.values())

    def _host(self, dtype: torch.dtype) -> sp.csr_matrix:
        """Aᵀ with float32 values, or (made once, sharing the indices) float64 values."""
        if dtype == torch.float32:
            return self.transposed
        if self._float64 is None:
            t = self.transposed
            self._float64 = sp.csr_matrix((t.data.astype(np.float64), t.indices, t.indptr),
                                          shape=t.shape, copy=False)
        return self._float64

    def _host_torch(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._torch_t:
            self._torch_t[dtype] = _shared_csr(self._host(dtype), dtype)
        return self._torch_t[dtype]

    def device_pair(self, device: torch.device, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Aᵀ) as torch CSR tensors on ``device`` (built through a temporary host copy
        of A's CSR arrays, which is dropped afterwards)."""
        key = (device, dtype)
        if key not in self._device:
            t = self._host(dtype)
            a = _compact_csr(t.T.tocsr()) if dtype == torch.float32 else t.T.tocsr()
            self._device[key] = (_shared_csr(a, dtype).to(device),
                                 _shared_csr(t, dtype).to(device))
        return self._device[key]

    @staticmethod
    def _dtype(t: torch.Tensor) -> torch.dtype:
        return torch.float64 if t.dtype == torch.float64 else torch.float32

    @staticmethod
    def _columns(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The batch (N, *shape) as a contiguous (numel, N) matrix of ``dtype``."""
        return v.detach().to(dtype).reshape(v.shape[0], -1).T.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self._dtype(x)
        cols = self._columns(x, dt)
        if x.device.type == "cpu":
            out = torch.from_numpy(self._host(dt).T @ cols.numpy())
        else:
            out = self.device_pair(x.device, dt)[0] @ cols
        return out.T.reshape(x.shape[0], *self.geometry.sinogram_shape).to(x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        dt = self._dtype(y)
        cols = self._columns(y, dt)
        if y.device.type == "cpu" and cols.shape[1] == 1:  # scipy: 0.017 s vs 0.023 s
            out = torch.from_numpy(self._host(dt) @ cols.numpy())
        elif y.device.type == "cpu":
            out = self._host_torch(dt) @ cols
        else:
            out = self.device_pair(y.device, dt)[1] @ cols
        return out.T.reshape(y.shape[0], *self.geometry.image_shape).to(y.dtype)
