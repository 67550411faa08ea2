"""The command line: parse the arguments, call ONE workflow, draw its result (Rich lives here only)."""

from goodfit_cli.cli.app import app, main

__all__ = ["app", "main"]
