"""Errors a user can cause. The CLI prints their one-line message and exits with code 2."""


class CafeBenchError(Exception):
    """Base of user-facing errors: the message is one line and says what to do."""


class UnknownNameError(CafeBenchError, KeyError):
    """A suite, method, layer, protocol or baseline that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ChecksumError(CafeBenchError):
    """A shipped or user file whose SHA-256 does not match its manifest."""


class RunConfigError(CafeBenchError):
    """An output directory that holds an incompatible run, or a bad run option."""


class SuiteError(CafeBenchError):
    """A suite manifest that lacks a field or has a field of the wrong type."""
