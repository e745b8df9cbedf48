"""ctflow.operators: linear maps on batched image tensors (torch autograd), CT geometry and
ASTRA backends.  This layer imports nothing from the rest of ctflow."""

from .base import (
    AdjointOperator,
    ComposedOperator,
    LinearOperator,
    ScaledOperator,
    check_tensor,
    dot_test,
)
from .errors import BackendUnavailableError, GeometryError, OperatorInputError

__all__ = [
    "AdjointOperator",
    "BackendUnavailableError",
    "ComposedOperator",
    "GeometryError",
    "LinearOperator",
    "OperatorInputError",
    "ScaledOperator",
    "check_tensor",
    "dot_test",
]
