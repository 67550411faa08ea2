"""The Optuna study behind `goodfit search`: its storage (SQLite in RUN or any database URL),
its creation by workers that start together, the identity it is bound to (one recipe, one base,
one search space, one code: goodfit's source, hashed), its sampler, its first trials (the
recipe's default arms), which of its trials count toward --trials, and which pruned trials the
budget left re-runs (--reruns).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from goodfit_cli.arms import ARMS
from goodfit_cli.arms.search import BALANCED, LR, REPLAY, REPLAY_MAX, SAMPLED, knob_key
from goodfit_cli.core.errors import UserError
from goodfit_cli.core.source import KEY
from goodfit_cli.core.text import redact
from goodfit_cli.io.atomic import dead_leftovers, pid_space
from goodfit_cli.io.rundir import state_files
from goodfit_cli.io.staging import settle_tree
from goodfit_cli.trainer.measured import data_digest
from goodfit_cli.trainer.runcheck import data_record
from goodfit_cli.training import arm_dirname
from goodfit_cli.training.arms import arm_type, parse_arm
from goodfit_cli.workflows.budget import Budget, spent
from goodfit_cli.workflows.sampler import sampler


def storage(url: str) -> Any:
    """Optuna's storage at `url`; its errors (a bad URL, an unreachable server, a missing driver,
    two workers creating the tables at once) go to the caller."""
    import optuna

    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    st = optuna.storages  # a worker that died mid-trial: its trial is retried once, by anyone
    retry = "heartbeat_stale_trial_callback" if hasattr(  # optuna >= 4.9
        st, "RetryHeartbeatStaleTrialCallback") else "failed_trial_callback"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return st.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60,
                             grace_period=300, **{retry: retry_dead})


def requeue_first(study: Any, params: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Enqueue a trial (`params`, user attrs `attrs`) that runs before every trial waiting now:
    those are taken off the queue (failed, marked `requeued`) and enqueued again behind it, in
    their order. One another worker has just taken stays its."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    study.enqueue_trial(params, user_attrs=attrs)
    for t in waiting:
        try:  # taken from the queue as a worker takes it: atomically, or not at all
            if not storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.set_trial_user_attr(t._trial_id, "requeued", True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.system_attrs.get("fixed_params") or t.params,
                            user_attrs=dict(t.user_attrs))


# the identity keys a study's flags set, and those flags: a study continued with others is
# refused in a line that names both values and the flags
FLAGS_OF = {"new_offset": "--new-offset or --no-new-offset, --offset-with-alpha or "
                          "--offset-after-alpha",
            "defaults": "--defaults or --no-defaults, --replay-reference or --no-replay-reference",
            "trial_weights": "--rung-weights or --end-weights",
            "fisher": "--fisher or --no-fisher"}


def enqueued_as(t: Any) -> dict[str, Any]:
    """What an enqueued first trial carries to a trial that stands for it (a retry; one put
    back when the budget cannot cover it): its place among the default arms (or as the replay
    reference) and its protection from pruning."""
    return {k: t.user_attrs[k] for k in ("default", "protected") if k in t.user_attrs}


def retry_of(t: Any, reason: str) -> dict[str, Any]:
    """A retry's user attrs: `enqueued_as`, none of its numbers, rungs or budget claims."""
    return {**enqueued_as(t), "retry_of": t.number, "retry_reason": reason}


def retry_dead(study: Any, trial: Any) -> bool:
    """A trial whose worker died (kill -9, a lost machine; failed by the heartbeat's grace
    period, or by `reclaim_dead`) runs again first, once: a retry that dies too is not
    retried (a trial that kills its worker would loop). Whether it was enqueued again."""
    if trial.user_attrs.get("retry_reason") == "died":
        return False
    requeue_first(study, trial.params, retry_of(trial, "died"))
    return True


def mark_worker(trial: Any) -> None:
    """Record on `trial` (an optuna.Trial) the worker running it: host, pid and pid space (the
    host's or a container's pids), for `reclaim_dead`."""
    import os
    import socket

    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("pid_space", pid_space())


