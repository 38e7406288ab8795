"""User-facing errors: one readable message that names the fix, shown without a traceback."""


class FedspineError(Exception):
    """Base class for every error the CLI reports as a plain message (exit code 2)."""


class ConfigError(FedspineError):
    """A config value is missing, of the wrong type, or out of range."""


class DataError(FedspineError):
    """A dataset cannot be read or is unusable (missing file/column, empty, one class...)."""


class ModelError(FedspineError):
    """A model cannot be loaded or its architecture is not supported."""
