"""The study's sampler: Optuna's multivariate TPE, reseeded at each trial from the study's seed
and the trial's place among the trials that stand for themselves, and shown only those trials.

A study cut short (Ctrl-C, kill -9) and continued leaves trials an uninterrupted one never had:
the interrupted or dead trial (its retry, run first with its knobs, stands for it), trials
failed off the queue to be enqueued again (`requeued`), and trials that never ran (`surplus`,
`over_budget`). A sampler seeded once per worker would draw every later trial differently from
the uninterrupted study with the same seed; this one draws trial k of the study's own sequence
from the same random state and the same history, so a continued study draws what the
uninterrupted one would (tests/test_search_resume.py). Workers sharing a study each draw at a
distinct place, so none repeats another's draw.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# user attrs of a trial that does not stand for itself (workflows/search.py, study.py)
STANDS_IN = ("interrupted", "died", "requeued", "surplus", "over_budget")


def stands(t: Any) -> bool:
    """Whether trial `t` is one of the study's own sequence: not failed, interrupted, taken
    off the queue to be enqueued again, or stopped before it ran (no knobs drawn)."""
    return t.state.name != "FAIL" and not any(k in t.user_attrs for k in STANDS_IN)


class _Standing:
    """The study as the sampler sees it: only the trials that stand for themselves."""

    def __init__(self, study: Any) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, *args: Any, **kwargs: Any) -> list:
        return [t for t in self._study._get_trials(*args, **kwargs) if stands(t)]

    def get_trials(self, *args: Any, **kwargs: Any) -> list:
        return [t for t in self._study.get_trials(*args, **kwargs) if stands(t)]

    @property
    def trials(self) -> list:
        return self.get_trials()


def place_seed(seed: int, place: int) -> int:
    """The random state's seed of the trial at `place` in a study seeded `seed`."""
    return int(np.random.SeedSequence([seed % 2 ** 64, place]).generate_state(1)[0])


def sampler(seed: int, **kwargs: Any) -> Any:
    """A TPE sampler (`kwargs`: TPESampler's) that draws each trial as described above."""
    from optuna.samplers import RandomSampler, TPESampler

    class SeededTPE(TPESampler):
        def before_trial(self, study: Any, trial: Any) -> None:
            place = sum(stands(t) for t in study.get_trials(deepcopy=False)
                        if t.number < trial.number)
            s = place_seed(seed, place)
            getattr(self._rng, "rng", self._rng).seed(s)  # TPE's own draws (a LazyRandomState)
            self._random_sampler = RandomSampler(seed=s)  # its startup trials' draws
            super().before_trial(study, trial)

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return super().infer_relative_search_space(_Standing(study), trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return super().sample_relative(_Standing(study), trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            return super().sample_independent(_Standing(study), trial, name, dist)

    return SeededTPE(seed=place_seed(seed, 0), **kwargs)
