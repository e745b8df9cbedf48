"""ctflow.operators: linear maps on batched image tensors (torch autograd), CT geometry and
ASTRA backends.  This layer imports nothing from the rest of ctflow."""

from .base import (
    AdjointOperator,
    ComposedOperator,
    LinearOperator,
    ScaledOperator,
    check_same_device,
    check_tensor,
    dot_test,
    idempotence_error,
)
from .ct import CTOperator, FanBeam2D, ParallelBeam2D, make_ct_operator
from .errors import BackendUnavailableError, GeometryError, OperatorInputError
from .fbp import FILTERS, fbp
from .geometry import CTGeometry, make_geometry
from .simple import GaussianBlur, Identity, Inpainting, SuperResolution

__all__ = [
    "AdjointOperator",
    "BackendUnavailableError",
    "CTGeometry",
    "CTOperator",
    "ComposedOperator",
    "FILTERS",
    "FanBeam2D",
    "GaussianBlur",
    "GeometryError",
    "Identity",
    "Inpainting",
    "LinearOperator",
    "OperatorInputError",
    "ParallelBeam2D",
    "ScaledOperator",
    "SuperResolution",
    "check_same_device",
    "check_tensor",
    "dot_test",
    "fbp",
    "idempotence_error",
    "make_ct_operator",
    "make_geometry",
]
