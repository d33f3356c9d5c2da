"""The `stedge` command line. Each stage keeps its commands in its own `cli.py` and registers them here.

Exit codes (the contract scripts rely on, also in the README):

* 0 success;
* 1 a check failed (``--max-drop``, a verification gate): the input was fine, the result was not good enough;
* 2 bad input or environment: a wrong argument, a missing/malformed/unreadable file, an output that exists,
  cannot be written or ran out of space. One line on stderr names the file or argument and what to do;
* 3 an internal error, a bug in stedge: one line says so and asks for a report; the traceback is shown
  with ``--debug`` or ``STEDGE_DEBUG=1``;
* 130 interrupted (Ctrl-C); 143 terminated (SIGTERM: ``kill``, ``timeout``, a container or CI job stopping). Both
  unwind the same way, so nothing half-written is left.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
import traceback

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions

from .errors import StedgeError


class _Group(TyperGroup):
    """The root group: the libraries underneath draw no progress bars of their own (transformers 5 draws one
    per weight load and save), so ``--json`` output is the JSON document alone and an error is one line;
    stedge's own rich bars show the progress of long steps."""

    def resolve_command(self, ctx: typer.Context, args: list[str]):
        from .progress import library_progress_off

        ctx.with_resource(library_progress_off())
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_Group,
    name="stedge",
    help=(
        "Sentence-embedding models and rerankers from fine-tuning to the edge.\n\n"
        "train -> shrink (lora merge, distill, pca) -> export + verify -> run (embed, rank) -> bench"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Stage command modules, each with `register(app: typer.Typer) -> None`.
STAGES = [
    "stedge.models.cli",  # embed, similarity, rank, info
    "stedge.training.cli",  # train, eval
    "stedge.compress.cli",  # lora merge, distill, pca
    "stedge.export.cli",  # export
    "stedge.tune.cli",  # tune
    "stedge.corpus.cli",  # embed-corpus
    "stedge.bench.cli",  # bench
]

for _name in STAGES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as _e:  # a stage not installed in this checkout
        if _e.name != _name and not _name.startswith(str(_e.name)):
            raise
        continue
    _mod.register(app)


EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM killed


class Terminated(KeyboardInterrupt):
    """Raised on the main thread by SIGTERM (see ``run``): it unwinds like Ctrl-C, so an output being written is
    removed (``stedge.io.atomic_dir``) instead of left for the next run to clean, then exits 143."""


_SIGTERM_SEEN: list[int] = []  # typer turns any KeyboardInterrupt into its return code 130: this tells them apart


def _terminated(signum: int, frame: object) -> None:
    _SIGTERM_SEEN.append(signum)
    raise Terminated()


def _stopped() -> None:
    """Exit as interrupted (130) or, after SIGTERM, terminated (143), with one line saying which."""
    if _SIGTERM_SEEN:
        typer.secho("terminated", fg="red", err=True)
        sys.exit(EXIT_TERMINATED)
    typer.secho("interrupted", fg="red", err=True)
    sys.exit(EXIT_INTERRUPTED)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an internal error (also STEDGE_DEBUG=1)."),
) -> None:
    if debug:
        os.environ["STEDGE_DEBUG"] = "1"


def _debug() -> bool:
    return os.environ.get("STEDGE_DEBUG", "").lower() not in ("", "0", "false", "no")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _environment_error(e: OSError) -> str | None:
    """A message for an OSError that is about the user's files or machine (not a bug), else None."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{f' writing {e.filename}' if e.filename else ''}: free space and run again"
    if e.filename is not None and e.errno in (
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EEXIST,
        errno.ENOTEMPTY,
        errno.ELOOP,
    ):
        return f"{e.filename}: {e.strerror}"
    return None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Warnings meant for the user (RuntimeWarning/UserWarning from stedge and its runtime) as one line."""
    typer.secho(f"warning: {_one_line(str(message))}", fg="yellow", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and map every outcome to the exit-code contract (module docstring)."""
    import warnings

    from stedge_runtime.errors import RuntimeStedgeError

    if not _debug():
        warnings.showwarning = _show_warning

    try:
        rc = app(args=argv, standalone_mode=False)
    except (StedgeError, RuntimeStedgeError) as e:  # the runtime's errors share the contract (exit_code 2)
        if _debug():
            traceback.print_exc()
        _fail(str(e), getattr(e, "exit_code", EXIT_BAD_INPUT))
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except click_exceptions.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _stopped()
    except BrokenPipeError:  # `stedge embed ... | head`
        sys.stderr.close()
        sys.exit(0)
    except OSError as e:
        msg = _environment_error(e)
        if msg is None:
            _internal(e)
        if _debug():
            traceback.print_exc()
        _fail(msg, EXIT_BAD_INPUT)
    except Exception as e:  # noqa: BLE001 - the one place that turns a bug into exit 3
        _internal(e)
    # without standalone mode typer returns the code of `raise typer.Exit(n)` and of Ctrl-C (130)
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        if rc == EXIT_INTERRUPTED:
            _stopped()
        sys.exit(rc)


def _internal(e: BaseException) -> None:
    if _debug():
        traceback.print_exc()
        hint = "the traceback is above"
    else:
        hint = "run again with --debug (or STEDGE_DEBUG=1) for the traceback"
    _fail(
        f"internal error (a bug in stedge), please report it with the command you ran "
        f"({type(e).__name__}: {_one_line(e)[:300]}); {hint}",
        EXIT_INTERNAL,
    )


def run() -> None:
    """The `stedge` command: `main` with SIGTERM unwinding like Ctrl-C (``Terminated``), then an interpreter
    teardown that neither can break.

    Once the command has finished (its output complete and in place, or its error reported), nothing is left to
    interrupt; tearing down torch, onnxruntime and OpenVINO still takes about a second, and a Ctrl-C landing
    there used to print a KeyboardInterrupt from an atexit hook or kill the process by SIGINT (exit -2), even
    occasionally crash a native library, after a successful export."""
    import faulthandler
    import signal

    with contextlib.suppress(RuntimeError, ValueError, OSError):  # stderr without a file descriptor
        faulthandler.enable()  # a crash inside a native library prints the Python stack (for a bug report)
    with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
        signal.signal(signal.SIGTERM, _terminated)  # by default SIGTERM kills at once, leaving a temporary output
    try:
        main()
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    run()
