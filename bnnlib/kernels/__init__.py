"""Packed XNOR-popcount kernels (placeholder, filled by the kernels issue)."""
