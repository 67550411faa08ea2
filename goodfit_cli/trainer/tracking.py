"""Experiment tracking for one run: metrics.csv always, TensorBoard and MLflow when asked.

Each evaluation record (train loss, main and reference lr, main updates, gradient norm,
samples/s, both tasks' metrics, GoodFit's conflict rate and projection size, EMA metrics) is
flattened to `name -> number` ("old/accuracy", "goodfit/conflict_rate") and logged at the
record's batch. The CSV is rewritten whole through io.atomic at every record; TensorBoard
(`torch.utils.tensorboard`, extra `goodfit[tensorboard]`) writes events under
`<arm>/tensorboard/`; MLflow (extra `goodfit[mlflow]`) logs to a file store under the run
folder (SQLite, `<run>/mlflow.db`: MLflow 3 retired its plain-file store) unless the recipe
gives a tracking URI. Those two files are the
libraries' own append-only logs, written by their writers. A resumed training evaluates again
the batches after its newest state: TensorBoard's writer then purges the steps after it (its
`purge_step`), and MLflow, whose metrics cannot be deleted, is not sent a (metric, step) the
run already holds (the same value: a resume is exact), so each evaluation is logged once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.atomic import atomic_write
from goodfit_cli.training.callbacks import Callback


def flatten(rec: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{"old": {"mse": 1.0}, "lr": 0.1} -> {"old/mse": 1.0, "lr": 0.1}; non-numbers dropped."""
    out: dict[str, float] = {}
    for k, v in rec.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = float(v)
    return out


class Tracker:
    """Where one run's records go. `spec`: the recipe's `tracking` section."""

    def __init__(self, out: Path, spec: dict[str, Any], run_name: str) -> None:
        self.out = out
        self.tb = self.mlflow = self.tb_writer = None
        self.logged: int | None = None  # the batch of the last record logged (0: none yet)
        self.resumed: int | None = None  # a resumed training's last record logged before
        self.held: set[tuple[str, int]] | None = None  # what the resumed MLflow run holds
        if spec.get("tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("tracking.tensorboard: TensorBoard is not installed; "
                                "pip install 'goodfit[tensorboard]'") from None
            self.tb_writer = SummaryWriter  # made at the first record: a resume's purge_step
        if spec.get("mlflow"):
            try:
                import mlflow
            except ImportError:
                raise UserError("tracking.mlflow: MLflow is not installed; "
                                "pip install 'goodfit[mlflow]'") from None
            uri = spec.get("mlflow_uri") or f"sqlite:///{(out.parent / 'mlflow.db').resolve()}"
            self.mlflow = mlflow.MlflowClient(tracking_uri=uri)
            name = spec.get("mlflow_experiment") or "goodfit"
            exp = self.mlflow.get_experiment_by_name(name)
            self.exp_id = exp.experiment_id if exp else self.mlflow.create_experiment(name)
        self.run_name = run_name
        self.run_id: str | None = None  # the MLflow run: made at the first record, or resumed

    def mlflow_run(self) -> str:
        """The arm's MLflow run: the one a resumed training continues (`run_id`, from its
        saved state), else a new one, made once."""
        if self.run_id is None:
            self.run_id = self.mlflow.create_run(self.exp_id, run_name=self.run_name).info.run_id
        return self.run_id

    def log(self, rec: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Log `rec`; the CSV is rewritten from `history` (every record so far, `rec` last)."""
        step = int(rec["batch"])
        values = flatten({k: v for k, v in rec.items() if k != "batch"})
        rows = [{"batch": int(r["batch"]), **flatten({k: v for k, v in r.items() if k != "batch"})}
                for r in history]
        cols = ["batch", *sorted({k for r in rows for k in r} - {"batch"})]
        buf = io.StringIO()
        w = csv.DictWriter(buf, cols, restval="")
        w.writeheader()
        w.writerows(rows)
        atomic_write(self.out / "metrics.csv", buf.getvalue())
        self.logged = step
        if self.tb_writer is not None:
            if self.tb is None:  # a resume's events after its state's record: dropped
                self.tb = self.tb_writer(str(self.out / "tensorboard"), purge_step=None
                                         if self.resumed is None else self.resumed + 1)
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.mlflow is not None:
            held = self.mlflow_held()
            for k, v in values.items():
                key = k.replace("@", "_at_")
                if (key, step) not in held:
                    self.mlflow.log_metric(self.mlflow_run(), key, v, step=step)

    def mlflow_held(self) -> set[tuple[str, int]]:
        """The (metric, step) pairs a resumed MLflow run holds after the resumed record (read
        once); empty for a run this command began."""
        if self.held is None:
            self.held = set()
            if self.run_id is not None and self.resumed is not None:
                run = self.mlflow.get_run(self.run_id)
                self.held = {(k, m.step) for k in run.data.metrics
                             for m in self.mlflow.get_metric_history(self.run_id, k)
                             if m.step > self.resumed}
        return self.held

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.mlflow is not None:
            self.mlflow.set_terminated(self.mlflow_run())


class Tracking(Callback):
    """The tracker as a training callback: logs every record, closes at the end. Its files
    are rewritten from the records; its state is the MLflow run it logs to, so a resumed
    training goes on logging to the same run (before: a second run, holding only the records
    after the resume, beside the first left RUNNING)."""

    name = "tracking"

    def __init__(self, out: Path, spec: dict[str, Any], run_name: str) -> None:
        self.tracker = Tracker(out, spec, run_name)

    def on_record(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self.tracker.log(record, history)

    def on_end(self, model: Any) -> dict[str, Any]:
        self.tracker.close()
        return {}

    def state_dict(self) -> dict[str, Any]:
        run = self.tracker.run_id if self.tracker.mlflow is not None else None
        return {**({"mlflow_run_id": run} if run else {}), "logged": self.tracker.logged or 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        run = state.get("mlflow_run_id")
        if self.tracker.mlflow is not None and isinstance(run, str) and run:
            self.tracker.run_id = run
        logged = state.get("logged")  # absent in an older goodfit's state: nothing purged
        if isinstance(logged, int) and not isinstance(logged, bool):
            self.tracker.resumed = self.tracker.logged = logged
