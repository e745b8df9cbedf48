"""The C-ΠGFM sampling loop reads nothing back to the host when it runs on a GPU.

Every tensor → Python conversion (``float(t)``, ``bool(t)``, ``t.item()``) dispatches
``aten._local_scalar_dense``; on a GPU each one waits for the device's queue to drain.  On
the CPU the loop takes its GPU route when ``guidance.host_reads_are_free`` says reads are not
free (patched here), and the number of such reads must then not grow with the number of
steps: what is read happens before and after the loop.  With a GPU the same run is checked
by CUDA's own sync detector (``torch.cuda.set_sync_debug_mode``)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ctflow
from ctflow.operators import ParallelBeam2D
from ctflow.priors.gaussian import GaussianPrior
from ctflow.solvers import guidance

pytestmark = pytest.mark.usefixtures("one_thread")

N = 16
PHOTONS = 1e4


class HostReads(TorchDispatchMode):
    """Counts the tensor → Python scalar reads made while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def problem():
    """A 16² Gaussian prior and a 12-view scan at 1e4 photons (weights vary ~300×)."""
    yy, xx = torch.meshgrid(torch.arange(N) - N / 2 + 0.5, torch.arange(N) - N / 2 + 0.5,
                            indexing="ij")
    mean = torch.where((yy**2 + xx**2).sqrt() < 0.45 * N, 0.3, 0.0).double()
    prior = GaussianPrior(mean, torch.full((N, N), 0.03**2, dtype=torch.float64))
    op = ParallelBeam2D(image_size=N, views=12)
    x = prior.sample_data(2, seed=1).float()
    y = ctflow.simulate(x, op, photons=PHOTONS, seed=0)
    return prior, op, y


def run(problem, nfe: int, **options) -> tuple[torch.Tensor, int]:
    prior, op, y = problem
    with HostReads() as reads:
        out = ctflow.reconstruct(y, op, method="conjugate", prior=prior, nfe=nfe,
                                 consistency="off", **options)
    return out.image, reads.count


@pytest.mark.parametrize("options", [{"photons": PHOTONS}, {"noise_std": 0.01}, {}],
                         ids=["photon-weights", "white-noise", "noiseless"])
def test_gpu_route_reads_nothing_per_step(problem, options, monkeypatch):
    cpu_image, cpu_reads = run(problem, 6, **options)
    monkeypatch.setattr(guidance, "host_reads_are_free", lambda device: False)
    image_3, reads_3 = run(problem, 3, **options)
    image_6, reads_6 = run(problem, 6, **options)
    assert reads_3 == reads_6  # three more steps, not one more read
    # the GPU route's masked CG iterations give the CPU route's result
    assert torch.allclose(image_6, cpu_image, rtol=0, atol=1e-5)
    if "photons" in options:  # the CPU route stops CG early: it reads every iteration
        assert cpu_reads > reads_6 + 3 * 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_loop_does_not_synchronise(monkeypatch):
    """The default prior at 64² on a 60-view scan at 1e4 photons, on the GPU: from the first
    network call to the end of the loop CUDA's sync detector raises on any host read."""
    from ctflow.solvers import conjugate

    prior = ctflow.load_prior("default").to("cuda")
    op = ParallelBeam2D(image_size=64, views=60)
    x = torch.zeros(1, 1, 64, 64)
    x[..., 16:48, 16:48] = 0.02
    y = ctflow.simulate(x, op, photons=PHOTONS, seed=0).cuda()
    kwargs = {"method": "conjugate", "prior": prior, "nfe": 3, "photons": PHOTONS,
              "consistency": "off"}
    reference = ctflow.reconstruct(y, op, **kwargs).image  # warm-up: factors on the device
    velocity, records = prior.velocity, conjugate._step_records

    def watched_velocity(x, t):
        torch.cuda.set_sync_debug_mode("error")
        return velocity(x, t)

    def records_after_the_loop(grid, stats):
        torch.cuda.set_sync_debug_mode("default")
        return records(grid, stats)

    monkeypatch.setattr(prior, "velocity", watched_velocity)
    monkeypatch.setattr(conjugate, "_step_records", records_after_the_loop)
    try:
        image = ctflow.reconstruct(y, op, **kwargs).image
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert float((image - reference).norm() / reference.norm()) < 1e-4  # GPU kernels may
    # differ in the last bits from run to run
