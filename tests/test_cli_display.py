"""What the command line shows: progress lines without a terminal (at clock-given moments, with
loss, lr, samples/s and ETA), `--log-format json`, tables that are never cut, one-line usage
errors, and help: a text for every parameter, no `<bool>` tags, examples for every command."""

from __future__ import annotations

import io
import json

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.cli.console import Display, RichEvents, show, summary_table

cli = CliRunner()
REC = {"batch": 4, "old": {"mse": 0.5}, "new": {"mse": 0.25}, "train_loss": 0.123456,
       "lr": 0.0005, "samples_per_s": 12345.6, "grad_norm": 1.0}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def drive(fmt: str, last: int) -> None:
    """A 20-batch run, 7 s a batch by the clock, an evaluation at batch 4, lines every 30 s,
    that ends at batch `last` (as an early-stopped arm would)."""
    clock = Clock()
    ev = RichEvents("goodfit", {"old": "mse", "new": "mse"}, Display(fmt, 30.0, clock),
                    live=False)
    ev.on_start(20, 0)
    for b in range(1, last + 1):
        clock.t += 7.0
        ev.on_batch(b)
        if b == 4:
            ev.on_evaluation(REC)
    ev.on_end()


def test_plain_progress_lines_every_n_seconds_of_the_clock(capsys):
    """Lines at 35 s (batch 5) and 70 s (batch 10), not at every batch or evaluation; the end
    adds none when its batch was just shown. ETA = 7 s a batch x batches left."""
    drive("text", 10)
    lines = capsys.readouterr().out.splitlines()
    info = "loss 0.1235  lr 0.0005  12,346 samples/s  old mse 0.5  new mse 0.25"
    assert lines == [f"goodfit: batch 5/20  {info}  eta 1m45s",
                     f"goodfit: batch 10/20  {info}  eta 1m10s"]
    drive("text", 12)  # ends at 84 s, 14 s after the last line: the end is said
    assert capsys.readouterr().out.splitlines()[-1] == f"goodfit: batch 12/20  {info}  eta 0m56s"


def test_json_log_format_is_one_object_per_line(capsys):
    drive("json", 10)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events] == ["start", "evaluation", "progress", "progress", "end"]
    assert events[0] == {"event": "start", "run": "goodfit", "total": 20, "done": 0}
    assert events[1]["train_loss"] == 0.123456 and events[1]["new"] == {"mse": 0.25}
    assert events[2]["batch"] == 5 and events[2]["eta_s"] == 105.0
    assert events[2]["samples_per_s"] == 12345.6 and events[2]["lr"] == 0.0005
    assert events[4] == {"event": "end", "run": "goodfit", "batch": 10, "total": 20,
                         "wall_s": 70.0}


REPORT = {
    "tasks": {"old": {"primary": "mse"}, "new": {"primary": "mse"}},
    "base_metrics": {"old": {"mse": 0.0123456}, "new": {"mse": 1.23456}},
    "arms": [{"name": "goodfit:lookahead_adamw", "flips": {"old": {"nfr": 0.0123}},
              "metrics": {"old": {"mse": 0.0234567},
                                                   "new": {"mse": 0.345678}},
              "delta": {"old": {"mse": {"value": 0.0111111, "better": False}},
                        "new": {"mse": {"value": -0.888882, "better": True}}},
              "provenance": {"batches": 1500, "main_updates": 750},
              "gate": {"passed": False}}],
}


@pytest.mark.parametrize("width", [40, 80])
def test_a_table_that_does_not_fit_prints_one_record_per_line(width):
    """At 40 and 80 columns the summary does not fit: each row is one line, no '…', every
    number whole."""
    buf = io.StringIO()
    show(summary_table(REPORT), Console(file=buf, width=width, color_system=None))
    text = buf.getvalue()
    assert "…" not in text
    assert text.splitlines() == [
        "regression report",
        "base: old mse 0.01235, new mse 1.235",
        "goodfit:lookahead_adamw: old mse 0.02346, Δ +0.01111, new mse 0.3457, Δ -0.8889, "
        "batches/upd 1500/750, old NFR 1.23%, gate FAIL"]


def test_a_table_that_fits_is_drawn_as_a_table():
    buf = io.StringIO()
    show(summary_table(REPORT), Console(file=buf, width=120, color_system=None))
    text = buf.getvalue()
    assert "┃ model" in text and "FAIL" in text and "…" not in text


def test_usage_errors_are_one_line_with_exit_2():
    for args, needle in ((["finetune", "--bogus"], "error: No such option: --bogus"),
                         (["eval"], "error: Missing option '--checkpoint'"),
                         (["finetune", "--log-format", "xml"], "error: Invalid value for "
                                                               "'--log-format'")):
        res = cli.invoke(app, args)
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(needle), res.output
        assert "--help')" in lines[0]


def commands(group, path=()):
    """(path, click command) for every command of the app, sub-groups included."""
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if hasattr(cmd, "commands"):
            yield from commands(cmd, (*path, name))


def test_every_parameter_has_help_and_every_command_examples():
    root = typer.main.get_command(app)
    found = list(commands(root))
    assert len(found) >= 11
    for path, cmd in [((), root), *found]:
        assert "Examples:" in (cmd.epilog or ""), f"goodfit {' '.join(path)}: no examples"
        for p in cmd.params:
            assert (getattr(p, "help", None) or "").strip(), \
                f"goodfit {' '.join(path)}: {p.name} has no help text"
        res = cli.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert res.exit_code == 0, res.output
        assert "<bool>" not in res.output and "Examples:" in res.output, path


def test_pretrain_with_log_format_json_prints_only_json_lines(tmp_path):
    """A real run: every stdout line is a JSON object (log lines, the run's events, the table)."""
    tiny = ["data.args.n_train=256", "data.args.n_test=64", "model.args.hidden=[8]",
            "pretrain.steps=6", "eval.every=3", "pretrain.batch_size=64", "device=cpu"]
    res = cli.invoke(app, ["pretrain", "--recipe", "toy", "--out", str(tmp_path / "b"),
                           "--log-format", "json", *tiny])
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("evaluation") == 2 and kinds[-1] == "log" and "table" in kinds
    assert [e["batch"] for e in events if e["event"] == "evaluation"] == [3, 6]
    table = next(e for e in events if e["event"] == "table")
    assert table["rows"][0]["model"] == "base" and float(table["rows"][0]["old mse"]) > 0
