"""The `stedge` command line. Each stage keeps its commands in its own `cli.py` and registers them here."""
from __future__ import annotations

import importlib
import sys

import typer

from .errors import StedgeError

app = typer.Typer(
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
    "stedge.models.cli",      # embed, similarity, rank, info
    "stedge.training.cli",    # train, eval
    "stedge.compress.cli",    # lora merge, distill, pca
    "stedge.export.cli",      # export
    "stedge.bench.cli",         # bench
]

for _name in STAGES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as _e:  # a stage not installed in this checkout
        if _e.name != _name and not _name.startswith(str(_e.name)):
            raise
        continue
    _mod.register(app)


def main() -> None:
    """Entry point: run the app, turning StedgeError into a one-line message and its exit code."""
    try:
        app()
    except StedgeError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
