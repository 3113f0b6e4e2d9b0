"""Errors that Sounding reports to the user instead of a traceback."""


class BadInput(Exception):
    """Input the user can fix (params, data files, checkpoints, CLI arguments).

    The CLI prints the message and exits with code 2, before any expensive work starts.
    """


class ServiceUnavailable(Exception):
    """A service Sounding runs on (the MLflow tracking server or database, the Optuna storage) did not
    answer. Nothing is wrong with the input: retry later. The CLI prints the message and exits with code
    69 (sysexits' EX_UNAVAILABLE), which schedulers and Prefect's retries can tell apart from bad input's 2.
    """

    EXIT_CODE = 69


class Incompatible(BadInput):
    """A pretrained network does not fit the target data (input shape, channels or classes)."""


class DataIntegrityError(BadInput):
    """A prepared file does not match the sha256 recorded in its manifest."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""
