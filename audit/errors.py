"""Exceptions a user can act on. The CLI prints their message as one line and exits 2."""

from __future__ import annotations


class KansaError(Exception):
    """Bad input: the message says what is wrong and where, without a traceback."""


class ConfigError(KansaError):
    """A config file that does not parse or does not fit the schema."""


class DataError(KansaError):
    """A data source that is missing, unreadable or inconsistent with its declaration."""


class ModelError(KansaError):
    """A model file or factory that cannot be loaded safely or does not fit the data."""


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line; for multi-line messages (TorchScript's tracebacks) the last line says what failed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
