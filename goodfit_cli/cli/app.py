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
    """The console entry point. A command that finished (any exit code) leaves through
    `leave`: interpreter teardown after torch, timm and torchvision are imported takes about a
    second of the command's wall time (docs/benchmarks.md), and nothing of the run is left to
    it. Under torchrun a rank leaves with os._exit once its output is flushed: the run has
    already left the process group, and interpreter teardown with the collective library's
    threads still alive can abort a finished run ("terminate called without an active
    exception")."""
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
        if e.code is None or isinstance(e.code, int):
            leave(code)
        raise


def leave(code: int) -> None:
    """End the process now with `code`, as the interpreter would but without its teardown
    (freeing every module and object one by one): the atexit handlers run (a tracker's, the
    temporary folders' finalizers, multiprocessing's), then the standard streams are flushed
    and the process exits. Returns without doing anything, for the interpreter's own exit,
    where something may still need it: a non-daemon thread alive (a state still being written;
    the interpreter joins it first), or a tracer or profiler set (coverage, cProfile: they
    write their results after this function returns)."""
    import atexit
    import threading

    if sys.gettrace() is not None or sys.getprofile() is not None:
        return
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        return
    atexit._run_exitfuncs()  # what the interpreter runs at exit, in the same (reverse) order
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: the interpreter would not report it either
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
