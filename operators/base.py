"""Linear operators on batched image tensors with exact adjoints and autograd.

Every operator maps images ``(B, C, *in_shape)`` to measurements ``(B, C, *out_shape)``.
Subclasses implement two methods on flattened batches ``(N, *shape)``:

* ``_apply(x)``          the forward map A x
* ``_apply_adjoint(y)``  the adjoint Aᵀ y

Autograd goes through :class:`_ApplyLinear`, whose backward is the adjoint, so no
graph through the backend (ASTRA, sparse matrices) is ever recorded.  The backward
is itself expressed with the same Function, so higher-order gradients work too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import OperatorInputError
from .krylov import cg, cgls


class _ApplyLinear(torch.autograd.Function):
    """y = A x (or Aᵀ x); the vector–Jacobian product of a linear map is its adjoint."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, op: LinearOperator, adjoint: bool) -> torch.Tensor:
        ctx.op = op
        ctx.adjoint = adjoint
        return op._apply_adjoint(x) if adjoint else op._apply(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _ApplyLinear.apply(grad, ctx.op, not ctx.adjoint), None, None


class LinearOperator:
    """A linear map A: R^{in_shape} -> R^{out_shape}, applied per channel and batch item.

    Interface (tomosipo / deepinv style):

    * ``op(x)``                forward A x, autograd-compatible, batched
    * ``op.T(y)``              adjoint Aᵀ y (``op.T`` is itself a LinearOperator)
    * ``op.pinv(y)``           pseudo-inverse A⁺ y
    * ``op.projector(x)``      orthogonal projector on the row space, P x = A⁺ A x
    * ``op.solve_normal(b, rho)``  solves (AᵀA + ρ I) x = b
    * ``op.norm()``            spectral norm ‖A‖₂ by power iteration

    The generic ``pinv``/``projector``/``solve_normal`` use Krylov methods (CGLS / CG);
    operators override them with closed forms, FFTs or cached SVDs where they can.
    ``family`` names the kind of task an operator poses ("ct", "inpainting", "sr", "blur";
    None for generic maps), which users of the operator may key settings by.
    """

    family: str | None = None

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)

    # -- to be implemented by subclasses (flattened batches) -----------------------------
    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- public application -------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x for x of shape (B, C, *in_shape)."""
        return self._batched(x, self.in_shape, self.out_shape, adjoint=False)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀ y for y of shape (B, C, *out_shape)."""
        return self._batched(y, self.out_shape, self.in_shape, adjoint=True)

    @property
    def T(self) -> LinearOperator:
        return AdjointOperator(self)

    def _check_in(self, x: object) -> None:
        """OperatorInputError unless x is a real float image batch (B, C, *in_shape)."""
        check_tensor(x, self.in_shape, "image", type(self).__name__)

    def _check_out(self, y: object) -> None:
        """OperatorInputError unless y is a real float measurement batch (B, C, *out_shape)."""
        check_tensor(y, self.out_shape, "measurement", type(self).__name__)

    def _batched(
        self, x: torch.Tensor, shape_in: tuple[int, ...], shape_out: tuple[int, ...], adjoint: bool
    ) -> torch.Tensor:
        check_tensor(x, shape_in, "measurement" if adjoint else "image", type(self).__name__)
        lead = x.shape[: x.ndim - len(shape_in)]
        flat = x.reshape(-1, *shape_in)
        out = _ApplyLinear.apply(flat, self, adjoint)
        return out.reshape(*lead, *shape_out)

    # -- algebra -----------------------------------------------------------------------
    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        return ComposedOperator(self, other)

    def __mul__(self, scale: float) -> LinearOperator:
        return ScaledOperator(self, float(scale))

    __rmul__ = __mul__

    # -- derived maps (generic Krylov versions) ------------------------------------------
    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """AᵀA x."""
        return self.adjoint(self.forward(x))

    def solve_normal(
        self,
        rhs: torch.Tensor,
        rho: float,
        x0: torch.Tensor | None = None,
        tol: float = 1e-6,
        maxiter: int = 200,
    ) -> torch.Tensor:
        """Solve (AᵀA + ρ I) x = rhs (per batch item) by conjugate gradients."""
        if not rho >= 0:
            raise OperatorInputError(f"solve_normal needs rho >= 0, got {rho}")
        if x0 is not None:
            check_same_device(rhs, x0)
            self._check_in(x0)
        self._check_in(rhs)
        with torch.no_grad():
            return cg(lambda v: self.normal(v) + rho * v, rhs, x0=x0, tol=tol, maxiter=maxiter)

    def pinv(self, y: torch.Tensor, tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        """A⁺ y: minimum-norm least-squares solution by CGLS started at 0."""
        self._check_out(y)
        with torch.no_grad():
            return cgls(self.forward, self.adjoint, y, self.in_shape, tol=tol, maxiter=maxiter)

    def projector(self, x: torch.Tensor) -> torch.Tensor:
        """P x = A⁺ A x, the orthogonal projection on the row space of A."""
        return self.pinv(self.forward(x))

    def projected_solve_normal(self, rhs: torch.Tensor, rho: float) -> torch.Tensor:
        """P (AᵀA + ρI)⁻¹ rhs: the row-space part of the regularised normal solve."""
        return self.projector(self.solve_normal(rhs, rho))

    def norm(self, iters: int = 50, seed: int = 0, device: str | torch.device = "cpu") -> float:
        """‖A‖₂ = sqrt(λ_max(AᵀA)) by power iteration from a seeded random start."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        x = torch.randn(1, 1, *self.in_shape, generator=gen).to(device)
        x = x / x.norm()
        lam = 0.0
        with torch.no_grad():
            for _ in range(iters):
                w = self.normal(x)
                lam = float(w.norm())
                if lam == 0.0:
                    return 0.0
                x = w / lam
        return lam**0.5

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_shape={self.in_shape}, out_shape={self.out_shape})"


class AdjointOperator(LinearOperator):
    """Aᵀ as an operator of its own; ``op.T.T`` is ``op``."""

    def __init__(self, op: LinearOperator):
        super().__init__(op.out_shape, op.in_shape)
        self.op = op

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.op._apply_adjoint(x)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op._apply(y)

    @property
    def T(self) -> LinearOperator:
        return self.op


class ComposedOperator(LinearOperator):
    """(A ∘ B) x = A(B x); adjoint Bᵀ Aᵀ."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator):
        if outer.in_shape != inner.out_shape:
            raise OperatorInputError(
                f"cannot compose: inner output {inner.out_shape} != outer input {outer.in_shape}"
            )
        super().__init__(inner.in_shape, outer.out_shape)
        self.outer, self.inner = outer, inner

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer._apply(self.inner._apply(x))

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner._apply_adjoint(self.outer._apply_adjoint(y))


class ScaledOperator(LinearOperator):
    """(c A) x; the pseudo-inverse is A⁺/c and the projector is unchanged."""

    def __init__(self, op: LinearOperator, scale: float):
        super().__init__(op.in_shape, op.out_shape)
        self.op, self.scale = op, scale

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op._apply(x)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op._apply_adjoint(y)

    def pinv(self, y: torch.Tensor, tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        if self.scale == 0.0:
            return torch.zeros(*y.shape[:-len(self.out_shape)], *self.in_shape,
                               dtype=y.dtype, device=y.device)
        return self.op.pinv(y, tol=tol, maxiter=maxiter) / self.scale

    def projector(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.projector(x) if self.scale != 0.0 else torch.zeros_like(x)

    def solve_normal(self, rhs: torch.Tensor, rho: float, x0: torch.Tensor | None = None,
                     tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        """(c²AᵀA + ρI) x = b  ⇔  (AᵀA + ρ/c² I) x = b/c²."""
        if self.scale == 0.0:
            return super().solve_normal(rhs, rho, x0=x0, tol=tol, maxiter=maxiter)
        c2 = self.scale**2
        return self.op.solve_normal(rhs / c2, rho / c2, x0=x0, tol=tol, maxiter=maxiter)

    def norm(self, *args, **kw) -> float:
        return abs(self.scale) * self.op.norm(*args, **kw)


def check_tensor(x: object, shape: tuple[int, ...], what: str, owner: str) -> None:
    """Raise a clear OperatorInputError unless x is a float tensor (..., *shape) with data."""
    if not isinstance(x, torch.Tensor):
        raise OperatorInputError(f"{owner}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.is_complex():
        raise OperatorInputError(f"{owner}: {what} must be a real float tensor, got {x.dtype}")
    if x.device.type == "meta":
        raise OperatorInputError(f"{owner}: {what} is on the 'meta' device (no data)")
    if x.ndim < len(shape) + 1 or tuple(x.shape[-len(shape):]) != shape:
        raise OperatorInputError(
            f"{owner}: {what} must have shape (B, C, {', '.join(map(str, shape))}), "
            f"got {tuple(x.shape)}"
        )


def check_same_device(*tensors: torch.Tensor) -> None:
    """OperatorInputError unless all tensors live on one device."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise OperatorInputError(
            f"tensors are on different devices: {', '.join(sorted(map(str, devices)))}"
        )


def idempotence_error(op: LinearOperator, x: torch.Tensor | None = None, seed: int = 0,
                      dtype: torch.dtype = torch.float32) -> float:
    """‖P(Px) − Px‖ / ‖Px‖ for P = ``op.projector`` (0 for an exact projector).

    x defaults to a seeded standard-normal image (1, 1, *in_shape).
    """
    if x is None:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 1, *op.in_shape, generator=gen, dtype=dtype)
    with torch.no_grad():
        px = op.projector(x)
        ppx = op.projector(px)
    denom = float(px.double().norm())
    return float((ppx - px).double().norm()) / denom if denom > 0 else 0.0


def dot_test(
    op: LinearOperator,
    seed: int = 0,
    make: Callable[[tuple[int, ...], torch.Generator], torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> float:
    """Relative adjoint error |⟨Ax, y⟩ − ⟨x, Aᵀy⟩| / (‖Ax‖‖y‖) for random x, y.

    ``make(shape, generator)`` builds the test vectors (default: standard normal).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    make = make or (lambda shape, g: torch.randn(shape, generator=g))
    x = make((1, 1, *op.in_shape), gen).to(device=device, dtype=dtype)
    y = make((1, 1, *op.out_shape), gen).to(device=device, dtype=dtype)
    with torch.no_grad():
        ax = op(x)
        aty = op.T(y)
    lhs = float((ax * y).sum())
    rhs = float((x * aty).sum())
    scale = float(ax.norm() * y.norm()) or 1.0
    return abs(lhs - rhs) / scale
