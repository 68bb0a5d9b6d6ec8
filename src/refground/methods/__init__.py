"""Grounding methods, registered by name; see :data:`refground.methods.base.METHODS`."""

from refground.methods.base import (
    METHODS,
    Method,
    build_method,
    method_type,
    trainable_methods,
)

__all__ = ["METHODS", "Method", "build_method", "method_type", "trainable_methods"]
