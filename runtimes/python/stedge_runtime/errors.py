"""Errors meant for people: each names the file, field, argument or device at fault and what to do.

When the main ``stedge`` package is installed its ``StedgeError`` is the base class, so the
``stedge`` CLI prints runtime errors as one line like its own (``stedge.errors`` imports nothing heavy).
"""
from __future__ import annotations

try:  # optional: share the base class with the stedge package
    from stedge.errors import StedgeError as _Base
except ImportError:  # pragma: no cover - depends on the environment
    class _Base(Exception):  # type: ignore[no-redef]
        exit_code = 2


class RuntimeStedgeError(_Base):
    """Base class of every error stedge_runtime raises on purpose."""

    exit_code = 2


class ArtifactError(RuntimeStedgeError, ValueError):
    """The artifact folder is incomplete, malformed, too new, or a file fails its sha256 check."""


class DeviceError(RuntimeStedgeError):
    """The requested device is not available with the installed engines."""


class MissingEngine(RuntimeStedgeError, ImportError):
    """The engine a variant needs (onnxruntime or openvino) is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"'{package}' is needed to run this variant but is not installed: pip install 'stedge-runtime[{extra}]'")


class InputError(RuntimeStedgeError, ValueError):
    """A bad argument: unknown prompt name, batch_size < 1, a pair that is not two strings' worth..."""
