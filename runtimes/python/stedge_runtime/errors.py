"""Errors meant for people: each names the file, field, argument or device at fault and what to do.

The runtime stands alone (it never imports ``stedge``); the ``stedge`` CLI maps these errors to its
own one-line messages and exit codes (``exit_code`` below: 2, bad input).
"""

from __future__ import annotations


class RuntimeStedgeError(Exception):
    """Base class of every error stedge_runtime raises on purpose."""

    exit_code = 2


class ArtifactError(RuntimeStedgeError, ValueError):
    """The artifact folder is incomplete, malformed, too new, or a file fails its sha256 check."""


class DeviceError(RuntimeStedgeError):
    """The requested device is not available with the installed engines."""


class MissingEngine(RuntimeStedgeError, ImportError):
    """The engine a variant needs (onnxruntime or openvino) is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"'{package}' is needed to run this variant but is not installed: pip install 'stedge-runtime[{extra}]'"
        )


class InputError(RuntimeStedgeError, ValueError):
    """A bad argument: unknown prompt name, batch_size < 1, a pair that is not two strings' worth..."""
