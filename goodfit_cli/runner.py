"""Setup → train → write: pretrain a base, fine-tune arms from it, evaluate a checkpoint.

The loop itself is `engine.train`; the files are `rundir`'s; processes and signals are
`distributed`'s; the terminal is the CLI's.
"""

from __future__ import annotations

import platform
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from goodfit_cli import __version__
from goodfit_cli import checkpoint as ckpt
from goodfit_cli.arms import (
    Arm,
    build_optimizer,
    build_scheduler,
    parse_arm,
    stage_for_arm,
    train_mode,
)
from goodfit_cli.data import build_data
from goodfit_cli.data.base import Split, Task
from goodfit_cli.distributed import (
    StopFlag,
    any_rank,
    dist_info,
    finish,
    init_distributed,
    is_main,
    mean_over_ranks,
    resolve_device,
    stop_on_signals,
)
from goodfit_cli.engine import (
    Events,
    LoopConfig,
    LoopState,
    batches_per_epoch,
    main_steps,
    train,
)
from goodfit_cli.errors import Diverged
from goodfit_cli.models import build_model, head_prefixes
from goodfit_cli.recipe import Recipe, StageSpec
from goodfit_cli.rundir import (
    Log,
    RunResult,
    keep_previous,
    load_result,
    newest_state,
    prepare_out,
    read_jsonl,
    save_predictions,
    state_files,
    write_json,
    write_jsonl,
)
from goodfit_cli.tasks import TaskRunner


