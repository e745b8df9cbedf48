"""The typed ``info`` records the solvers return (``SolverOutput.info`` / ``res.info``).

One TypedDict per method family; keys a run may leave out (e.g. ``peak_memory_bytes``
only on CUDA) come from total=False bases.  ``ctflow.reconstruct`` adds its own keys on top
(``masked_views``, ``masked_detectors``, ``warnings``, ``notes``, ``noise_std_estimated``,
``samples``, ``network_calls``).  Torch-free.
"""

from __future__ import annotations

from typing import Any, TypedDict


class _CudaMemory(TypedDict, total=False):
    peak_memory_bytes: int  # CUDA runs only


class _BaselineExtras(TypedDict, total=False):
    lipschitz: float  # flowdps, flower, pnpflow
    samples: int  # pnpflow
    forwards_per_image: int  # pnpflow


class FbpInfo(TypedDict):
    filter: str


class KrylovInfo(TypedDict):
    """cgls and sirt: iterations run and ‖y − A x‖ per iterate (first item)."""

    iters: int
    residual_norms: list[float]


class TvInfo(TypedDict):
    iters: int
    lam: float
    objective: list[float]
    op_norm: float


class MbirInfo(TypedDict):
    beta: list[float]
    delta: float
    evaluations: list[int]
    iters: int
    noise_level: float
    objective: list[float]


class GuidedInfo(TypedDict):
    """pigfm, otode, conjugate, conjugate-diffusion: time grid, resolved parameters and a
    record per step."""

    grid: list[float]
    noise_std_model: float
    params: dict[str, Any]
    steps: list[dict[str, float]]
    weighted: bool


class MsflowInfo(_CudaMemory):
    defects_rms: list[float]
    euler_steps: int
    history: list[dict[str, float]]
    jf_acceptance: Any
    options: dict[str, Any]
    sigma: float
    steps: Any
    z0: Any


class DflowInfo(_CudaMemory):
    euler_steps: int
    evaluations: int
    history: list[dict[str, float]]
    options: dict[str, Any]
    sigma: float


class BaselineInfo(_BaselineExtras):
    """dps, flowdps, flower, pnpflow: steps, model-space noise std, resolved options."""

    steps: int
    sigma_model: float
    options: dict[str, Any]
    task_family: str | None
