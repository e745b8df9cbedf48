"""Image-domain operators with closed-form pseudo-inverses: Identity, Inpainting,
SuperResolution (average pooling) and GaussianBlur (circular FFT convolution).

Each one overrides the generic Krylov ``pinv`` / ``projector`` / ``solve_normal`` with an
exact formula, so P = A⁺A is a true orthogonal projector (P² = P up to rounding).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import LinearOperator
from .errors import OperatorInputError


def _image_shape(image_size: int | tuple[int, int], owner: str) -> tuple[int, int]:
    """(H, W) from an int (square) or a pair; OperatorInputError if not positive ints."""
    shape = (image_size, image_size) if isinstance(image_size, (int, np.integer)) \
        else tuple(image_size)
    if len(shape) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape):
        raise OperatorInputError(f"{owner}: image_size must be a positive int or (H, W), "
                                 f"got {image_size!r}")
    return int(shape[0]), int(shape[1])


class _DeviceCache:
    """Copies of a constant tensor per (device, dtype) of the tensors it meets."""

    def __init__(self, value: torch.Tensor):
        self.value = value
        self._copies: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        if key not in self._copies:
            self._copies[key] = self.value.to(device=x.device, dtype=x.dtype)
        return self._copies[key]


class Identity(LinearOperator):
    """A = I (denoising); A⁺ = P = I and (AᵀA + ρI)⁻¹ b = b / (1 + ρ)."""

    def __init__(self, image_size: int | tuple[int, int] = 128):
        shape = _image_shape(image_size, "Identity")
        super().__init__(shape, shape)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    def pinv(self, y: torch.Tensor, tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        return self.forward(y).detach()

    def projector(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).detach()

    def solve_normal(self, rhs: torch.Tensor, rho: float, x0: torch.Tensor | None = None,
                     tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        _check_rho(rho)
        return self.forward(rhs).detach() / (1.0 + rho)

    def norm(self, *_, **__) -> float:
        return 1.0


class Inpainting(LinearOperator):
    """A x = m ⊙ x with a binary mask m (True = observed); measurements keep the image shape
    with zeros where m = 0.

    Aᵀ = A, AᵀA = diag(m), so A⁺ = P = diag(m) and
    (AᵀA + ρI)⁻¹ b = b / (m + ρ)  (entries with m + ρ = 0 get 0: the minimum-norm solution).
    """

    family = "inpainting"

    def __init__(self, mask: torch.Tensor | np.ndarray):
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(mask)
        if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
            raise OperatorInputError("Inpainting: mask must be a 2-D (H, W) bool tensor")
        if mask.dtype != torch.bool:
            if mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all()):
                raise OperatorInputError("Inpainting: mask must be boolean (or 0/1 valued)")
            mask = mask != 0
        super().__init__(tuple(mask.shape), tuple(mask.shape))
        self.mask = mask.detach().cpu()
        self._m = _DeviceCache(self.mask.float())

    @property
    def observed_fraction(self) -> float:
        return float(self.mask.float().mean())

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._m.like(x)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self._m.like(y)

    def pinv(self, y: torch.Tensor, tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        return self.adjoint(y).detach()

    def projector(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).detach()

    def solve_normal(self, rhs: torch.Tensor, rho: float, x0: torch.Tensor | None = None,
                     tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        _check_rho(rho)
        self._check_in(rhs)
        denom = self._m.like(rhs) + rho
        return torch.where(denom > 0, rhs / denom.clamp_min(1e-30), torch.zeros_like(rhs))

    def norm(self, *_, **__) -> float:
        return 1.0 if bool(self.mask.any()) else 0.0


class SuperResolution(LinearOperator):
    """A = average pooling by an integer factor f: (A x)_k = mean of the f×f block k.

    Aᵀ y = nearest-neighbour upsampling of y divided by f², and A Aᵀ = I/f², hence
    A⁺ = f² Aᵀ (nearest upsampling), P = A⁺A = U D (block means spread back), and since
    AᵀA = P/f²:  (AᵀA + ρI)⁻¹ b = P b/(1/f² + ρ) + (I − P) b/ρ   (ρ = 0: f² P b).
    """

    family = "sr"

    def __init__(self, image_size: int | tuple[int, int] = 128, factor: int = 4):
        shape = _image_shape(image_size, "SuperResolution")
        if not isinstance(factor, (int, np.integer)) or factor < 1:
            raise OperatorInputError(f"SuperResolution: factor must be a positive int, "
                                     f"got {factor!r}")
        if shape[0] % factor or shape[1] % factor:
            raise OperatorInputError(f"SuperResolution: image size {shape} is not divisible "
                                     f"by factor {factor}")
        self.factor = int(factor)
        super().__init__(shape, (shape[0] // factor, shape[1] // factor))

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.unsqueeze(1), self.factor).squeeze(1)

    def _upsample(self, y: torch.Tensor) -> torch.Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._upsample(y) / self.factor**2

    def pinv(self, y: torch.Tensor, tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        return self.adjoint(y).detach() * self.factor**2

    def projector(self, x: torch.Tensor) -> torch.Tensor:
        return self.pinv(self.forward(x))

    def solve_normal(self, rhs: torch.Tensor, rho: float, x0: torch.Tensor | None = None,
                     tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        _check_rho(rho)
        self._check_in(rhs)
        with torch.no_grad():
            pb = self.projector(rhs)
            inv = 1.0 / (1.0 / self.factor**2 + rho)
            if rho == 0:
                return inv * pb
            return inv * pb + (rhs - pb) / rho

    def norm(self, *_, **__) -> float:
        return 1.0 / self.factor


class GaussianBlur(LinearOperator):
    """Circular convolution with a periodic, normalised Gaussian kernel k (std ``sigma``
    pixels): A x = F⁻¹(H ⊙ F x), H = F k real and symmetric, so Aᵀ = A.

    Frequencies with |H(f)| < threshold·max|H| count as zero, which makes the pseudo-inverse
    well defined and P an exact projector:  A⁺ y = F⁻¹(H⁻¹·1[|H| ≥ t] ⊙ F y),
    P x = F⁻¹(1[|H| ≥ t] ⊙ F x),  (AᵀA + ρI)⁻¹ b = F⁻¹(F b / (H² + ρ))  (ρ = 0: A⁺A⁺ᵀ b).
    """

    family = "blur"

    def __init__(self, image_size: int | tuple[int, int] = 128, sigma: float = 2.0,
                 threshold: float = 1e-3):
        shape = _image_shape(image_size, "GaussianBlur")
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise OperatorInputError(f"GaussianBlur: sigma must be > 0, got {sigma!r}")
        if not 0 <= threshold < 1:
            raise OperatorInputError(f"GaussianBlur: threshold must be in [0, 1), "
                                     f"got {threshold!r}")
        super().__init__(shape, shape)
        self.sigma, self.threshold = float(sigma), float(threshold)
        h, w = shape
        dy = np.minimum(np.arange(h), h - np.arange(h)).astype(np.float64)
        dx = np.minimum(np.arange(w), w - np.arange(w)).astype(np.float64)
        kernel = np.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * self.sigma**2))
        kernel /= kernel.sum()
        self.kernel = torch.from_numpy(kernel)
        spectrum = np.fft.rfft2(kernel).real  # the kernel is even, so its spectrum is real
        keep = np.abs(spectrum) >= self.threshold * np.abs(spectrum).max()
        self.spectrum = torch.from_numpy(spectrum)
        self.keep = torch.from_numpy(keep)
        self._h = _DeviceCache(self.spectrum)
        self._keep = _DeviceCache(self.keep.double())
        self._hinv = _DeviceCache(torch.from_numpy(np.where(keep, 1.0 / np.where(keep, spectrum,
                                                                                1.0), 0.0)))

    def _filter(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft2(x)
        return torch.fft.irfft2(spec * gain, s=self.in_shape)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._filter(x, self._h.like(x))

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._filter(y, self._h.like(y))

    def pinv(self, y: torch.Tensor, tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        self._check_out(y)
        return self._filter(y.detach(), self._hinv.like(y))

    def projector(self, x: torch.Tensor) -> torch.Tensor:
        self._check_in(x)
        return self._filter(x.detach(), self._keep.like(x))

    def solve_normal(self, rhs: torch.Tensor, rho: float, x0: torch.Tensor | None = None,
                     tol: float = 1e-6, maxiter: int = 200) -> torch.Tensor:
        _check_rho(rho)
        self._check_in(rhs)
        h = self._h.like(rhs)
        if rho == 0:
            gain = self._hinv.like(rhs) ** 2
        else:
            gain = 1.0 / (h * h + rho)
        return self._filter(rhs.detach(), gain)

    def norm(self, *_, **__) -> float:
        return float(self.spectrum.abs().max())


def _check_rho(rho: float) -> None:
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho >= 0):
        raise OperatorInputError(f"solve_normal needs a finite rho >= 0, got {rho!r}")


__all__ = ["GaussianBlur", "Identity", "Inpainting", "SuperResolution"]