def reclaim_dead(study: Any) -> list[tuple[int, bool]]:
    """Trials left RUNNING by a worker of this host whose process is gone (kill -9, a crash):
    failed now and retried first (`retry_dead`), instead of after the heartbeat's grace period,
    their folders rid of what the dead worker was writing (temp files, staging folders: kept
    complete files stay); (their numbers, whether each runs again). Other hosts' trials wait
    for the heartbeat (their folders are theirs)."""
    import os
    import socket

    import optuna
    from optuna.trial import TrialState

    host, gone = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, space = t.user_attrs.get("pid"), t.user_attrs.get("pid_space", pid_space())
        if t.user_attrs.get("host") != host or space != pid_space() \
                or not isinstance(pid, int) or pid == os.getpid():  # another container's pids
            continue
        try:
            os.kill(pid, 0)
            continue  # alive (or its number taken by another process: the heartbeat decides)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        storage = study._storage
        try:  # another worker starting now may reclaim it first: then it is that worker's
            storage.set_trial_user_attr(t._trial_id, "died", f"its worker (pid {pid}) is gone")
            for attr in ("claim", "batches"):  # what it holds of the budget, and reports
                storage.set_trial_user_attr(t._trial_id, attr, _trained_before(t))
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        gone.append((t.number, retry_dead(study, t)))
        if t.user_attrs.get("dir"):  # what it was writing when killed: its retry runs elsewhere
            settle_tree(Path(t.user_attrs["dir"]))
    return gone


def _trained_before(t: Any) -> int:
    """What a trial whose worker died trained, as far as its folder tells: the batch of its
    newest resumable state, or of its last evaluation, whichever is later."""
    seen = int(t.user_attrs.get("batches") or 0)
    folder, arm = t.user_attrs.get("dir"), t.user_attrs.get("arm")
    states = state_files(Path(folder) / arm_dirname(arm)) if folder and arm else []
    return max([seen] + [int(p.stem.split("-")[-1]) for p in states if p.stem[-1:].isdigit()])


def a_race(e: Exception) -> bool:
    """Whether creating a study failed because another worker was creating it at the same
    moment (retried), not because the database cannot be used (reported at once)."""
    import optuna

    text = str(e).lower()
    return isinstance(e, optuna.exceptions.DuplicatedStudyError) or (
        type(e).__name__ in ("IntegrityError", "OperationalError")
        and ("unique" in text or "duplicate" in text or "locked" in text or "exists" in text)
    ) or (type(e).__name__ == "ProgrammingError"  # PostgreSQL: two CREATE TABLE at once
          and "already exists" in text)


