"""`goodfit search`: find the update that breaks the least, with Optuna.

A multi-objective study (old task's and new task's primary metrics, each in its own direction)
over arms and their knobs (workflows/search_space.py), with the gate as a constraint (a trial's
number of violated limits; 0 is feasible). Each trial is a complete fine-tuning run in
RUN/trials/trial-NNNN (plus RUN/trials/trial-NNNN/wise when its WiSE α < 1). The study lives
in RUN/study.db (SQLite) unless `storage` names another database: any number of workers, on
any machines, run the same command with the same storage and share one study; a re-run
continues it. After its trials a worker writes RUN/report.{json,md,html} from the whole study
and exports the recommendation (the best new-task trial that passes the gate) to
RUN/recommended/model.safetensors with its provenance.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goodfit_cli.core.errors import Diverged, UserError
from goodfit_cli.core.metrics import direction
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import sha256_file
from goodfit_cli.io.rundir import keep_previous
from goodfit_cli.report.gate import Gate
from goodfit_cli.report.search import (
    dominance_against,
    pareto_front,
    recommend,
    write_search_report,
)
from goodfit_cli.trainer.session import Place
from goodfit_cli.trainer.stage import Ui
from goodfit_cli.training import arm_dirname
from goodfit_cli.workflows.finetune import FinetuneJob, finetune
from goodfit_cli.workflows.recipes import load
from goodfit_cli.workflows.search_space import propose
from goodfit_cli.workflows.wise import WiseJob, wise


@dataclass
class SearchJob:
    """One `goodfit search` worker: what to search, from which base, into which run folder."""

    recipe: str  # a shipped recipe's name or a YAML path
    base: Path
    out: Path
    trials: int  # the study's target number of finished (or running) trials
    overrides: list[str] = field(default_factory=list)
    storage: str | None = None  # an Optuna RDB URL; default sqlite:///RUN/study.db
    study: str | None = None  # default: goodfit-<recipe name>
    seed: int = 0  # the sampler's seed (plus the number of trials already in the study)
    gate: Gate | None = None
    defaults: bool = True  # also run the recipe's default arms (the reference points)
    replay: bool = True  # search the replay fraction; False: no trial replays old-task data


def _storage(job: SearchJob) -> Any:
    import optuna

    url = job.storage or f"sqlite:///{(job.out / 'study.db').resolve()}"
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    st = optuna.storages  # a worker that died mid-trial: its trial is retried once, by anyone
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = getattr(st, "RetryHeartbeatStaleTrialCallback", None)  # optuna >= 4.9
            stale = ({"heartbeat_stale_trial_callback": retry(max_retry=1)} if retry else
                     {"failed_trial_callback": st.RetryFailedTrialCallback(max_retry=1)})
            return url, st.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60,
                                      grace_period=300, **stale)
    except Exception as e:  # a bad URL, an unreachable server, a missing driver
        raise UserError(f"--storage {url}: cannot open the study's database "
                        f"({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _open_study(job: SearchJob, dirs: tuple[int, int], identity: dict[str, str]) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = job.study or f"goodfit-{identity['recipe']}"
    for attempt in range(5):  # workers starting together race to create the tables and study
        try:
            url, storage = _storage(job)
            study = optuna.create_study(
                storage=storage, study_name=name, load_if_exists=True,
                directions=["maximize" if d > 0 else "minimize" for d in dirs])
            break
        except Exception:
            if attempt == 4:
                raise
            time.sleep(1 + attempt)
    for k, v in identity.items():  # one study = one recipe and one base
        have = study.user_attrs.get(k)
        if have is None:
            study.set_user_attr(k, v)
        elif have != v:
            raise UserError(f"--storage {url}: study {name!r} was made with another {k} "
                            f"({have[:16]} != {v[:16]}); use a new --study or --out")
    legacy = {} if hasattr(optuna.trial.Trial, "set_constraint") else {  # optuna < 5
        "constraints_func": lambda t: t.user_attrs.get("constraint", [0.0])}
    with warnings.catch_warnings():  # multivariate/group TPE: "experimental" since optuna 2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(  # a worker joining later draws afresh
            seed=job.seed * 100_003 + len(study.trials), multivariate=True, group=True, **legacy)
    study.set_user_attr("storage", url.split("@")[-1])  # never the password
    return study


def _states() -> tuple:
    """The trial states that count toward --trials: finished, or running now."""
    import optuna

    return (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)


def _run_trial(job: SearchJob, trial: Any, place: Place, ui: Ui, recipe_name: str) -> tuple:
    import optuna

    done = trial.study.get_trials(deepcopy=False, states=_states())
    if sum(t.number < trial.number for t in done) >= job.trials:  # others reached the target
        trial.set_user_attr("surplus", True)
        trial.study.stop()
        raise optuna.TrialPruned(f"the study already has {job.trials} trials")
    recipe = load(job.recipe, job.overrides)
    p = propose(trial, recipe, replay=job.replay)
    trial_dir = job.out / "trials" / f"trial-{trial.number:04d}"
    trecipe = load(job.recipe, [*job.overrides, *p.overrides])
    ui.log(f"trial {trial.number}: {p.arm} " + " ".join(p.overrides) + f" wise α {p.alpha:g}")
    trial.set_user_attr("dir", str(trial_dir.resolve()))
    trial.set_user_attr("host", socket.gethostname())
    try:
        rep = finetune(FinetuneJob(trecipe, job.base, trial_dir, [p.arm], wise=False,
                                   gate=job.gate), place, ui)
        cand_dir = trial_dir / arm_dirname(p.arm)
        if p.alpha < 1.0:
            cand_dir = trial_dir / "wise"
            rep = wise(WiseJob(trial_dir / arm_dirname(p.arm), p.alpha, cand_dir, None,
                               job.gate), place, ui)
    except Diverged as e:  # a diverging lr is an outcome of the search, not an error of it
        trial.set_user_attr("diverged", str(e))
        raise optuna.TrialPruned(f"diverged: {e}") from None
    arm = rep["arms"][0]
    gate = arm.get("gate")
    constraint = [float(len(gate["violations"]))] if gate else [0.0]  # <= 0: passes the gate
    trial.set_user_attr("constraint", constraint)
    if hasattr(trial, "set_constraint"):
        trial.set_constraint("gate_violations", constraint[0])
    trial.set_user_attr("arm", p.arm)
    trial.set_user_attr("checkpoint", str((cand_dir / "model.safetensors").resolve()))
    trial.set_user_attr("seed", place.seed if place.seed is not None else recipe.seed)
    prim = recipe.primary
    trial.set_user_attr("metrics", arm["metrics"])
    return arm["metrics"]["old"][prim["old"]], arm["metrics"]["new"][prim["new"]]


def _defaults(job: SearchJob, place: Place, ui: Ui) -> list[str]:
    """Run the recipe's default arms once into RUN/defaults (the first worker there claims it)."""
    d = job.out / "defaults"
    if (d / "report.json").exists():
        return []
    try:
        d.mkdir()
    except FileExistsError:
        return [f"the default arms in {d} are unfinished (another worker is running them, or an "
                "earlier run was cut: delete the folder to run them again)"]
    finetune(FinetuneJob(load(job.recipe, job.overrides), job.base, d, gate=job.gate), place, ui)
    return []