class Interrupted(Exception):
    """A run stopped by SIGINT/SIGTERM after saving a resumable state."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum, self.run_dir = signum, run_dir
        # how to continue; a pretrain resumes by itself from the states in its --out
        self.resume = "the same command again"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# ---------------------------------------------------------------------------------------------
# setup


@dataclass
class Setup:
    recipe: Recipe
    device: torch.device
    tasks: dict[str, Task]  # splits already on the device
    runners: dict[str, TaskRunner]
    seed: int

    def model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        m = build_model(self.recipe.model.name, self.recipe.model.args,
                        where=f"{self.recipe.source}: model")
        m = m.to(self.device)
        if self.device.type == "cuda" and any(isinstance(x, nn.Conv2d) for x in m.modules()):
            m = m.to(memory_format=torch.channels_last)  # NHWC kernels; inputs arrive NHWC
        return m

    def evaluate(self, model: nn.Module, with_predictions: bool = False):
        out, preds = {}, {}
        for name in ("old", "new"):
            m, p, per = self.runners[name].evaluate(model, self.tasks[name].test,
                                                    self.recipe.eval_batch_size)
            out[name] = m
            preds[name] = {"pred": p.cpu(), "target": self.tasks[name].test.y.cpu(),
                           "per_sample": {k: v.cpu() for k, v in per.items()}}
        return (out, preds) if with_predictions else out


def setup(recipe: Recipe, *, device: str | None = None, seed: int | None = None,
          data_dir: str | None = None) -> Setup:
    dev = resolve_device(device or recipe.device)
    init_distributed(dev)
    tasks = build_data(recipe.data.name, recipe.data.args, seed=recipe.seed,
                       data_dir=data_dir or recipe.data_dir, where=f"{recipe.source}: data")
    def to_dev(t: torch.Tensor) -> torch.Tensor:  # once per run: pinned, asynchronous copies
        if dev.type == "cuda":
            return t.pin_memory().to(dev, non_blocking=True)
        return t.to(dev)

    moved = {k: Task(t.name, t.kind, Split(to_dev(t.train.x), to_dev(t.train.y)),
                     Split(to_dev(t.test.x), to_dev(t.test.y)), t.num_classes, t.classes)
             for k, t in tasks.items()}
    runners = {t: TaskRunner(t, spec, moved[t], dev, recipe.precision, where=f"{recipe.source}: ")
               for t, spec in (("old", recipe.old_task), ("new", recipe.new_task))}
    return Setup(recipe, dev, moved, runners, recipe.seed if seed is None else seed)


def total_batches(budget: dict[str, Any], n: int) -> int:
    if budget.get("steps"):
        return int(budget["steps"])
    return int(budget["epochs"]) * batches_per_epoch(n, budget["batch_size"])


# ---------------------------------------------------------------------------------------------
# one training run (a pretrain, or one fine-tuning arm)


def run_stage(
    s: Setup, model: nn.Module, arm: Arm, stage: StageSpec, task: str, out: Path, *,
    metadata: dict[str, Any], events: Events | None = None, stop: StopFlag | None = None,
    stop_after: int | None = None, log: Log = lambda _m: None,
) -> RunResult:
    """Train `model` on `task`'s training split with the arm's optimizer; write `out/`.

    Under torchrun the model trains wrapped in DistributedDataParallel (gradients of every
    batch, GoodFit's reference batches included, are all-reduced in backward); only rank 0
    writes files and reports progress.
    """
    rank, world, _ = dist_info()
    main_rank = rank == 0
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
    else:
        events, log = None, (lambda _m: None)
    budget = stage_for_arm(stage, arm)
    data = s.tasks[task].train
    total = total_batches(budget, len(data))
    optimizer = build_optimizer(arm, model, stage, lr=budget["lr"])  # freezes before DDP wraps
    scheduler = build_scheduler(stage.scheduler, optimizer, total)
    cfg = LoopConfig(total, budget["batch_size"], min(s.recipe.eval_every, total), s.seed,
                     s.recipe.checkpoint_every, rank, world, s.recipe.nonfinite)
    trained = model
    if s.recipe.compile:
        trained = torch.compile(model)
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(
            trained, device_ids=[s.device.index] if s.device.type == "cuda" else None)
    loop_state = None
    records: list[dict] = []
    saved = newest_state(out, log)
    if saved is not None:  # resume exactly where the saved state left off
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        loop_state = LoopState.from_dict(saved["loop"])
        records = [r for r in read_jsonl(out / "metrics.jsonl") if r["batch"] <= loop_state.batch]
        log(f"{arm.name}: resuming at batch {loop_state.batch}/{total}")

    def save(st: LoopState) -> None:
        if not main_rank:
            return
        ckpt.save_state(out / f"state-{st.batch:08d}.safetensors", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "rng": torch.get_rng_state(), "loop": st.to_dict()})
        for old in state_files(out)[:-s.recipe.checkpoint_keep]:  # keep the newest K
            old.unlink(missing_ok=True)

    def on_evaluation(rec: dict) -> None:
        records.append(rec)
        if main_rank:
            write_jsonl(out / "metrics.jsonl", records)

    class _Tee:  # write metrics.jsonl at every evaluation, and pass events on
        def on_start(self, total_batches: int, done: int) -> None:
            if events is not None:
                events.on_start(total_batches, done)

        def on_batch(self, batch: int) -> None:
            if events is not None:
                events.on_batch(batch)

        def on_evaluation(self, rec: dict) -> None:
            on_evaluation(rec)
            if events is not None:
                events.on_evaluation(rec)

        def on_end(self) -> None:
            if events is not None:
                events.on_end()

    test_stop = {"hit": False}  # `stop_after`: tests interrupt a run after that many batches

    def on_loss(_loss, batch: int) -> None:
        if stop_after is not None and batch + 1 >= stop_after:
            test_stop["hit"] = True

    def should_stop() -> bool:
        return any_rank((stop is not None and stop()) or test_stop["hit"], s.device)

    try:
        st = train(trained, optimizer, scheduler, data, s.runners[task].loss,
                   lambda: s.evaluate(model), cfg, events=_Tee(), state=loop_state,
                   train_mode=train_mode(arm), save_state=save, should_stop=should_stop,
                   on_loss=on_loss, all_reduce_mean=mean_over_ranks)
    except Diverged as e:
        kept = state_files(out)
        where = f"; the last good state is {kept[-1]}" if kept else "; no state was saved yet"
        raise Diverged(e.batch, f" of {arm.name}{where} (lower the learning rate, or set "
                                "nonfinite: skip in the recipe)") from None
    if st.batch < total:  # stopped early: the state is saved, nothing else is written
        raise Interrupted(stop.signum if stop is not None and stop.signum else signal.SIGINT, out)

    bad = [k for k, v in model.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # e.g. nonfinite: skip could not save a run whose weights already blew up
        raise Diverged(st.batch, f" of {arm.name}: weights {bad[0]!r} (and {len(bad) - 1} more) "
                                 "are not finite; no checkpoint was written",
                       what="training ended with a non-finite model")
    final, preds = s.evaluate(model, with_predictions=True)
    nan_metrics = [f"{t} {m}" for t, d in final.items() for m, v in d.items() if v != v or
                   v in (float("inf"), float("-inf"))]
    if nan_metrics:
        raise Diverged(st.batch, f" of {arm.name}: {nan_metrics[0]} is not finite; "
                                 "no checkpoint was written",
                       what="training ended with a non-finite model")
    summary = {"name": arm.name, "kind": arm.kind, "optimizer": describe_optimizer(optimizer),
               "batches": st.batch, "main_updates": main_steps(optimizer, st.batch),
               "epochs": round(st.batch / batches_per_epoch(len(data), budget["batch_size"]), 4),
               "wall_s": round(st.wall_s, 3), "seed": s.seed, "device": str(s.device),
               "metrics": final}
    if world > 1:
        summary["world_size"] = world
    if st.skipped:
        summary["skipped_nonfinite"] = st.skipped
    result = RunResult(arm.name, out, final, preds, records, summary)
    if not main_rank:
        return result
    meta = {**metadata, "arm": arm.name, "optimizer": summary["optimizer"],
            "batches": st.batch, "main_updates": summary["main_updates"], "metrics": final}
    keep_previous(out / "model.safetensors")
    ckpt.save_model(out / "model.safetensors", model.state_dict(), meta)
    save_predictions(out / "predictions.safetensors", preds)
    summary["checkpoint"] = str(out / "model.safetensors")
    summary["sha256"] = ckpt.sha256_file(out / "model.safetensors")
    write_json(out / "summary.json", summary)
    for f in state_files(out):
        f.unlink(missing_ok=True)
    return result


def describe_optimizer(opt: torch.optim.Optimizer) -> dict[str, Any]:
    main = getattr(opt, "main", opt)
    d = {"class": type(main).__name__, "lr": main.defaults.get("lr")}
    if main is not opt:
        d.update(goodfit={"n_ref": opt.n_ref, "ref_ratio": opt.ref_ratio,
                          "projection": opt.projection})
    return d


# ---------------------------------------------------------------------------------------------
# entry points used by the CLI


def provenance(recipe: Recipe, s: Setup, base_sha: str | None = None) -> dict[str, Any]:
    return {"goodfit": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "recipe": recipe.name, "recipe_source": recipe.source, "recipe_sha256": recipe.sha256,
            "base_sha256": base_sha, "seed": s.seed, "data_seed": recipe.seed,
            "device": str(s.device), "precision": recipe.precision}


def pretrain(recipe: Recipe, out: Path, *, device: str | None = None, seed: int | None = None,
             data_dir: str | None = None, events: Events | None = None, log: Log = print,
             stop_after: int | None = None, overwrite: bool = False) -> RunResult:
    resume = bool(state_files(out))  # an interrupted pretrain continues from its newest state
    if is_main():
        prepare_out(out, overwrite=overwrite, resume=resume, resume_hint="")
    s = setup(recipe, device=device, seed=seed, data_dir=data_dir)
    model = s.model()  # before any file is written: a bad model spec leaves --out empty
    if is_main():
        ckpt.atomic_write_bytes(out / "recipe.yaml", recipe.to_yaml().encode())
    arm = Arm("pretrain", "plain", recipe.pretrain.optimizer.name)
    meta = {"goodfit_version": __version__, "recipe": recipe.name,
            "recipe_sha256": recipe.sha256, "stage": "pretrain", "base_sha256": None}
    with stop_on_signals() as stop:
        result = run_stage(s, model, arm, recipe.pretrain, "old", out, metadata=meta,
                           events=events, stop=stop, stop_after=stop_after, log=log)
    finish()
    return result


def load_base(s: Setup, model: nn.Module, base: Path) -> list[str]:
    tensors, _meta = ckpt.load_model(base)
    ckpt.check_finite(tensors, base)
    return ckpt.load_into_model(model, tensors, base, head_prefixes(model))


def finetune(recipe: Recipe, base: Path, out: Path, *, arms: list[str] | None = None,
             device: str | None = None, seed: int | None = None, data_dir: str | None = None,
             events_for: Callable[[str], Events] | None = None, log: Log = print,
             resume: bool = False, overwrite: bool = False, stop_after: int | None = None,
             wise: bool = True, gate: Any = None, junit: Path | None = None) -> dict[str, Any]:
    """Fine-tune every arm from `base` on the new task; write checkpoints and the report."""
    from goodfit_cli.reporting import (
        make_report,  # the report layer sits above the runner
    )

    main_rank = is_main()
    if main_rank:
        prepare_out(out, overwrite=overwrite, resume=resume)
    else:
        log = lambda _m: None  # noqa: E731 - only rank 0 speaks
    s = setup(recipe, device=device, seed=seed, data_dir=data_dir)
    arm_names = arms or recipe.finetune.arms
    parsed = [parse_arm(a, recipe.finetune) for a in arm_names]
    base_sha = ckpt.sha256_file(base) if base.is_file() else None  # else load_base says why
    model = s.model()
    for msg in load_base(s, model, base):
        log(msg)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    base_metrics, base_preds = s.evaluate(model, with_predictions=True)
    if main_rank:
        # recipe.yaml first: a run.json (what --resume looks for) always has its recipe beside
        # it, even after a crash between the two. The recipe's own data_dir is resolved against
        # its file, and --resume reads the copy in `out`: record the resolved one.
        ckpt.atomic_write_bytes(out / "recipe.yaml", recipe.to_yaml().encode())
        write_json(out / "run.json", {"base": str(base), "arms": arm_names, "seed": s.seed,
                                       "device": str(s.device),
                                       "data_dir": data_dir or recipe.data_dir})
        (out / "base").mkdir(exist_ok=True)
        write_json(out / "base" / "metrics.json", {"checkpoint": str(base), "sha256": base_sha,
                                                    "metrics": base_metrics})
        save_predictions(out / "base" / "predictions.safetensors", base_preds)
    log(f"base: old {base_metrics['old']}  new {base_metrics['new']}")
    meta = {"goodfit_version": __version__, "recipe": recipe.name, "recipe_sha256": recipe.sha256,
            "base_sha256": base_sha, "stage": "finetune"}
    results: list[RunResult] = []
    t_start = time.perf_counter()
    with stop_on_signals() as stop:
        for arm in parsed:
            arm_dir = out / arm.dirname
            if (arm_dir / "summary.json").exists() and (arm_dir / "model.safetensors").exists():
                results.append(load_result(arm_dir))
                log(f"{arm.name}: already finished, reusing {arm_dir}")
                continue
            model.load_state_dict(base_state)
            for p in model.parameters():
                p.requires_grad_(True)
            torch.manual_seed(s.seed)
            ev = events_for(arm.name) if events_for and main_rank else None
            try:
                results.append(run_stage(s, model, arm, recipe.finetune, "new", arm_dir,
                                         metadata=meta, events=ev, stop=stop,
                                         stop_after=stop_after, log=log))
            except Interrupted as e:
                e.resume = f"the same command plus --resume {out}"
                raise
    if not main_rank:
        finish()  # waits for rank 0's report, then leaves the group
        return {}
    model.load_state_dict(base_state)
    wise_curves = {r.name: wise_curve(s, model, base_state, r.dir) for r in results} if wise else {}
    model.load_state_dict(base_state)
    kinds = {t: s.runners[t].kind for t in ("old", "new")}
    prov = provenance(recipe, s, base_sha) | {"wall_s": round(time.perf_counter() - t_start, 3)}
    try:
        return make_report(recipe, out, base, base_metrics, base_preds, results, wise_curves,
                           kinds, prov, gate=gate, junit=junit)
    finally:
        finish()


@torch.no_grad()
def wise_curve(s: Setup, model: nn.Module, base_state: dict, arm_dir: Path,
               alphas: tuple[float, ...] = tuple(i / 10 for i in range(11))) -> list[dict]:
    """WiSE-FT: evaluate (1−α)·base + α·arm for each α on both tasks (no training)."""
    arm_tensors, _ = ckpt.load_model(arm_dir / "model.safetensors")
    curve = []
    for a in alphas:
        mixed = {}
        for k, b in base_state.items():
            t = arm_tensors[k].to(b.device)
            mixed[k] = (b + a * (t.to(b.dtype) - b)) if b.is_floating_point() else (t if a >= 0.5 else b)
        model.load_state_dict(mixed)
        curve.append({"alpha": a, **s.evaluate(model)})
    return curve


def evaluate_checkpoint(recipe: Recipe, checkpoint: Path, *, device: str | None = None,
                        data_dir: str | None = None, log: Log = print) -> dict[str, Any]:
    s = setup(recipe, device=device, data_dir=data_dir)
    model = s.model()
    for msg in load_base(s, model, checkpoint):
        log(msg)
    return {"checkpoint": str(checkpoint), "sha256": ckpt.sha256_file(checkpoint),
            "recipe": recipe.name, "metrics": s.evaluate(model)}
