"""Errors raised by an adapter and handled by the core and the CLI, kept apart so neither side imports the other."""


class TrackingUnavailable(RuntimeError):
    """The tracking store (an MLflow server or database) cannot be reached or fails when a stage starts or
    registers: nothing has been run or registered yet."""
