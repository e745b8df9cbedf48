"""ctflow: CT reconstruction with exact projection operators and flow-matching priors."""

from .api import Reconstruction, load_prior, reconstruct
from .simulate import simulate

__version__ = "0.1.0"

__all__ = ["Reconstruction", "__version__", "load_prior", "reconstruct", "simulate"]
