"""torchrun as `--nproc N` runs it: `python -m goodfit_cli.cli.torchrun ARGS` is
`python -m torch.distributed.run ARGS`, except that a SIGINT/SIGTERM passed on to it (from the
`goodfit` process that launched it) ends it quietly with 128 + the signal: its processes, which
it signals in turn, say "interrupted" themselves (before: torchrun printed its own traceback,
SignalException, and a warning per process it stopped, after the one line that matters)."""

from __future__ import annotations

import logging
import sys

SHUTDOWN = ("death signal, shutting down workers", "closing signal")  # torchrun's warnings


def quiet_on_signals(record: logging.LogRecord) -> bool:
    """False for torchrun's warnings of a shutdown a signal asked for; True for the rest."""
    return not any(s in str(record.msg) for s in SHUTDOWN)


def main() -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as run

    for name in ("torch.distributed.elastic.agent.server.api",
                 "torch.distributed.elastic.multiprocessing.api"):
        logging.getLogger(name).addFilter(quiet_on_signals)
    try:
        run()
    except SignalException as e:
        sys.exit(128 + int(e.sigval))


if __name__ == "__main__":
    main()
