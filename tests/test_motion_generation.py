"""Synthetic motion scenes generated in worker processes (data/motion/generation.py)."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
from runs import Heard

from goodfit_cli.core.progress import listening
from goodfit_cli.data.motion import generation
from goodfit_cli.data.motion.format import MotionLayout
from goodfit_cli.data.motion.generation import CHUNK, MIN_SCENES, generate_all, workers
from goodfit_cli.data.motion.synth import generate

LAYOUT = MotionLayout(agents=4, polylines=8, points=4, lights=2)
# ranges of both lengths (a whole CHUNK and a rest), a split that starts past scene 0
JOBS = [("car", CHUNK + 22, 3, "train", 0), ("pedestrian", 40, 4, "test", 7)]


def test_workers_make_exactly_the_scenes_one_process_makes():
    heard = Heard()
    with listening(heard):
        made = generate_all(JOBS, LAYOUT, processes=2)
    alone = generate_all(JOBS, LAYOUT, processes=1)
    for job, got, one in zip(JOBS, made, alone):
        kind, n, seed, split, first = job
        want = generate(kind, n, seed, split, LAYOUT, first)  # the generator itself, in one go
        assert set(got) == set(want) == set(one)
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
            assert np.array_equal(one[k], want[k]), k
    total = sum(j[1] for j in JOBS)
    assert heard.calls[0] == ("start", "synthetic motion scenes", total)
    assert heard.calls[-1] == ("end", total)
    done = [d for kind, *rest in heard.calls if kind == "advance" for d in rest]
    assert done == sorted(done) and done[-1] == total and len(done) == 3  # a report per range


def test_a_signal_during_the_generation_leaves_no_worker_behind():
    """Ctrl-C reaches the command while the workers generate (here: at the first range done):
    it goes on up, the ranges not started are dropped and every worker is joined."""

    class Stopped(Heard):
        def advance(self, done):
            raise KeyboardInterrupt

    before = set(multiprocessing.active_children())  # any other test's
    with listening(Stopped()), pytest.raises(KeyboardInterrupt):
        generate_all([("car", 6 * CHUNK, 0, "train", 0)], LAYOUT, processes=2)
    assert set(multiprocessing.active_children()) <= before


def test_an_error_in_a_worker_reaches_the_caller():
    with pytest.raises(ValueError, match="agent_type must be one of"):
        generate_all([("bus", CHUNK + 1, 0, "train", 0)], LAYOUT, processes=2)


def test_how_many_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(6)),
                        raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(generation.sys, "platform", "linux")
    assert workers(MIN_SCENES - 1) == 1  # a few seconds in this process
    assert workers(MIN_SCENES) == min(6, -(-MIN_SCENES // CHUNK))
    assert workers(100 * CHUNK) == 6  # one per CPU this process may run on
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two ranks share the CPUs
    assert workers(100 * CHUNK) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "6")
    assert workers(100 * CHUNK) == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(generation.sys, "platform", "darwin")  # no fork there: this process
    assert workers(100 * CHUNK) == 1
