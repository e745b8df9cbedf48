"""Identity, Inpainting, SuperResolution, GaussianBlur and the LinearOperator algebra:
exact adjoints, autograd = adjoint, batching, closed-form pinv / projector / solve_normal."""

from __future__ import annotations

import pytest
import torch

from ctflow.operators import (
    GaussianBlur,
    Identity,
    Inpainting,
    LinearOperator,
    OperatorInputError,
    SuperResolution,
    dot_test,
    idempotence_error,
)
from ctflow.operators.krylov import cg

N = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend on 2 shared cores
    yield
    torch.set_num_threads(threads)


def _mask() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.rand(N, N, generator=gen) > 0.3


def _ops() -> dict[str, LinearOperator]:
    return {
        "identity": Identity(N),
        "inpainting": Inpainting(_mask()),
        "sr2": SuperResolution(N, 2),
        "sr4": SuperResolution(N, 4),
        "blur": GaussianBlur(N, sigma=1.5),
    }


def _smooth(shape, gen):
    """A smooth test vector: low-pass filtered noise."""
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    k = torch.fft.rfftfreq(shape[-1])[None, :] ** 2 + torch.fft.fftfreq(shape[-2])[:, None] ** 2
    return torch.fft.irfft2(torch.fft.rfft2(z) * torch.exp(-200 * k), s=shape[-2:])


@pytest.mark.parametrize("name", list(_ops()))
def test_adjoint_random_and_smooth(name):
    op = _ops()[name]
    assert dot_test(op, seed=1) < 1e-12
    assert dot_test(op, seed=2, make=_smooth) < 1e-12
    assert dot_test(op, seed=3, dtype=torch.float32) < 1e-5


@pytest.mark.parametrize("name", list(_ops()))
def test_autograd_gradient_is_adjoint(name):
    op = _ops()[name]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, *op.in_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, *op.out_shape, generator=gen, dtype=torch.float64)
    loss = 0.5 * ((op(x) - w) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    explicit = op.T(op(x.detach()) - w)
    assert torch.allclose(grad, explicit, atol=1e-12)


@pytest.mark.parametrize("name", list(_ops()))
def test_batch_equals_per_image(name):
    op = _ops()[name]
    x = torch.randn(3, 2, *op.in_shape, generator=torch.Generator().manual_seed(5))
    batch = op(x)
    assert batch.shape == (3, 2, *op.out_shape)
    for b in range(3):
        for c in range(2):
            assert torch.allclose(batch[b, c], op(x[b:b + 1, c:c + 1])[0, 0], atol=1e-6)


@pytest.mark.parametrize("name", list(_ops()))
def test_projector_pinv_solve_normal(name):
    op = _ops()[name]
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 1, *op.in_shape, generator=gen, dtype=torch.float64)
    px = op.projector(x)
    # P is an orthogonal projector: idempotent, symmetric, and A P = A (on the kept space)
    assert idempotence_error(op, x) < 1e-12
    z = torch.randn_like(x)
    assert abs(float((op.projector(z) * x).sum() - (z * px).sum())) < 1e-10
    assert torch.allclose(op.pinv(op(x)), px, atol=1e-10)
    # solve_normal agrees with CG on (AᵀA + ρI) x = b
    for rho in (0.05, 1.0):
        got = op.solve_normal(x, rho)
        ref = cg(lambda v, r=rho: op.T(op(v)) + r * v, x, tol=1e-12, maxiter=500)
        assert torch.allclose(got, ref, atol=1e-8), rho
    # rho = 0: the minimum-norm solution A⁺A⁺ᵀ b, whose normal residual is P b
    sol = op.solve_normal(x, 0.0)
    assert torch.allclose(op.T(op(sol)), px, atol=1e-8)


