"""quantgate: quantize trained models for CPU serving, promote only what passes the gates."""

__version__ = "0.1.0"
