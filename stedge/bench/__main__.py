"""`python -m stedge.bench SUITE_OR_PATH [--out DIR] [--threads N] [--quick] [--json]` (same as `stedge bench`)."""

from __future__ import annotations

import sys

import typer

from stedge.errors import StedgeError

from .cli import bench


def main() -> None:
    """Run the bench command as a stand-alone program; StedgeError becomes one line and its exit code."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(bench)
    try:
        app()
    except StedgeError as e:  # typer.run re-raises from the command in standalone mode
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
