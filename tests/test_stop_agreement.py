"""A SIGINT/SIGTERM that comes while no training loop reads the stop flag (an arm's final
evaluation) stops every rank of a run at the same point: the ranks agree on it there (gloo, CPU,
2 real processes, a real signal sent to one of them)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

RANK = r'''
import os, signal, sys
import torch
import torch.distributed as dist
from goodfit_cli.core.distributed import stop_on_signals
from goodfit_cli.core.errors import Interrupted

dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
rank = dist.get_rank()
try:
    with stop_on_signals() as stop:
        if rank == 0:  # the signal reaches one rank, during its "final evaluation"
            os.kill(os.getpid(), signal.SIGTERM)
        dist.barrier()
        stop.stop_here(sys.argv[1], "the same command plus --resume RUN", torch.device("cpu"))
        print(f"rank {rank} went on", flush=True)
except Interrupted as e:
    print(f"rank {rank} interrupted by {e.signum}, resume: {e.resume}", flush=True)
    dist.destroy_process_group()
    sys.exit(e.exit_code)
dist.destroy_process_group()
'''


def test_a_signal_between_training_loops_stops_every_rank_there(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(tmp_path)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, outs
    for r, out in enumerate(outs):
        assert out.strip().splitlines()[-1] == (
            f"rank {r} interrupted by {int(signal.SIGTERM)}, resume: the same command plus "
            "--resume RUN"), out
