"""The end of one training run: the trained model checked finite and measured, and the arm's
files written (model, predictions, metrics, summary; rank 0); the EMA's weights as a candidate
'<arm>+ema' of their own, in a folder beside the arm's.
"""

from __future__ import annotations

import torch
from torch import nn

from goodfit_cli.core.distributed import dist_info
from goodfit_cli.core.errors import Diverged
from goodfit_cli.data.inputs import recorded
from goodfit_cli.engine import batches_per_epoch, main_steps
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import sha256_file, write_json, write_jsonl
from goodfit_cli.io.rundir import RunResult, keep_previous, save_predictions, state_files
from goodfit_cli.models import unwrap
from goodfit_cli.models.hf import pretrained_folder
from goodfit_cli.trainer.job import Ran, StageJob
from goodfit_cli.trainer.measured import measured_on
from goodfit_cli.trainer.session import Session
from goodfit_cli.training import Arm, describe_optimizer


def ema_job(job: StageJob, records: list[dict], decay: float) -> StageJob:
    """The '<arm>+ema' candidate's job: its own folder beside the arm's, with its curve."""
    arm = Arm(f"{job.arm.name}+ema", job.arm.kind, job.arm.optimizer)
    out = job.out.parent / arm.dirname
    if dist_info()[0] == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "metrics.jsonl", ema_records(records))
    return StageJob(arm, job.stage, job.task, out, {**job.metadata, "ema_decay": decay,
                                                     "ema_of": job.arm.name})


def ema_records(records: list[dict]) -> list[dict]:
    """The arm's records with the EMA's metrics in place of the arm's."""
    return [{**{k: v for k, v in r.items() if k not in ("ema", "val", "old", "new")}, **r["ema"]}
            for r in records if "ema" in r]


def finish(s: Session, model: nn.Module, optimizer, job: StageJob, ran: Ran) -> RunResult:
    """Check the trained model is finite, evaluate it, and write the arm's files (rank 0)."""
    st, records, (n_train, batch_size, pieces) = ran.st, ran.records, ran.sizes
    arm, out = job.arm, job.out
    bad = [k for k, v in model.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # e.g. nonfinite: skip could not save a run whose weights already blew up
        raise Diverged(st.batch, f" of {arm.name}: weights {bad[0]!r} (and {len(bad) - 1} more) "
                                 "are not finite; no checkpoint was written",
                       what="training ended with a non-finite model")
    final, preds, val, val_preds = ran.measured or s.measure(model)
    if final is None:  # the last evaluation measured validation only: test, once, here
        final, preds = s.evaluate(model, True)
    nan_metrics = [f"{t} {m}" for t, d in final.items() for m, v in d.items() if v != v or
                   v in (float("inf"), float("-inf"))]
    if nan_metrics:
        raise Diverged(st.batch, f" of {arm.name}: {nan_metrics[0]} is not finite; "
                                 "no checkpoint was written",
                       what="training ended with a non-finite model")
    _, world, _ = dist_info()
    summary = {"name": arm.name, "kind": arm.kind, "optimizer": describe_optimizer(optimizer),
               "batches": st.batch, "main_updates": main_steps(optimizer, st.batch),
               "epochs": round(st.batch / batches_per_epoch(n_train, batch_size, pieces),
                               4),
               "wall_s": round(st.wall_s, 3), "seed": s.seed, "device": str(s.device),
               "metrics": final, "val_metrics": val,
               "measured_on": measured_on(s, model)}  # what compare checks before reusing
    extra = dict(ran.summary)
    summary.update({k: extra.pop(k) for k in ("replay", "sampling", "cycles") if k in extra})
    if world > 1:
        summary["world_size"] = world
    if st.skipped:
        summary["skipped_nonfinite"] = st.skipped
    summary.update(extra)
    result = RunResult(arm.name, out, final, preds, records, summary, val_preds)
    if dist_info()[0] != 0:
        return result
    meta = {**job.metadata, "arm": arm.name, "optimizer": summary["optimizer"],
            "batches": st.batch, "main_updates": summary["main_updates"], "metrics": final,
            "validation": s.validation}  # which rows it never trained on (a later run checks)
    if recorded(model) is not None:
        meta["input"] = recorded(model)  # what eval, compare and a later fine-tune feed it
    rung, stop = summary.get("rung_weights"), summary.get("early_stop") or {}
    if rung:  # the weights are not the last batch's: a rung's (early stopping's best then)
        at = rung["rung_batch"]
        meta["weights_from"] = (f"the search's rung {rung['rung']} (batch {at})"
                                + ("" if at == rung["batch"] else ": early stopping's best "
                                   f"evaluation then (batch {rung['batch']})"))
    elif stop.get("best_batch") is not None:  # or early stopping's best evaluation's
        meta["weights_from"] = stop["checkpoint"]
    keep_previous(out / "model.safetensors")
    ckpt.save_model(out / "model.safetensors", model.state_dict(), meta)
    save_predictions(out / "predictions.safetensors", preds)
    save_predictions(out / "val_predictions.safetensors", val_preds, "validation")
    summary["checkpoint"] = str((out / "model.safetensors").resolve())  # never cwd-relative
    summary["sha256"] = sha256_file(out / "model.safetensors")
    summary.update(pretrained_folder(unwrap(model), out))  # a transformers model: out/hf too
    summary["files_sha256"] = {f: sha256_file(out / f)  # what compare may reuse, checked first
                               for f in ("predictions.safetensors", "val_predictions.safetensors",
                                         "metrics.jsonl")
                               if (out / f).exists()}
    write_json(out / "summary.json", summary)
    for f in state_files(out):
        f.unlink(missing_ok=True)
    return result
