"""kdbench: a benchmarking suite for logit knowledge distillation."""

__version__ = "0.1.0"

from kdbench.errors import KdbenchError

__all__ = ["KdbenchError", "__version__"]
