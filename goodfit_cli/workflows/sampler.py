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

Under `--rule new` (the default: the most new-task gain among the trials that pass the gate)
the sampler also sees each finished trial's old-task objective as one value (`flat_old`): the
gate, a constraint, already says which trials keep the old task well enough, and above it the
rule values the new task alone. Multi-objective TPE takes as its "good" trials the first
non-dominated ranks of (old, new); a trial that kept more of the old task than the gate asks
(the recipe's own arm at a small WiSE-FT α: 0.98 / 0.24 against a floor of 0.95) was as "good"
as the one the rule recommends (0.96 / 0.80), and the next draws went around both. The study's
stored values, its front and its report are unchanged; `knee` and `weight=W` rules weigh the
old task above the gate, so the sampler sees both objectives as they are. Whatever the rule, a
pruned trial shows the sampler its rung values (`_with_rungs`), as a single-objective study's
reported values would be shown.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

# user attrs of a trial that does not stand for itself (workflows/search.py, study.py)
STANDS_IN = ("interrupted", "died", "requeued", "surplus", "over_budget")


def stands(t: Any) -> bool:
    """Whether trial `t` is one of the study's own sequence: not failed, interrupted, taken
    off the queue to be enqueued again, or stopped before it ran (no knobs drawn)."""
    return t.state.name != "FAIL" and not any(k in t.user_attrs for k in STANDS_IN)


class _Standing:
    """The study as the sampler sees it: only the trials that stand for themselves, each pruned
    one with its rung values as its intermediate values (`_with_rungs`); with `flat_old`, every
    finished trial's old-task objective (the first) as 0."""

    def __init__(self, study: Any, flat_old: bool = False) -> None:
        self._study, self._flat_old = study, flat_old

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _seen(self, trials: list) -> list:
        out = _with_rungs([t for t in trials if stands(t)])
        if not self._flat_old:
            return out
        return [_flattened(t) if t.values is not None else t for t in out]

    def _get_trials(self, *args: Any, **kwargs: Any) -> list:
        return self._seen(self._study._get_trials(*args, **kwargs))

    def get_trials(self, *args: Any, **kwargs: Any) -> list:
        return self._seen(self._study.get_trials(*args, **kwargs))

    @property
    def trials(self) -> list:
        return self.get_trials()

    @property
    def direction(self) -> Any:  # of the intermediate values `_with_rungs` gives
        from optuna.study import StudyDirection

        return StudyDirection.MAXIMIZE


def _with_rungs(trials: list) -> list:
    """`trials`, each pruned one a copy whose intermediate value at its last rung k is its
    value's rank among the values `trials` reached rung k with (0 the worst; the pruner's order,
    workflows/pruning.py). TPE ranks pruned trials by their last intermediate value, the later
    step first; a multi-objective study cannot report any, so all of them tied and its "good"
    trials beyond the finished ones were simply the earliest pruned."""
    at: dict[str, list] = {}
    for t in trials:
        for k, v in t.user_attrs.get("rungs", {}).items():
            at.setdefault(k, []).append(tuple(v))
    ranked = {k: sorted(v) for k, v in at.items()}  # each rung's values, worst first
    out = []
    for t in trials:
        rungs = t.user_attrs.get("rungs", {})
        if t.state.name != "PRUNED" or not rungs:
            out.append(t)
            continue
        k = max(rungs, key=int)
        seen = copy.copy(t)
        seen.intermediate_values = {int(k): float(ranked[k].index(tuple(rungs[k])))}
        out.append(seen)
    return out


def _flattened(t: Any) -> Any:
    """A copy of finished trial `t` whose old-task objective reads 0 (the storage's own trial,
    which `deepcopy=False` hands out, is never changed)."""
    seen = copy.copy(t)
    seen.values = [0.0, *t.values[1:]]
    return seen


def place_seed(seed: int, place: int) -> int:
    """The random state's seed of the trial at `place` in a study seeded `seed`."""
    return int(np.random.SeedSequence([seed % 2 ** 64, place]).generate_state(1)[0])


def sampler(seed: int, flat_old: bool = False, **kwargs: Any) -> Any:
    """A TPE sampler (`kwargs`: TPESampler's) that draws each trial as described above;
    `flat_old`: it sees every finished trial's old-task objective as one value."""
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
            return super().infer_relative_search_space(_Standing(study, flat_old), trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return super().sample_relative(_Standing(study, flat_old), trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            return super().sample_independent(_Standing(study, flat_old), trial, name, dist)

    return SeededTPE(seed=place_seed(seed, 0), **kwargs)
