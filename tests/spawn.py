"""Multi-process test workers on gloo that cannot fail silently or hang.

`spawn(fn, world, out_dir)` runs `fn(rank, world, out_dir)` in `world` fresh processes that
form a gloo group (short timeout). A worker that raises writes its traceback to
`out_dir/error-<rank>.txt` and exits 1; the parent then fails with that traceback. Workers
leave the group together and skip interpreter teardown (os._exit) once their results are
written, so gloo's threads cannot abort them at exit. A failed worker ends the others at once;
the whole run is bounded by `timeout`.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

GROUP_TIMEOUT = datetime.timedelta(seconds=60)


def _entry(fn: Callable, rank: int, world: int, out_dir: str) -> None:
    code = 0
    try:
        dist.init_process_group("gloo", init_method=f"file://{out_dir}/.init", rank=rank,
                                world_size=world, timeout=GROUP_TIMEOUT)
        fn(rank, world, out_dir)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - everything goes to the parent
        Path(out_dir, f"error-{rank}.txt").write_text(traceback.format_exc())
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def spawn(fn: Callable, world: int, out_dir: Path, timeout: float = 180.0) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_entry, args=(fn, rank, world, str(out_dir)))
             for rank in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    # until all have ended; a worker that failed ends the others (they would wait for it)
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        if any(p.exitcode not in (None, 0) for p in procs):
            break
        time.sleep(0.05)
    hung = [i for i, p in enumerate(procs) if p.is_alive()
            and not any(q.exitcode not in (None, 0) for q in procs)]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    errors = [f.read_text() for f in sorted(Path(out_dir).glob("error-*.txt"))]
    if errors:
        pytest.fail("a worker raised:\n" + "\n".join(errors), pytrace=False)
    if hung:
        pytest.fail(f"workers {hung} still running after {timeout:.0f} s", pytrace=False)
    codes = [p.exitcode for p in procs]
    assert codes == [0] * world, f"worker exit codes {codes}"