def test_pinv_exact_for_masks_and_pooling():
    m = _mask()
    x = torch.randn(1, 1, N, N, dtype=torch.float64)
    assert torch.equal(Inpainting(m).pinv(Inpainting(m)(x)), x * m)
    sr = SuperResolution(N, 4)
    blocks = x.reshape(N // 4, 4, N // 4, 4).mean(dim=(1, 3))
    assert torch.allclose(sr(x)[0, 0], blocks)
    up = sr.pinv(sr(x))
    assert torch.allclose(up[0, 0, :4, :4], blocks[0, 0].expand(4, 4))
    assert abs(sr.norm() - 0.25) < 1e-12


def test_blur_truncation_threshold_defines_projector():
    op = GaussianBlur(N, sigma=2.0, threshold=1e-2)
    kept = int(op.keep.sum())
    assert 0 < kept < op.keep.numel()
    # P keeps exactly the frequencies with |H| >= threshold · max|H|: trace(P) = kept modes
    eye = torch.zeros(1, 1, N, N, dtype=torch.float64)
    eye[0, 0, 0, 0] = 1.0
    trace = float(op.projector(eye)[0, 0, 0, 0]) * N * N  # circulant: trace = N² · P[0, 0]
    full = int(op.keep[:, 1:N // 2].sum()) * 2 + int(op.keep[:, 0].sum()) + \
        int(op.keep[:, N // 2].sum())
    assert abs(trace - full) < 1e-8
    # blur of a delta sums to one (normalised kernel) and equals the kernel
    assert abs(float(op(eye).sum()) - 1.0) < 1e-12
    assert torch.allclose(op(eye)[0, 0], op.kernel)


def test_power_iteration_norm():
    op = GaussianBlur(N, sigma=1.0)
    assert abs(LinearOperator.norm(op, iters=100) - op.norm()) < 1e-3
    assert abs(LinearOperator.norm(SuperResolution(N, 2), iters=30) - 0.5) < 1e-6
    assert abs((3.0 * Identity(N)).norm() - 3.0) < 1e-12


def test_composition_and_scaling():
    blur, sr = GaussianBlur(N, sigma=1.0), SuperResolution(N, 2)
    op = sr @ blur
    assert op.in_shape == (N, N) and op.out_shape == (N // 2, N // 2)
    assert dot_test(op) < 1e-12
    x = torch.randn(2, 1, N, N, dtype=torch.float64)
    assert torch.allclose(op(x), sr(blur(x)))
    scaled = 2.5 * blur
    assert torch.allclose(scaled(x), 2.5 * blur(x))
    assert torch.allclose(scaled.T(x), 2.5 * blur.T(x))
    assert torch.allclose(scaled.solve_normal(x, 0.5),
                          cg(lambda v: scaled.T(scaled(v)) + 0.5 * v, x, tol=1e-12), atol=1e-8)
    assert op.T.T is op
    with pytest.raises(OperatorInputError):
        blur @ sr


def test_bad_input_is_a_typed_error():
    op = GaussianBlur(N)
    with pytest.raises(OperatorInputError, match="shape"):
        op(torch.zeros(1, 1, N, N + 1))
    with pytest.raises(OperatorInputError, match="float"):
        op(torch.zeros(1, 1, N, N, dtype=torch.int64))
    with pytest.raises(OperatorInputError, match="Tensor"):
        op([[0.0]])
    with pytest.raises(OperatorInputError, match="meta"):
        op(torch.zeros(1, 1, N, N, device="meta"))
    with pytest.raises(OperatorInputError, match="different devices"):
        LinearOperator.solve_normal(op, torch.zeros(1, 1, N, N), 0.1,
                                    x0=torch.zeros(1, 1, N, N, device="meta"))
    with pytest.raises(OperatorInputError):
        op.solve_normal(torch.zeros(1, 1, N, N), -1.0)
    with pytest.raises(OperatorInputError, match="divisible"):
        SuperResolution(30, 4)
    with pytest.raises(OperatorInputError):
        GaussianBlur(N, sigma=0.0)
    with pytest.raises(OperatorInputError):
        Inpainting(torch.zeros(4, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError):  # typed errors are ValueErrors too
        Identity(-3)