def search(job: SearchJob, place: Place | None = None, ui: Ui | None = None) -> dict[str, Any]:
    """Run this worker's share of the study's trials, then write the study's report."""
    try:
        import optuna
    except ImportError:
        raise UserError("goodfit search needs Optuna: pip install 'goodfit[search]'") from None

    ui, place = ui or Ui(), place or Place()
    if job.trials < 1:
        raise UserError(f"--trials {job.trials}: must be at least 1")
    if not job.base.exists():
        raise UserError(f"--base {job.base}: not found")
    recipe = load(job.recipe, job.overrides)
    job.out.mkdir(parents=True, exist_ok=True)
    prim = recipe.primary
    dirs = (direction(prim["old"]), direction(prim["new"]))
    identity = {"recipe": recipe.name, "recipe_sha256": recipe.sha256,
                "base_sha256": sha256_file(job.base),
                "replay": "searched" if job.replay else "off"}  # one search space per study
    study = _open_study(job, dirs, identity)
    notes = [] if job.replay else ["--no-replay: no trial replays old-task samples"]
    states = _states()
    left = job.trials - len(study.get_trials(deepcopy=False, states=states))
    t0 = time.perf_counter()
    if left > 0:
        ui.log(f"study {study.study_name}: {job.trials - left} trials so far, {left} to go")
        study.optimize(lambda t: _run_trial(job, t, place, ui, recipe.name), n_trials=left,
                       callbacks=[optuna.study.MaxTrialsCallback(job.trials, states=states)])
    if job.defaults:
        notes += _defaults(job, place, ui)
    defaults = _defaults_report(job) or {"arms": []}
    rep = _report(job, study, recipe, dirs, notes, defaults)
    rep["wall_s"] = round(time.perf_counter() - t0, 3)
    curves = [(a["name"], [(p["old"][prim["old"]], p["new"][prim["new"]]) for p in a["wise"]])
              for a in defaults["arms"] if a.get("wise")]
    write_search_report(rep, job.out, curves)
    ui.log(f"search report: {job.out / 'report.md'}  {job.out / 'report.html'}")
    return rep


