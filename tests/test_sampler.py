"""The search's sampler under `--rule new`: above the gate, the old task's objective is one value.

A study of finished trials on one knob x: trials at small x kept more of the old task than the
gate asks and learned little of the new one (the recipe's arm at a small WiSE-FT α), trials at
large x are what the rule recommends. Multi-objective TPE counts both kinds among its "good"
trials; with `flat_old` it counts only the second, so its next draws go there.
"""

from __future__ import annotations

import warnings

import pytest

optuna = pytest.importorskip("optuna")

from goodfit_cli.workflows.sampler import _Standing, sampler  # noqa: E402

X = optuna.distributions.FloatDistribution(0.0, 1.0)


def _study(flat_old: bool, seed: int):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "maximize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = sampler(seed, flat_old=flat_old, multivariate=True, group=True,
                                n_startup_trials=4)
    for i in range(20):  # every trial passes the gate (constraint 0); TPE's good ones: 2
        # odd i: x near 0.1, old 0.99 / new 0.20 at best; even i: x near 0.9, old 0.96
        x = 0.05 + 0.01 * i if i % 2 else 0.75 + 0.01 * i
        old, new = (0.99 - 0.001 * i, 0.20 - 0.001 * i) if i % 2 else (0.96, 0.60 + 0.01 * i)
        study.add_trial(optuna.trial.create_trial(
            params={"x": x}, distributions={"x": X}, values=[old, new],
            constraints={"gate_violations": 0.0}))
    return study


def _draws(flat_old: bool) -> list[float]:
    return [_study(flat_old, seed).ask({"x": X}).params["x"] for seed in range(8)]


def test_flat_old_view_leaves_the_stored_trials_alone():
    study = _study(True, 0)
    seen = _Standing(study, flat_old=True).get_trials(deepcopy=False)
    assert [t.values[0] for t in seen] == [0.0] * 20
    assert [t.values[1] for t in seen] == [t.values[1] for t in study.trials]
    assert {t.values[0] for t in study.get_trials(deepcopy=False)} != {0.0}  # storage unchanged
    assert all(t.values[0] > 0.9 for t in _Standing(study).get_trials())


def test_rule_new_draws_near_the_trials_it_would_recommend():
    flat = _draws(True)
    assert min(flat) > 0.5, flat  # only the high-new trials are "good"
    # both objectives as they are: the high-old trials are on the front too, and drawn near
    both = _draws(False)
    assert min(both) < 0.5, both


def _pruned_study(seed: int, ours: bool):
    """Trial 0 finished (x 0.5); trials 1-9 (x near 0.1) pruned at rung 0 with poor values;
    trials 10-19 (x near 0.9) pruned at rung 1 (they passed rung 0), trial 15 the best there."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "maximize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = (sampler(seed, multivariate=True, group=True, n_startup_trials=4) if ours
                         else optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                                         n_startup_trials=4))
    study.add_trial(optuna.trial.create_trial(
        params={"x": 0.5}, distributions={"x": X}, values=[0.96, 0.5],
        constraints={"gate_violations": 0.0}, user_attrs={"rungs": {"0": [0.0, 0.3]}}))
    for i in range(1, 20):
        late = i >= 10
        x = 0.8 + 0.01 * i if late else 0.02 + 0.01 * i
        rungs = ({"0": [0.0, 0.4], "1": [0.0, 0.6 - abs(i - 15) * 0.01]} if late
                 else {"0": [-1.0, 0.1 + 0.01 * i]})
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED, params={"x": x}, distributions={"x": X},
            user_attrs={"rungs": rungs}))
    return study


def test_pruned_trials_are_ranked_by_their_rungs():
    seen = {t.number: t for t in _Standing(_pruned_study(0, True)).get_trials(deepcopy=False)}
    assert seen[0].intermediate_values == {}  # a finished trial: as it is
    assert seen[1].intermediate_values == {0: 0.0}  # the worst value at rung 0
    assert seen[9].intermediate_values == {0: 8.0}  # trials 0 and 10-19 reached it better
    assert seen[15].intermediate_values == {1: 9.0}  # the best of the ten at rung 1
    assert seen[10].intermediate_values == {1: 0.0}
    # TPE's good trials: the finished one and the best pruned at the latest rung (x 0.95), not
    # the earliest pruned (x 0.03), which is what a multi-objective study's tie gave
    ours = [_pruned_study(s, True).ask({"x": X}).params["x"] for s in range(8)]
    plain = [_pruned_study(s, False).ask({"x": X}).params["x"] for s in range(8)]
    assert min(ours) > 0.3, ours
    assert min(plain) < 0.3, plain
