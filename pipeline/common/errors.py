"""User-facing errors.

A `GanpipeError` is raised for anything the user can fix (bad params, missing files, unreachable
services). Its message is one paragraph naming the cause and the fix; the CLI and the stage runner
print it to stderr and exit non-zero without a traceback.
"""


class GanpipeError(Exception):
    """An error the user can fix; the message says what went wrong and what to do."""

    exit_code = 2


class TrainingDiverged(GanpipeError):
    """A loss or a parameter became NaN/Inf during training."""

    exit_code = 3


class Interrupted(GanpipeError):
    """The user stopped the command (Ctrl-C) or the system asked it to stop (SIGTERM)."""

    exit_code = 130