def open_study(job: Any, dirs: tuple[int, int], identity: dict[str, str],
               on_create: Callable[[Any], None] | None = None) -> Any:
    """The study of a search job (workflows/search.py `SearchJob`: its study, storage, out and
    seed), created or joined, bound to `identity`, with this worker's sampler. `on_create(study)`
    runs in the one worker that created the study (the storage's unique study name decides
    which), after the identity is set: e.g. enqueueing the first trials exactly once."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = job.study or f"goodfit-{identity['recipe']}"
    url = job.storage or f"sqlite:///{(job.out / 'study.db').resolve()}"
    created = False
    for attempt in range(5):  # workers starting together race to create the tables and study
        try:
            kw = dict(storage=storage(url), study_name=name,
                      directions=["maximize" if d > 0 else "minimize" for d in dirs])
            try:
                study, created = optuna.create_study(**kw, load_if_exists=False), True
            except optuna.exceptions.DuplicatedStudyError:  # made before, or by another worker
                study = optuna.create_study(**kw, load_if_exists=True)
            break
        except Exception as e:  # a bad URL, a missing driver: one line at once, no retry
            if attempt == 4 or not a_race(e):
                raise UserError(f"--storage {url}: cannot open the study's database "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
            time.sleep(1 + attempt)
    same_but_gate = study.user_attrs.get("recipe_sha256_but_gate") == identity.get(
        "recipe_sha256_but_gate")
    # a key an older goodfit did not record is recorded now only while no trial has run:
    # recorded after, it would vouch for trials it never saw
    ran = any(t.state.name != "WAITING" for t in study.get_trials(deepcopy=False))
    unrecorded = []
    for k, v in identity.items():  # one study = one recipe and one base
        have = study.user_attrs.get(k)
        if have is None and ran:
            unrecorded.append(k)
        elif have is None:
            study.set_user_attr(k, v)
        elif have != v and k == KEY:  # goodfit's own source (core/source.py)
            raise UserError(f"--storage {url}: study {name!r} was made with goodfit source "
                            f"{have[:4]}… but it is now {v[:4]}… (the code changed since its "
                            "trials ran; use a new --study or --out)")
        elif have != v:
            why = (" (the test or validation data changed since its trials were measured)"
                   if k == "data_sha256" else " (the training data changed since its trials "
                   "were trained)" if k == "train_sha256" else " (only its gate: section "
                   "changed; give the new limits as flags, --max-old-drop, --min-old and the "
                   "rest: a study re-judges its trials under the flags' gate)"
                   if k == "recipe_sha256" and same_but_gate
                   else f" ({have!r} against {v!r}: give the flags it was made with, "
                   f"{FLAGS_OF[k]})" if k in FLAGS_OF else "")
            differ = "" if k in FLAGS_OF else f" ({have[:16]} != {v[:16]})"  # said in why
            raise UserError(f"--storage {url}: study {name!r} was made with another {k}"
                            f"{differ}{why}; use a new --study or --out")
    if any("lr" in t.params for t in study.get_trials(deepcopy=False)):  # knobs' old names
        raise UserError(f"--storage {url}: study {name!r} names its knobs as an older goodfit "
                        "did (lr, not finetune.optimizer.lr); use a new --study or --out")
    if unrecorded:
        raise UserError(f"--storage {url}: study {name!r} has trials from an older goodfit that "
                        f"did not record their {unrecorded[0]}, so they cannot be checked "
                        "against this run's; use a new --study or --out")
    legacy = {} if hasattr(optuna.trial.Trial, "set_constraint") else {  # optuna < 5
        "constraints_func": lambda t: t.user_attrs.get("constraint", [0.0])}
    with warnings.catch_warnings():  # multivariate/group TPE: "experimental" since optuna 2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # reseeded at each trial from its place in the study: a continued study draws what an
        # uninterrupted one would (workflows/sampler.py); under --rule new it sees the old
        # task's objective as one value above the gate (the rule's own view)
        study.sampler = sampler(job.seed, flat_old=job.rule.kind == "new", multivariate=True,
                                group=True, **legacy)
    study.set_user_attr("storage", redact(url))  # never the password
    if created and on_create is not None:
        on_create(study)
    return study


def data_identity(s: Any) -> dict[str, str]:
    """What a study's trials rest on, for its identity: the test and validation splits'
    contents (`data_sha256`: what they were measured on) and every split's (`train_sha256`:
    what they were trained on; the test and validation splits' alone when training streams),
    hashed (trainer/measured.py `data_digest`). A study made before records the second at its
    next run."""
    return {"data_sha256": data_digest(s) or "not checkable",
            "train_sha256": data_record(s)["sha256"]}


def but_gate(recipe: Any) -> str:
    """The recipe's hash without its gate: section (a study bound to a recipe says when only its
    gate changed, which flags re-judge)."""
    raw = {k: v for k, v in recipe.raw.items() if k != "gate"}
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


def default_trials(recipe: Any, replay: bool) -> list[tuple[str, dict[str, Any]]]:
    """The recipe's default arms as trials of the search space (arms/search.py): [(the arm's
    name in the recipe, its parameters)]: the arm's kind, the recipe's lr and each searched
    knob at the recipe's value, no replay unless the recipe's own fraction, no class balance
    unless the recipe's, the recipe's sampling. An arm over another optimizer than the
    recipe's runs over the recipe's (the search's arms do)."""
    ft = recipe.finetune
    out = []
    for name in ft.arms:
        arm = parse_arm(name, ft)
        decl = ARMS.get(arm.kind)
        if not decl.available():
            continue
        args = arm_type(arm, ft).args
        params: dict[str, Any] = {"arm": arm.kind, LR: ft.optimizer.lr}
        params.update({knob_key(arm.kind, k): args[k.name] for k in decl.knobs if k.search})
        if recipe.new_task.loss == "cross_entropy":
            params[BALANCED] = (recipe.new_task.args or {}).get("balance", "none")
            params[SAMPLED] = ft.sampling
        if replay:
            params[REPLAY] = ft.replay.fraction if ft.replay is not None else 0.0
        out.append((name, params))
    return out


def replay_reference(recipe: Any, replay: bool) -> tuple[str, dict[str, Any]] | None:
    """The search's replay reference, where it searches replay and the recipe replays nothing
    of its own: the recipe's first default arm as a trial with the replay fraction at the top
    of its range (REPLAY_MAX), named '<arm>+replay'; None otherwise. Rehearsal of old data is
    the strong baseline of continual learning (Chaudhry et al., *On Tiny Episodic Memories in
    Continual Learning*, 2019), and early in its training it can read worse at a rung than
    trials that learn the new task at the old task's cost, so it is never pruned
    (`enqueue_defaults`; docs/results.md, "A replay reference")."""
    ft = recipe.finetune
    first = default_trials(recipe, replay)[:1]
    if not replay or not first or (ft.replay is not None and ft.replay.fraction > 0):
        return None
    name, params = first[0]
    return f"{name}+replay", {**params, REPLAY: REPLAY_MAX}


def enqueue_defaults(study: Any, recipe: Any, replay: bool, reference: bool = True) -> None:
    """The study's first trials (done once, by the worker that creates it): the recipe's
    default arms, then (`reference`) the replay reference (`replay_reference`), which is never
    pruned."""
    for name, params in default_trials(recipe, replay):
        study.enqueue_trial(params, user_attrs={"default": name})
    ref = replay_reference(recipe, replay) if reference else None
    if ref is not None:
        study.enqueue_trial(ref[1], user_attrs={"default": ref[0], "protected": True})


def counts(t: Any) -> bool:
    """Whether trial `t` counts toward --trials: finished, running now, or pruned by the rule
    (not one that diverged, was interrupted, or was made after the study reached its target,
    nor a pruned trial re-run whole with the budget left: it is that trial again)."""
    if "rerun_of" in t.user_attrs:
        return False
    state = t.state.name
    return state in ("COMPLETE", "RUNNING") or (state == "PRUNED" and "pruned" in t.user_attrs)


def counted(study: Any) -> list:
    return [t for t in study.get_trials(deepcopy=False) if counts(t)]


def reran(t: Any) -> bool:
    """Whether re-run trial `t` holds its pruned trial: running, finished or diverged (an
    outcome); not one that was interrupted, failed with its worker, or never ran."""
    return t.state.name in ("COMPLETE", "RUNNING") or (
        t.state.name == "PRUNED" and "diverged" in t.user_attrs)


def rerun_candidate(study: Any) -> int | None:
    """The pruned trial the budget left should finish first: of the trials the rule pruned at a
    rung (not one pruned before training, diverged or interrupted) and not re-run yet (`reran`),
    the one that reached the latest rung, the best value there first (workflows/pruning.py's
    order)."""
    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("rerun_of") for t in trials if reran(t)}
    best = None
    for t in trials:
        rungs = t.user_attrs.get("rungs") or {}
        if (t.state.name != "PRUNED" or "pruned" not in t.user_attrs or not rungs
                or t.number in taken or "rerun_of" in t.user_attrs):
            continue
        k = max(rungs, key=int)
        key = (int(k), tuple(rungs[k]), -t.number)
        if best is None or key > best[0]:
            best = (key, t.number)
    return None if best is None else best[1]


def reruns_due(study: Any, budget: Budget) -> Any:
    """The pruned trials to re-run whole, one at a time, while the budget left covers a whole
    fine-tune (none without a budget: nothing is left over, and none while a default arm still
    waits: the study's next trial would be it)."""
    while budget.batches is not None and spent(study) + budget.steps <= budget.batches:
        if any(t.state.name == "WAITING" for t in study.get_trials(deepcopy=False)):
            return
        n = rerun_candidate(study)
        if n is None:
            return
        yield n


def a_study(out: Path) -> bool:
    """Whether `out` may take this search: empty, or a search's folder (its study.db, or the
    trials/ of workers sharing a study in another database), nothing of another command's."""
    dead = {p.name for p in dead_leftovers(out)}  # what a search killed at its start left
    names = {p.name for p in out.iterdir()} - {".goodfit.lock"} - dead
    if not names or (names & {"study.db", "trials"} and "run.json" not in names):
        return True
    try:  # a worker that ran no trial of a study kept elsewhere: its report alone
        return "study" in json.loads((out / "report.json").read_text())
    except (OSError, ValueError, TypeError):
        return False
