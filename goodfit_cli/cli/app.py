"""The `goodfit` command line: Typer wiring only. Rich output lives in cli/ and nowhere else.

base.py holds the apps, the exit-code mapping and shared helpers; fit.py the commands that
train (pretrain, finetune, wise, search, demo); inspection.py those that measure and inspect
(compare, eval, validate, optimizers, recipes, list, data); convert.py `convert`. Each command
calls one workflow.

Exit codes: 0 success, 2 user error (one line; `--debug` for the traceback), 3 a regression gate
failed, 4 training diverged (NaN/Inf loss; the last good state is kept), 130/143 interrupted by
SIGINT/SIGTERM (a resumable state was saved), 1 a bug.
"""

from __future__ import annotations

import os
import sys

from goodfit_cli.cli import convert, fit, inspection  # noqa: F401  (each module registers its commands)
from goodfit_cli.cli.base import app, data_app

__all__ = ["app", "data_app", "main"]


def main() -> None:
    """The console entry point. Under torchrun a rank leaves with os._exit once its output is
    flushed: the run has already left the process group, and interpreter teardown with the
    collective library's threads still alive can abort a finished run ("terminate called
    without an active exception")."""
    from goodfit_cli.core.timing import command_started

    command_started()  # the command's timings count its start-up (core/timing.py)
    try:
        app()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):  # never raises
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise


if __name__ == "__main__":
    main()
