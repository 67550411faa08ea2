"""Synthetic motion scenes generated in worker processes: the same arrays as in one process.

Every scene draws from its own random stream (synth.py), so a scene does not depend on the
range it is generated in. `generate_all` cuts a command's scenes (each task's training and test
split) into ranges of CHUNK scenes, generates them in up to one worker per CPU (the CPUs this
process may run on, shared among torchrun's ranks on the machine) and copies each range into
place. Generation is numpy and Python, one CPU per process: a shipped motion recipe's 44 000
scenes take about 5 minutes in one process on an AMD EPYC (docs/benchmarks.md).

Below MIN_SCENES, on one CPU, off Linux (forking is not safe on macOS), or where no worker can
be started (a daemonic process: a DataLoader worker), one process generates them, range by
range. The workers are forked (they start with this process's modules: nothing imported again)
and leave the terminal's Ctrl-C, which reaches the whole process group, to this process; their
ranges come back through the pool's pipe (plain numpy arrays between goodfit's own processes:
nothing read from a file is unpickled). On an error or a signal the ranges not started are
dropped and the workers joined after their range.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np

from goodfit_cli.core.progress import work
from goodfit_cli.data.motion.format import MotionLayout
from goodfit_cli.data.motion.synth import generate

CHUNK = 128  # scenes per range: a multiple of generate's batch; ~1-2 s of one worker
MIN_SCENES = 512  # below (a few seconds in one process): the forks and copies would not pay

Job = tuple[str, int, int, str, int]  # (agent type, scenes, seed, split, first scene's index)


def workers(total: int) -> int:
    """How many processes generate `total` scenes (1: this one alone)."""
    if (total < MIN_SCENES or multiprocessing.current_process().daemon
            or not sys.platform.startswith("linux")):  # fork elsewhere: not safe (macOS)
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")  # torchrun's ranks on this machine
    ranks = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, min((cpus or 1) // ranks, -(-total // CHUNK)))


def _quiet() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool


def _range(job: Job, start: int, n: int, sizes: tuple[int, int, int, int]) -> dict:
    kind, _, seed, split, first = job
    return generate(kind, n, seed, split, MotionLayout(*sizes), first + start)


def generate_all(jobs: list[Job], layout: MotionLayout,
                 processes: int | None = None) -> list[dict[str, np.ndarray]]:
    """`generate(kind, scenes, seed, split, layout, first)` of each job, exactly (the module);
    `processes` (default `workers`) generate them, with progress where the CLI shows it."""
    parts = [(j, start, min(CHUNK, job[1] - start)) for j, job in enumerate(jobs)
             for start in range(0, job[1], CHUNK)]
    total = sum(job[1] for job in jobs)
    processes = workers(total) if processes is None else processes
    outs = [{k: np.zeros((job[1], *shape), bool if k.endswith("_valid") else np.float32)
             for k, shape in layout.fields().items()} for job in jobs]
    sizes = (layout.agents, layout.polylines, layout.points, layout.lights)

    def place(part: tuple[int, int, int], arrays: dict) -> None:
        j, start, n = part
        for k, v in arrays.items():
            outs[j][k][start:start + n] = v

    done = 0
    with work("synthetic motion scenes", total) as advance:
        if processes < 2:
            for part in parts:
                place(part, _range(jobs[part[0]], part[1], part[2], sizes))
                done += part[2]
                advance(done)
            return outs
        pool = ProcessPoolExecutor(min(processes, len(parts)),
                                   mp_context=multiprocessing.get_context("fork"),
                                   initializer=_quiet)
        try:
            running = {pool.submit(_range, jobs[p[0]], p[1], p[2], sizes): p for p in parts}
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    part = running.pop(f)
                    place(part, f.result())
                    done += part[2]
                    advance(done)
        finally:  # an error or a signal: the ranges not started are dropped, the workers end
            pool.shutdown(wait=True, cancel_futures=True)  # their range (~1 s) and are joined
    return outs
