"""Errors meant for people: each names the file, field or argument at fault and what to do."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class StedgeError(Exception):
    """Base class for every error stedge raises on purpose (bad input, failed check)."""

    exit_code = 2


class ModelNotFoundError(StedgeError, FileNotFoundError):
    """A model reference resolved nowhere."""


class InvalidModelError(StedgeError, ValueError):
    """A model or artifact directory is incomplete or malformed."""


class InvalidInputError(StedgeError, ValueError):
    """A bad argument or input text (not valid Unicode, a limit below 1, ...)."""


class CheckFailedError(StedgeError):
    """A verification or quality gate failed (for example `--max-drop`)."""

    exit_code = 1


class MissingDependency(StedgeError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        what = f" for {purpose}" if purpose else ""
        super().__init__(f"'{package}' is needed{what} but is not installed: pip install 'stedge[{extra}]'")


def require(module: str, extra: str, purpose: str = ""):
    """Import an optional module or raise MissingDependency naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on environment
        raise MissingDependency(module.split(".")[0], extra, purpose) from e


@contextmanager
def runtime_input_errors() -> Iterator[None]:
    """Inside: stedge_runtime's InputError (a bad argument) comes out as InvalidInputError, so stedge's own
    API raises StedgeError subclasses where it calls into the runtime (quantization, search, similarity)."""
    from stedge_runtime.errors import InputError

    try:
        yield
    except InputError as e:
        raise InvalidInputError(str(e)) from None
