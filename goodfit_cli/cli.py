"""The `goodfit` command line: Typer wiring only. Rich output lives here and nowhere else."""

from __future__ import annotations

import typer

from goodfit_cli import __version__

app = typer.Typer(
    name="goodfit",
    help="Fine-tune a converged model on new data without breaking what it already does.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"goodfit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Fine-tune a converged model on new data without breaking what it already does."""


def main() -> None:
    app()
