"""ASTRA's GPU backend (``astra-cuda``) against the exact ``matrix`` backend, on a CUDA device.

For parallel and fan beam at 64², 128² and 256² (60 views), on smooth random images x and
their sinograms y = A_mat x:

* forward agreement  ‖A_cuda x − A_mat x‖ / ‖A_mat x‖;
* adjoint agreement  ‖A_cudaᵀ y − A_matᵀ y‖ / ‖A_matᵀ y‖ (ASTRA's GPU back-projection is
  voxel-driven, not the transpose of its ray-driven forward projection);
* dot-product mismatch |⟨Ax, v⟩ − ⟨x, Aᵀv⟩| / (‖Ax‖‖v‖) on random and on smooth vectors;
* host↔device copies during three forward + adjoint calls (torch profiler memcpy events:
  'DtoH' must be 0 for linked data; the 'HtoD' ones are ASTRA's small per-call geometry
  uploads);
* fan beam: the ratio A_cudaᵀ y / A_matᵀ y of a flat image's sinogram, by radius.

    python3 scripts/check_gpu_backends.py > docs/gpu_backends.txt
"""

from __future__ import annotations

import platform
import sys

import torch


def smooth(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Gaussian-filtered white noise (a smooth test image / sinogram)."""
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    k = torch.fft.rfftfreq(shape[-1])[None, :] ** 2 + torch.fft.fftfreq(shape[-2])[:, None] ** 2
    return torch.fft.irfft2(torch.fft.rfft2(z) * torch.exp(-100 * k), s=shape[-2:])


def memcpy_counts(op, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            op(x)
            op.T(y)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    return sum("HtoD" in n for n in names), sum("DtoH" in n for n in names)


def main() -> int:
    if not torch.cuda.is_available():
        print("check_gpu_backends: error: needs a CUDA device", file=sys.stderr)
        return 2
    import astra

    from ctflow.operators import FanBeam2D, ParallelBeam2D
    from ctflow.operators.base import dot_test

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, astra "
          f"{astra.__version__}, python {platform.python_version()}\n")
    print("| beam | size | fwd vs matrix | adj vs matrix | dot (random) | dot (smooth) "
          "| matrix dot (smooth) | memcpy HtoD / DtoH in 3 calls |")
    print("|---|---|---|---|---|---|---|---|")
    for size in (64, 128, 256):
        for name, cls in (("parallel", ParallelBeam2D), ("fan", FanBeam2D)):
            ref = cls(size, 60, backend="matrix")
            gpu = cls(size, 60, backend="astra-cuda")
            x = smooth((4, 1, size, size), torch.Generator().manual_seed(0)).float().cuda()
            y = ref(x)
            fwd = float((gpu(x) - y).norm() / y.norm())
            adj = float((gpu.T(y) - ref.T(y)).norm() / ref.T(y).norm())
            dr = dot_test(gpu, device="cuda", dtype=torch.float32)
            ds = dot_test(gpu, device="cuda", dtype=torch.float32, make=smooth)
            dm = dot_test(ref, device="cuda", dtype=torch.float32, make=smooth)
            h2d, d2h = memcpy_counts(gpu, x, y)
            print(f"| {name} | {size} | {fwd:.2e} | {adj:.2e} | {dr:.2e} | {ds:.2e} | {dm:.1e} "
                  f"| {h2d} / {d2h} |")
    size = 128
    ref = FanBeam2D(size, 60, backend="matrix")
    gpu = FanBeam2D(size, 60, backend="astra-cuda")
    y = ref(torch.ones(1, 1, size, size, device="cuda"))
    a, b = gpu.T(y)[0, 0].cpu(), ref.T(y)[0, 0].cpu()
    ratio = a / b.clamp_min(1e-6 * float(b.max()))
    c = torch.arange(size) - (size - 1) / 2
    radius = (c[None] ** 2 + c[:, None] ** 2).sqrt()
    print(f"\nfan {size}², flat image: astra-cuda back-projection / matrix back-projection")
    for lo, hi in ((0, 16), (16, 32), (32, 48), (48, 64)):
        m = (radius >= lo) & (radius < hi)
        print(f"  radius {lo}–{hi} px: mean {float(ratio[m].mean()):.4f}, "
              f"std {float(ratio[m].std()):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
