"""The error family. Every message names the bad value and the way out; the CLI prints it without a
traceback. A rejected model is not an error: it is a `Decision` (see gates.py)."""


class QuantgateError(Exception):
    """Base of every error quantgate raises on purpose."""


class ConfigError(QuantgateError):
    """A setting, flag or flow parameter has a value that cannot work."""


class NothingToQuantize(ConfigError):
    """The model's graph has no operator the backend can quantize (a tree ensemble, a linear model in
    ONNX-ML ops): a run ends NotPromoted with reason nothing-to-quantize, not a crash."""


class CandidateUnavailable(QuantgateError):
    """A candidate this machine cannot build or run (its engine's package is missing, the CPU lacks the
    feature): skipped with the reason in the candidate table, never a failed run."""


class StorageError(QuantgateError):
    """Object storage could not be reached or refused a request."""


class StorageUnreachableError(StorageError):
    pass


class StorageAuthError(StorageError):
    pass


class NotFoundError(StorageError):
    """A model version, bucket or object that should exist does not."""


class ConflictError(StorageError):
    """A create-only write found the object already there (a concurrent or repeated run)."""


class IntegrityError(QuantgateError):
    """A file's checksum does not match what its manifest or registration says."""


class SizeExceededError(IntegrityError):
    """A stored object is larger than the size its registration or manifest declares: the download stops
    at the declared size, so a lying record cannot fill the disk or pass a space check it understated."""


class InvalidModelError(QuantgateError):
    """The registered model folder cannot be loaded or exported safely."""


class HeldoutValidationError(QuantgateError):
    """The held-out set failed its data checks; the run stops before any model work."""

    def __init__(self, message: str, failures: list[str] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class ExportError(QuantgateError):
    """Export to ONNX failed, or the exported graph does not reproduce the PyTorch outputs."""


class SearchError(QuantgateError):
    """No candidate recipe could be built and scored: nothing to decide on."""


class DiskFullError(QuantgateError):
    """The local disk of the work folder or cache is full: not a storage outage, never retried."""
