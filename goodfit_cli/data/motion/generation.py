"""A command's synthetic motion scenes, generated in worker processes (`generate_all`: the same
arrays as in one process) and, for `goodfit data motion-synth`, written as shards
(`write_synthetic`).

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
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from goodfit_cli.core.distributed import cpus_per_rank
from goodfit_cli.core.errors import UserError
from goodfit_cli.core.progress import work
from goodfit_cli.data.motion.format import SPLITS, MotionLayout, ShardWriter, shard_files
from goodfit_cli.data.motion.synth import AGENT_KINDS, generate
from goodfit_cli.io.staging import staged

CHUNK = 128  # scenes per range: a multiple of generate's batch; ~1-2 s of one worker
MIN_SCENES = 512  # below (a few seconds in one process): the forks and copies would not pay

Job = tuple[str, int, int, str, int]  # (agent type, scenes, seed, split, first scene's index)


def workers(total: int) -> int:
    """How many processes generate `total` scenes (1: this one alone)."""
    if (total < MIN_SCENES or multiprocessing.current_process().daemon
            or not sys.platform.startswith("linux")):  # fork elsewhere: not safe (macOS)
        return 1
    return min(cpus_per_rank(), -(-total // CHUNK))  # torchrun's ranks share the CPUs


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


def write_synthetic(out: Path, agent_type: str, scenes: int, test_scenes: int | None, seed: int,
                    sizes: tuple[int, int, int, int] = (16, 64, 10, 4), shard_size: int = 1000,
                    overwrite: bool = False, log=lambda _m: None) -> dict[str, int]:
    """`goodfit data motion-synth`: train and test shards of `agent_type` scenarios under `out`;
    sizes = (agents, polylines, points, lights) stored per scene."""
    if agent_type not in AGENT_KINDS:
        raise UserError(f"--agents: expected one of {' | '.join(AGENT_KINDS)}, got {agent_type!r}")
    test_scenes = max(1, scenes // 10) if test_scenes is None else test_scenes
    for name, value, low in (("--scenes", scenes, 1), ("--test-scenes", test_scenes, 1),
                             ("--seed", seed, 0), ("--shard-size", shard_size, 1),
                             ("--max-agents", sizes[0], 0), ("--polylines", sizes[1], 1),
                             ("--points", sizes[2], 1), ("--lights", sizes[3], 0)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")
    layout = MotionLayout(*sizes)
    existing = [f for split in SPLITS for f in shard_files(out / split)]
    if existing and not overwrite:
        raise UserError(f"{out} already holds shards ({existing[0]}); pass --overwrite to "
                        "replace them")
    counts = {}
    # the new shards are written beside the old ones and swapped in only once all are complete
    old = lambda: [f for split in SPLITS for f in shard_files(out / split)]
    with staged(out, old) as stage:
        for split, n in (("train", scenes), ("test", test_scenes)):
            meta = {"source": "goodfit data motion-synth", "agent_type": agent_type, "seed": seed}
            with ShardWriter(stage, split, shard_size, meta) as w:
                for start in range(0, n, shard_size):  # a shard's scenes: in workers
                    job = (agent_type, min(shard_size, n - start), seed, split, start)
                    w.add_batch(generate_all([job], layout)[0])
                    log(f"{split}: {min(start + shard_size, n)}/{n} scenes")
            counts[split] = n
    return counts
