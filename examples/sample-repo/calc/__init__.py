"""A tiny calculator package: the sample repository Cogo's codeBuildTest walkthrough fixes."""

from calc.ops import add, mul

__all__ = ["add", "mul"]
