"""Errors that reach users as one clear line and exit code 2 (see cli.py)."""


class FlashsearchError(Exception):
    """Bad user input: printed as `error: <message>` and the CLI exits with code 2.

    Messages say what is wrong, where, and how to fix it, on one line.
    """


class TrialFailed(Exception):
    """A candidate could not be evaluated (diverged loss, out of memory, ...); the trial is FAILED with `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TimeLimitExceeded(TrialFailed):
    """The evaluation ran out of its time budget: a transient verdict (a loaded machine), retried once."""
