"""The per-call ASTRA backends of :mod:`ctflow.operators.astra_backends` (whose docstring
states the measured behaviour of each): ``astra-cpu``, one ASTRA CPU projector per operator
and one ``direct_FP2D``/``direct_BP2D`` call per image, exact matched back-projection; and
``astra-cuda``, ASTRA's GPU projector on linked torch CUDA tensors, run as a 3-D scan of one
voxel slice per image, whose back-projection is not the exact adjoint.  Also the backend
interface :class:`ProjectionBackend` and the projector models.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import BackendUnavailableError
from .geometry import CTGeometry

PROJECTOR = {"parallel": "linear", "fan": "line_fanflat"}
CUDA_BATCH_SLICES = 16  # astra-cuda, parallel beam: images per ASTRA call


def astra_version() -> str:
    """The installed ASTRA version (part of every cache key)."""
    import astra

    return str(astra.__version__)


def cuda_available() -> bool:
    """True when torch sees a CUDA device and ASTRA was built with CUDA."""
    if not torch.cuda.is_available():
        return False
    try:
        import astra

        return bool(astra.use_cuda())
    except Exception:  # noqa: BLE001 - any ASTRA failure means "not available"
        return False


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


def create_projector(geometry: CTGeometry, kind: str | None = None) -> int:
    """An ASTRA projector id for ``geometry`` (default model: PROJECTOR); the caller
    deletes it."""
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
        self.projector_id = create_projector(geometry)

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


class AstraCudaBackend(ProjectionBackend):
    """ASTRA GPU projection on linked torch CUDA tensors (no host copies).

    Parallel beam: up to ``CUDA_BATCH_SLICES`` images per ASTRA call, as the slices of one
    3-D volume with one detector row per slice (the rays have no z component, so each row
    sees only its own slice).  Fan beam: one call per image.  Not the exact adjoint (see
    the module docstring).  Raises BackendUnavailableError at construction where torch has
    no CUDA device or ASTRA has no CUDA support.
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
        from astra import experimental

        self._fp, self._bp = experimental.direct_FP3D, experimental.direct_BP3D
        self._projectors: dict[int, int] = {}
        self._chunk = CUDA_BATCH_SLICES if geometry.type == "parallel" else 1
        self._projector(1)
        # ASTRA's cone back-projection comes out scaled by the magnification
        # (D_so + D_od) / D_so (H100: ratio to the matrix transpose 1.50–1.52 over the image)
        so, od = geometry.source_origin_mm, geometry.origin_det_mm
        self._bp_scale = 1.0 if so is None or od is None else so / (so + od)

    def _projector(self, slices: int) -> int:
        """The cuda3d projector for ``slices`` stacked images (made once per count)."""
        if slices not in self._projectors:
            import astra

            g = self.geometry
            n, p = g.image_size, g.pixel_size_mm
            half, depth = g.fov_mm / 2, slices * p / 2
            vol = astra.create_vol_geom(n, n, slices, -half, half, -half, half, -depth, depth)
            v2 = g.vectors()
            zeros = np.zeros(len(v2))
            row = np.full(len(v2), p)  # detector row height = one voxel
            vec3 = np.stack([v2[:, 0], v2[:, 1], zeros, v2[:, 2], v2[:, 3], zeros,
                             v2[:, 4], v2[:, 5], zeros, zeros, zeros, row], 1)
            kind = "parallel3d_vec" if g.type == "parallel" else "cone_vec"
            proj = astra.create_proj_geom(kind, slices, g.det_count, vec3)
            self._projectors[slices] = astra.create_projector("cuda3d", proj, vol)
        return self._projectors[slices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device if x.device.type == "cuda" else torch.device("cuda")
        xs = x.detach().to(dev, torch.float32).flip(-2).contiguous()  # rows along +y
        out = torch.zeros(xs.shape[0], *self.geometry.sinogram_shape, device=dev)
        for i in range(0, xs.shape[0], self._chunk):  # vol (k, H, W), proj (k, V, D)
            k = min(self._chunk, xs.shape[0] - i)
            self._fp(self._projector(k), xs[i:i + k], out[i:i + k])
        return out.to(x.device, x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        dev = y.device if y.device.type == "cuda" else torch.device("cuda")
        ys = y.detach().to(dev, torch.float32).contiguous()
        out = torch.zeros(ys.shape[0], *self.geometry.image_shape, device=dev)
        for i in range(0, ys.shape[0], self._chunk):
            k = min(self._chunk, ys.shape[0] - i)
            self._bp(self._projector(k), out[i:i + k], ys[i:i + k])
        out = out.flip(-2) * self._bp_scale  # back to rows along −y
        return out.to(y.device, y.dtype)

    def __del__(self) -> None:
        for pid in getattr(self, "_projectors", {}).values():
            try:
                import astra

                astra.projector3d.delete(pid)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass
