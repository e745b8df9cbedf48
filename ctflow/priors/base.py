"""The interface every flow prior offers to the solvers.

Flow time (DESIGN §2): t = 0 is noise, t = 1 is data, x_t = t·x1 + (1−t)·z, z ~ N(0, I),
and the velocity v(x, t) ≈ E[x1 − z | x_t].  Derived quantities

    x̂1 = x + (1−t)·v          (clean estimate)
    ε̂  = x − t·v              (noise estimate)

Every network evaluation is counted in ``prior.nfe`` (a forward call on a batch counts 1,
a vector–Jacobian product counts 1 more); solvers report it.

A prior works in its own *model space*; ``to_model``/``to_physical`` are the affine maps
x_model = scale·μ + offset and back.  Solvers call them, users never see them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import paths
from ..integrators import euler_sample
from .presets import Presets
from .sizes import ImageSizes


class Prior:
    """Base class: subclasses implement ``_velocity(x, t)`` on model-space tensors."""

    image_size: int  # the size it was trained at
    # Every size it serves (None: image_size only); see ``sizes``.
    image_sizes: ImageSizes | None = None
    scale: float = 1.0  # x_model = scale * mu + offset
    offset: float = 0.0
    name: str = "(unnamed)"
    # Solver options tuned with this prior (ctflow.priors.presets); None: generic defaults.
    presets: Presets | None = None

    def __init__(self) -> None:
        self.nfe = 0

    def sizes(self) -> ImageSizes:
        """The square image sizes this prior serves."""
        return self.image_sizes or ImageSizes.fixed(self.image_size)

    def supports_size(self, size: int) -> bool:
        return self.sizes().supports(int(size))

    # -- to implement --------------------------------------------------------------------
    def _velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(x, t) for x (B, C, H, W) and t (B,), differentiable in x."""
        raise NotImplementedError

    # -- counted evaluations -------------------------------------------------------------
    def reset_nfe(self) -> None:
        self.nfe = 0

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """v(x, t); one network evaluation."""
        self.nfe += 1
        return self._velocity(x, self._time(t, x))

    def velocity_vjp(
        self, x: torch.Tensor, t: float | torch.Tensor, cotangent: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(v(x, t), J_vᵀ·cotangent) with J_v = ∂v/∂x; one forward plus one VJP (2 NFE)."""
        self.nfe += 2
        tt = self._time(t, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = self._velocity(xg, tt)
            (g,) = torch.autograd.grad(v, xg, grad_outputs=cotangent)
        return v.detach(), g

    def velocity_with_vjp(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """(v(x, t), cot ↦ J_vᵀ·cot) on one kept graph: 1 NFE now, 1 more per VJP call.

        For samplers whose cotangent depends on v itself (e.g. r = ŷ − P x̂1): the forward
        keeps its graph and the returned function can be called any number of times.
        """
        self.nfe += 1
        tt = self._time(t, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = self._velocity(xg, tt)

        def vjp(cotangent: torch.Tensor) -> torch.Tensor:
            self.nfe += 1
            with torch.enable_grad():
                (g,) = torch.autograd.grad(v, xg, grad_outputs=cotangent, retain_graph=True)
            return g.detach()

        return v.detach(), vjp

    def x1_hat(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """x̂1 = x + (1−t)·v(x, t)."""
        tt = self._time(t, x).view(-1, 1, 1, 1)
        return paths.x1_hat(x, tt, self.velocity(x, t))

    def eps_hat(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """ε̂ = x − t·v(x, t)."""
        tt = self._time(t, x).view(-1, 1, 1, 1)
        return paths.eps_hat(x, tt, self.velocity(x, t))

    # -- the VP-diffusion view -----------------------------------------------------------
    @staticmethod
    def vp_time(alpha: float) -> float:
        """Flow time t of the VP state with signal level α (σ = √(1−α²)): t/(1−t) = α/σ."""
        return paths.vp_time(alpha)

    def vp_eps(self, x_vp: torch.Tensor, alpha: float) -> torch.Tensor:
        """ε-prediction of the VP diffusion x_vp = α·x1 + σ·z at signal level α.

        With t = α/(α+σ) the flow state is x = x_vp·√(t² + (1−t)²), and ε̂ = x − t·v(x, t).
        """
        t = self.vp_time(alpha)
        x = paths.from_vp(x_vp, t)
        return self.eps_hat(x, t)

    # -- normalisation -------------------------------------------------------------------
    def to_model(self, mu: torch.Tensor) -> torch.Tensor:
        return self.scale * mu + self.offset

    def to_physical(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.offset) / self.scale

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _time(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):  # filled on x's device: no host-to-device copy
            return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
        t = t.to(device=x.device, dtype=x.dtype)
        return t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(x.shape[0])

    @torch.no_grad()
    def sample(self, n: int, nfe: int = 50, seed: int = 0, size: int | None = None
               ) -> torch.Tensor:
        """Unconditional size² samples (default: the trained size) by Euler on dx/dt = v
        from t = 0 to 1, in model space."""
        gen = torch.Generator().manual_seed(seed)
        size = self.image_size if size is None else int(size)
        x = torch.randn(n, 1, size, size, generator=gen)
        x = x.to(self.device, self.dtype)
        return euler_sample(self, x, nfe)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32
