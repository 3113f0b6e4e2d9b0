"""Errors that Sounding reports to the user instead of a traceback."""


class BadInput(Exception):
    """Input the user can fix (params, data files, checkpoints, CLI arguments).

    The CLI prints the message and exits with code 2, before any expensive work starts.
    """


class DataIntegrityError(BadInput):
    """A prepared file does not match the sha256 recorded in its manifest."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""
