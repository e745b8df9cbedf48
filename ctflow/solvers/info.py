"""The typed ``info`` records the solvers return (``SolverOutput.info`` / ``res.info``).

One TypedDict per method family; keys a run may leave out (e.g. ``peak_memory_bytes``
only on CUDA) come from total=False bases.  ``ctflow.reconstruct`` adds its own keys on top,
declared by :class:`ReconstructInfo` (no key in both).  ``tests/test_solver_info.py`` runs
every method and checks the keys it returns against these declarations.  Torch-free.
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
    precondition: str
    step_ratio: float
    relaxation: float


class MbirInfo(TypedDict):
    beta: list[float]
    delta: float
    evaluations: list[int]
    iters: int
    noise_level: float
    objective: list[float]
    restarts: list[int]
    solver: str
    subsets: int


class GuidedInfo(TypedDict):
    """pigfm, otode, conjugate, conjugate-diffusion: time grid, resolved parameters and a
    record per step."""

    grid: list[float]
    noise_std_model: float
    params: dict[str, Any]
    steps: list[dict[str, float]]
    weighted: bool


class MsflowInfo(_CudaMemory):
    """msflow: per-iteration history (objective, data, reg, match, mu, nfe: one list each),
    step counts, the options used and the first shooting state ``z0`` (a tensor)."""

    defects_rms: list[float]
    euler_steps: int
    history: dict[str, list[float]]
    jf_acceptance: float
    options: dict[str, Any]
    sigma: float
    steps: dict[str, int]
    z0: Any


class DflowInfo(_CudaMemory):
    """dflow: per-evaluation history (objective, data, reg, nfe: one list each)."""

    euler_steps: int
    evaluations: int
    history: dict[str, list[float]]
    options: dict[str, Any]
    sigma: float


class BaselineInfo(_BaselineExtras):
    """dps, flowdps, flower, pnpflow: steps, model-space noise std, resolved options."""

    steps: int
    sigma_model: float
    options: dict[str, Any]
    task_family: str | None


class ContextInfo(TypedDict):
    """The call's ``TaskContext`` (``ctflow.solvers.context``) as a dict."""

    family: str | None
    noisy: bool
    mask: str | None
    size: int


class _ReconstructExtras(TypedDict, total=False):
    masked_views: list[int]  # consistency screening of CT data
    masked_detectors: list[int]
    warnings: list[str]
    notes: list[str]  # noise level estimated from the data
    noise_std_estimated: float
    posterior_samples: int  # posterior_samples > 1
    network_calls: int


class ReconstructInfo(_ReconstructExtras):
    """What ``ctflow.reconstruct`` adds to a method's info."""

    context: ContextInfo