def _defaults_report(job: SearchJob) -> dict | None:
    """RUN/defaults/report.json (the recipe's default arms and the base), None until it ran."""
    path = job.out / "defaults" / "report.json"
    return json.loads(path.read_text()) if path.exists() else None


def _report(job: SearchJob, study: Any, recipe: Any, dirs: tuple[int, int],
            notes: list[str], defaults: dict) -> dict[str, Any]:
    """The study's report; `defaults`: RUN/defaults/report.json ({"arms": []} before it ran)."""
    prim = recipe.primary
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):  # created after the study reached its target, not run
            continue
        vals = t.values if t.values is not None else (None, None)
        trials.append({"number": t.number, "state": t.state.name,
                       "arm": t.user_attrs.get("arm", t.params.get("arm", "?")),
                       "params": dict(t.params), "old": vals[0], "new": vals[1],
                       "feasible": t.user_attrs.get("constraint", [0.0])[0] <= 0,
                       "dir": t.user_attrs.get("dir"), "seed": t.user_attrs.get("seed"),
                       "checkpoint": t.user_attrs.get("checkpoint")})
    done = [t for t in trials if t["state"] == "COMPLETE"]
    refs = [{"name": a["name"], "old": a["metrics"]["old"][prim["old"]],
             "new": a["metrics"]["new"][prim["new"]], "gate": (a.get("gate") or {}).get("passed")}
            for a in defaults["arms"]]
    b = defaults.get("base_metrics")  # the base itself, measured by the default arms' run
    base = {"old": b["old"][prim["old"]], "new": b["new"][prim["new"]]} if b else None
    rec = recommend(done, dirs)
    rep = {"study": study.study_name, "storage": study.user_attrs.get("storage"),
           "recipe": recipe.name, "base": str(job.base), "metrics": [prim["old"], prim["new"]],
           "gate": job.gate.source if job.gate else None, "notes": notes, "trials": trials,
           "complete": len(done), "front": pareto_front([t for t in done if t["feasible"]], dirs),
           "defaults": refs, "base_point": base, "recommendation": rec,
           "against_defaults": dominance_against(rec, refs, dirs) if rec else {}}
    if job.gate is None:
        notes.append("no gate: the recommendation is the best new-task trial, whatever it broke")
    if rec is not None:
        rep.update(_export(job, study, rec))
    return rep


def _export(job: SearchJob, study: Any, rec: dict) -> dict[str, str]:
    """The recommendation as RUN/recommended/model.safetensors, with its provenance."""
    src = Path(rec["checkpoint"] or "")
    if not src.is_file():
        return {"export_note": f"{src} is not on this machine (another worker's trial)"}
    tensors, meta = ckpt.load_model(src)
    meta = {**meta, "search": {"study": study.study_name, "trial": rec["number"],
                               "arm": rec["arm"], "knobs": rec["params"], "seed": rec["seed"],
                               "source": str(src), "source_sha256": sha256_file(src),
                               "pid": os.getpid()}}
    meta.pop("format", None)
    dest = job.out / "recommended" / "model.safetensors"
    dest.parent.mkdir(exist_ok=True)
    keep_previous(dest)
    ckpt.save_model(dest, tensors, meta)
    return {"exported": str(dest)}
