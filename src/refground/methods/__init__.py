"""Grounding methods, registered by name; see :data:`refground.methods.base.METHODS`."""

from refground.methods.base import METHODS, DatasetInfo, Method, build_method

__all__ = ["METHODS", "DatasetInfo", "Method", "build_method"]
