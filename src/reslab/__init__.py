"""reslab: Deep Residual Learning (He et al., 2016) as fast, faithful, reproducible software."""

__version__ = "0.1.0"
