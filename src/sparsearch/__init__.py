"""sparsearch: find, train and run sparse neural networks."""

from .errors import SparsearchError

__version__ = "0.1.0"
__all__ = ["SparsearchError", "__version__"]
