"""quantgate: quantize trained models for CPU serving, promote only what passes the gates.

Importing the package sets nothing; entry points call quantgate.process.configure_process()."""

__version__ = "0.1.0"
