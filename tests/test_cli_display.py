"""What the command line shows: progress lines without a terminal (at clock-given moments, with
loss, lr, samples/s and ETA), `--log-format json`, tables that are never cut, one-line usage
errors, and help: a text for every parameter, no `<bool>` tags, examples for every command."""

from __future__ import annotations

import inspect
import io
import json

import pytest
import typer
from rich.console import Console
from rich.table import Table
from runs import Heard
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


def records(text: str, width: int) -> list[str]:
    """The lines of a table printed one record per line, each record joined again from the
    lines it goes on over (indented by two spaces), none of which is wider than `width`."""
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, lines
    out: list[str] = []
    for line in lines:
        if line.startswith("  ") and out:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


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
    """At 40 and 80 columns the summary does not fit: each row begins a line, no '…', every
    number whole, and no line wider than the console: a record goes on below between two
    cells, indented (before: one 125-character line the terminal wrapped mid-cell)."""
    buf = io.StringIO()
    show(summary_table(REPORT), Console(file=buf, width=width, color_system=None))
    text = buf.getvalue()
    assert "…" not in text
    assert records(text, width) == [
        "regression report (test split)",
        "base: old mse 0.01235, new mse 1.235",
        "goodfit:lookahead_adamw: old mse 0.02346, Δ +0.01111 ▲ worse, new mse 0.3457, "
        "Δ -0.8889 ▼ better, batches/upd 1500/750, old NFR 1.23 %, gate FAIL"]
    if width == 80:  # broken between two cells, never within one
        assert text.splitlines()[2:] == [
            "goodfit:lookahead_adamw: old mse 0.02346, Δ +0.01111 ▲ worse, new mse 0.3457,",
            "  Δ -0.8889 ▼ better, batches/upd 1500/750, old NFR 1.23 %, gate FAIL"]


def test_the_demo_summary_with_three_arms_is_a_table_at_80_columns():
    """Base and three arms with a Δ marker each ("▲ worse") fit 80 columns as a table (no
    outer frame, two spaces between columns); before, 85 columns, so one record per line."""
    arms = [{**REPORT["arms"][0], "name": n, "flips": {}, "gate": None}
            for n in ("rmsprop", "head_only", "goodfit")]
    buf = io.StringIO()
    show(summary_table({**REPORT, "arms": arms}), Console(file=buf, width=80, color_system=None))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in buf.getvalue()
    assert lines[1].split() == ["model", "old", "mse", "Δ", "new", "mse", "Δ", "batches/upd"]
    assert lines[-1].split() == ["goodfit", "0.02346", "+0.01111", "▲", "worse", "0.3457",
                                 "-0.8889", "▼", "better", "1500/750"]


def test_a_table_that_fits_is_drawn_as_a_table():
    buf = io.StringIO()
    show(summary_table(REPORT), Console(file=buf, width=120, color_system=None))
    text = buf.getvalue()
    assert text.splitlines()[1].startswith("model  ") and "FAIL" in text and "…" not in text


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
        wrapped = [p for p in inspect.cleandoc(cmd.help or "").split("\n\n") if "\n" in p]
        assert not wrapped, f"goodfit {' '.join(path)}: a paragraph of its help is broken by " \
            f"hand, which --help prints as is: {wrapped[0][:60]!r}"


def test_no_help_text_is_eaten_as_rich_markup():
    """--help renders each text with Rich markup on: a bracketed word that reads as a tag is
    dropped (`data motion-synth --test-scenes` printed "Test scenes ." for "Test scenes
    [default: scenes/10].")."""
    from rich.text import Text

    root = typer.main.get_command(app)
    for path, cmd in [((), root), *commands(root)]:
        texts = [cmd.help or "", cmd.epilog or "", *(getattr(p, "help", None) or ""
                                                      for p in cmd.params)]
        for text in texts:
            assert Text.from_markup(text).plain == text, f"goodfit {' '.join(path)}: {text!r}"
    res = cli.invoke(app, ["data", "motion-synth", "--help"], env={"COLUMNS": "200"})
    assert "scenes/10" in res.output, res.output


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


def test_a_json_table_keeps_every_column_when_headers_repeat(capsys):
    """Each task's change is headed "Δ": in a json 'table' event each is named with the column
    before it, so the old task's change is not overwritten by the new task's."""
    from rich.table import Table

    from goodfit_cli.cli import console

    t = Table(title="t")
    for h in ("model", "old accuracy", "Δ", "new accuracy", "Δ"):
        t.add_column(h)
    t.add_row("adamw", "0.775", "-0.19", "0.91", "+0.91")
    before = console.DISPLAY.format
    console.DISPLAY.format = "json"
    try:
        console.show(t)
    finally:
        console.DISPLAY.format = before
    [event] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert event["rows"] == [{"model": "adamw", "old accuracy": "0.775", "old accuracy Δ": "-0.19",
                              "new accuracy": "0.91", "new accuracy Δ": "+0.91"}]


def folder_of(root, n, size=(6, 5)):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(n):
        p = root / ("a" if i % 2 else "b") / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)
    from goodfit_cli.data.imagefolder import _open
    from goodfit_cli.data.imagestream import ImageSamples
    return ImageSamples(_open(str(root), "old.test", None, "bilinear"), {0: 0, 1: 1},
                        "old.test", None)


@pytest.mark.parametrize("threads", [1, 3])
def test_reading_an_image_folder_reports_its_progress(tmp_path, threads):
    """An image folder read into memory says what it reads and how far it got, in order, to
    the command's listener (every 16 images one at a time; after each run of images with
    threads), ending at every image; with no listener nothing is called; a bad image ends the
    work at the images read before it."""
    from goodfit_cli.core.progress import listening

    samples = folder_of(tmp_path, 40)
    heard = Heard()
    with listening(heard):
        samples.load(threads=threads)
    assert heard.calls[0] == ("start", "reading old.test images", 40) and heard.calls[-1] == ("end", 40)
    done = [c[1] for c in heard.calls if c[0] == "advance"]
    assert done == sorted(done) and done[-1] == 40
    assert done[:-1] == ([16, 32] if threads == 1 else [4 * k for k in range(1, 10)])
    samples.load(threads=threads)  # outside the block: nobody listens (and nothing breaks)
    assert heard.calls[-1] == ("end", 40)
    (tmp_path / "b" / "020.png").write_bytes(b"not a png")  # the 31st read (a/ comes first)
    with listening(heard), pytest.raises(Exception, match="020.png"):
        samples.load(threads=threads)
    assert heard.calls[-1] == ("end", 16 if threads == 1 else 28)


def test_reading_progress_lines_and_json(capsys):
    """Without a terminal: nothing for a read shorter than --progress-every, nor for one of
    fewer than min_items; a long one says a line every every_s seconds of the clock with its
    ETA, then the time it took; json: the same moments as 'work' events."""
    from goodfit_cli.cli.console import WorkProgress

    def read(fmt, total, per_item_s):
        clock = Clock()
        p = WorkProgress(Display(fmt, 30.0, clock), live=False, min_items=100)
        p.start("reading old.test images", total)
        for done in range(16, total + 1, 16):
            clock.t += 16 * per_item_s
            p.advance(done)
        p.end(total - total % 16)

    read("text", 480, 0.01)  # 4.8 s
    read("text", 96, 1.0)  # 96 s but under min_items
    assert capsys.readouterr().out == ""
    read("text", 480, 0.25)  # 4 s per 16 images: lines at 32 s, 64 s, 96 s; ends at 120 s
    assert capsys.readouterr().out.splitlines() == [
        "reading old.test images: 128/480  eta 1m28s",
        "reading old.test images: 256/480  eta 0m56s",
        "reading old.test images: 384/480  eta 0m24s",
        "reading old.test images: 480/480 in 2m00s"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RANK", "1")  # torchrun's rank 1: silent
        read("text", 480, 0.25)
    assert capsys.readouterr().out == ""
    read("json", 480, 0.25)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["event"], e["done"], e["wall_s"]) for e in events] == [
        ("work", 128, 32.0), ("work", 256, 64.0), ("work", 384, 96.0), ("work", 480, 120.0)]


def test_a_read_that_stops_short_never_reads_as_finished(capsys):
    """A read interrupted (Ctrl-C, a bad image) ends with 'stopped at' in text and
    "stopped": true in json, not with the line a finished read ends with."""
    from goodfit_cli.cli.console import WorkProgress

    def read(fmt):
        clock = Clock()
        p = WorkProgress(Display(fmt, 30.0, clock), live=False, min_items=100)
        p.start("reading old.test images", 480)
        for done in (160, 320):
            clock.t += 40
            p.advance(done)
        p.end(320)
        return capsys.readouterr().out.splitlines()

    assert read("text") == ["reading old.test images: 160/480  eta 1m20s",
                            "reading old.test images: 320/480  eta 0m40s",
                            "reading old.test images: stopped at 320/480 after 1m20s"]
    events = [json.loads(line) for line in read("json")]
    assert [(e["done"], e.get("stopped")) for e in events] == [(160, None), (320, None),
                                                               (320, True)]


def test_a_work_bar_on_a_terminal_waits_its_delay_and_ends_with_the_work(monkeypatch):
    """On a terminal, work shorter than the delay (2 s of the clock) draws nothing (a short
    evaluation inside a training); longer work draws a transient bar from that moment, stopped
    when it ends; while another live display (a training's bar) is drawn, the work draws inside
    it (rich >= 14) or nothing (rich 13 refuses a second live display), never failing, and the
    training's bar stays."""
    from rich.progress import Progress

    from goodfit_cli.cli import console

    term = Console(file=io.StringIO(), force_terminal=True, width=80)
    monkeypatch.setattr(console, "out", term)
    clock = Clock()
    p = console.WorkProgress(Display("text", 30.0, clock), live=True, min_items=10)

    def work(seconds_per_step):
        p.start("evaluating the old task", 40)
        for done in (10, 20, 30):
            clock.t += seconds_per_step
            p.advance(done)
            if done == 20:
                bar = p.progress
        p.end(40)
        return bar

    assert work(0.5) is None and term.file.getvalue() == ""
    bar = work(1.5)  # 3 s at 20 of 40: drawn
    assert bar is not None and not bar.live.is_started and p.progress is None
    training = Progress(console=term)
    training.start()
    try:
        bar = work(1.5)
        assert bar is None or not bar.live.is_started
        assert training.live.is_started
    finally:
        training.stop()


def test_an_evaluation_reports_its_progress_batch_by_batch():
    """Each task's evaluation says what it evaluates and how far it got after every batch of
    eval.batch_size, ending at every sample; the numbers equal an evaluation nobody listens to."""
    from goodfit_cli.core.progress import listening
    from goodfit_cli.trainer.session import Place, open_session
    from goodfit_cli.workflows.recipes import load

    s = open_session(load("toy", ["data.args.n_train=256", "data.args.n_test=128",
                                  "model.args.hidden=[8]", "eval.batch_size=50"]), Place("cpu"),
                     join=False)
    model = s.model()
    heard = Heard()
    with listening(heard):
        metrics = s.evaluate(model)
    assert heard.calls == [("start", "evaluating the old task", 128), ("advance", 50),
                           ("advance", 100), ("advance", 128), ("end", 128),
                           ("start", "evaluating the new task", 128), ("advance", 50),
                           ("advance", 100), ("advance", 128), ("end", 128)]
    assert metrics == s.evaluate(model)


def test_the_terminal_states_the_gate_first_and_the_verdicts_numbers_on_both_splits(
        monkeypatch, tmp_path):
    """The gate line comes before the table; the verdict names the split that chose it, gives
    the shipped point's numbers on validation and on test, and says when that point fails the
    gate on test (the split the exit code reads)."""
    import goodfit_cli.cli.base as base
    import goodfit_cli.cli.console as console

    buf = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buf, width=200, color_system=None))
    monkeypatch.setattr(console.DISPLAY, "format", "text")  # whatever a test before chose
    ship = {"name": "rmsprop", "val": {"old": 0.473141, "new": 0.469792},
            "test": {"old": 0.506081, "new": 0.509431}, "passes_gate_test": False}
    report = {**REPORT, "gate_limits": "old mse max 0.48 (from command-line flags)",
              "verdict": {"ship": ship, "metrics": ["mse", "mse"]}}
    base.print_report(report, tmp_path)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "gate: old mse max 0.48 (from command-line flags)"
    assert lines[1].strip() == "regression report (test split)"
    said = next(l for l in lines if l.startswith("verdict"))
    assert said == ("verdict (chosen on validation): ship rmsprop (validation: old mse 0.47314, "
                    "new mse 0.46979; test: old mse 0.50608, new mse 0.50943); it FAILS the gate "
                    "on test (the split the exit code reads)")
    ship["passes_gate_test"] = True
    buf.seek(0), buf.truncate()
    base.print_report(report, tmp_path)
    assert "FAILS" not in buf.getvalue()


def test_a_table_rich_would_cut_short_prints_one_record_per_line():
    """Rich measures this table as fitting 80 columns (minimum 80) yet draws 'goodfit+e…' and
    'batches/u…': it is printed one record per line instead, every cell whole."""
    t = Table(title="regression report (test split)")
    for h in ("model", "old mse", "Δ", "new mse", "Δ", "batches/upd", "gate"):
        t.add_column(h, justify="right")
    t.add_row("goodfit+ema", "0.6159", "+5.516e-05", "0.5038", "-3.801e-05", "20/10", "pass")
    t.add_row("adamw+ema", "0.6165", "+0.0006601", "0.5035", "-0.0003901", "20/20", "pass")
    buf = io.StringIO()
    show(t, Console(file=buf, width=80, color_system=None))
    text = buf.getvalue()
    assert "…" not in text
    assert records(text, 80)[1] == ("goodfit+ema: old mse 0.6159, Δ +5.516e-05, new mse 0.5038, "
                                    "Δ -3.801e-05, batches/upd 20/10, gate pass")


def test_a_very_long_eta_reads_in_days_or_years():
    """A run of 10**12 batches showed `eta 1234273h52m`, hours no reader converts at a glance
    into 140 years; from two days an ETA reads in days and hours, from a year in years."""
    from goodfit_cli.cli.console import _duration

    assert [_duration(s) for s in (56, 3 * 3600 + 120, 47 * 3600)] == ["0m56s", "3h02m",
                                                                      "47h00m"]
    assert _duration(3 * 86400 + 5 * 3600 + 59) == "3d05h"
    assert _duration(1234273 * 3600) == "141 years"
    assert _duration(1.8e20 * 3600) == "2.1e+16 years"



def test_the_search_summary_says_when_its_recommendation_fails_the_gate_on_test(
        monkeypatch, tmp_path):
    """The report says '(gate on test: FAILS)' beside the recommendation; the terminal's last
    line says so too (before: only the trial and where it was exported)."""
    import goodfit_cli.workflows.search as search

    rec = {"number": 0, "arm": "rmsprop", "params": {}, "passes_gate_test": False}
    rep = {"recommendation": rec, "complete": 1, "pruned": 0, "rule": "new",
           "exported": "run/recommended/model.safetensors"}
    monkeypatch.setattr(search, "search", lambda *a, **k: rep)
    args = ["search", "--recipe", "toy", "--base", "b.safetensors", "--trials", "1", "--out",
            str(tmp_path / "s"), "--max-old-drop", "0.05"]
    out = cli.invoke(app, args).output
    assert "it FAILS the gate on test: see the report" in out, out  # no violations recorded
    rec["passes_gate_test"] = True
    assert "FAILS" not in cli.invoke(app, args).output


def test_the_terminal_prints_rates_as_the_report_does():
    """accuracy 0.6 with a change of +0.075 reads '60.00 %' and '+7.50 pts', as in report.md
    (before: '0.6' and '+0.075' beside an NFR in %); an unchanged metric gets no colour"""
    rep = {"tasks": {"old": {"primary": "accuracy"}, "new": {"primary": "accuracy"}},
           "base_metrics": {"old": {"accuracy": 1.0}, "new": {"accuracy": 0.525}},
           "arms": [{"name": "sgd", "flips": {"old": {"nfr": 0.0}},
                     "metrics": {"old": {"accuracy": 1.0}, "new": {"accuracy": 0.6}},
                     "delta": {"old": {"accuracy": {"value": 0.0, "better": False}},
                               "new": {"accuracy": {"value": 0.075, "better": True}}},
                     "gate": None}]}
    buf = io.StringIO()
    show(summary_table(rep), Console(file=buf, width=40, color_system=None))
    assert records(buf.getvalue(), 40)[1:] == [
        "base: old accuracy 100.00 %, new accuracy 52.50 %",
        "sgd: old accuracy 100.00 %, Δ +0.00 pts = same, new accuracy 60.00 %, Δ +7.50 pts ▲ "
        "better, batches/upd -, old NFR 0.00 %"]
    cells = summary_table(rep).columns[2]._cells
    assert cells[1] == "+0.00 pts = same"  # no [red]: the report says '= (same)'


def test_the_verdict_line_prints_a_rate_in_percent(monkeypatch, tmp_path):
    """the shipped point's accuracy reads '95.12 %' as in the report's ship line, not 0.95123"""
    import goodfit_cli.cli.base as base
    import goodfit_cli.cli.console as console

    buf = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buf, width=200, color_system=None))
    monkeypatch.setattr(console.DISPLAY, "format", "text")
    ship = {"name": "sgd", "val": {"old": 0.95123, "new": 0.5}, "test": {"old": 0.9, "new": 0.6}}
    report = {"tasks": {"old": {"primary": "accuracy"}, "new": {"primary": "accuracy"}},
              "base_metrics": {"old": {"accuracy": 1.0}, "new": {"accuracy": 0.5}}, "arms": [],
              "verdict": {"ship": ship, "metrics": ["accuracy", "accuracy"]}}
    base.print_report(report, tmp_path)
    said = next(l for l in buf.getvalue().splitlines() if l.startswith("verdict"))
    assert said == ("verdict (chosen on validation): ship sgd (validation: old accuracy 95.12 %, "
                    "new accuracy 50.00 %; test: old accuracy 90.00 %, new accuracy 60.00 %)")


def test_the_search_summary_without_a_recommendation_says_passing_is_not_enough(
        monkeypatch, tmp_path):
    """A trial that passes the gate but gains nothing on the new task is not recommended; the last
    line said 'none passes the gate' while the report said 'passes the gate and gains'."""
    import goodfit_cli.workflows.search as search

    rep = {"recommendation": None, "complete": 1, "pruned": 0, "rule": "new",
           "trials": [{"number": 0, "state": "COMPLETE", "feasible": True}]}
    monkeypatch.setattr(search, "search", lambda *a, **k: rep)
    args = ["search", "--recipe", "toy", "--base", "b.safetensors", "--trials", "1", "--out",
            str(tmp_path / "s"), "--max-old-drop", "0.05"]
    out = " ".join(cli.invoke(app, args).output.split())
    assert "recommendation (--rule new): none passes the gate and gains on the new task" in out
    rep["base_outside_gate"] = True
    out = " ".join(cli.invoke(app, args).output.split())
    assert "none passes the gate (the base itself fails it on validation: see the report)" in out


def test_finetune_optimizer_help_says_it_replaces_the_recipes_arms():
    """`--optimizer rmsprop --optimizer goodfit` trains those two arms, not the recipe's
    finetune.arms as well; its help said only "An arm; repeat for more."."""
    res = cli.invoke(app, ["finetune", "--help"], env={"COLUMNS": "200"})
    line = next(x for x in res.output.splitlines() if "--optimizer" in x)
    assert "replaces the recipe's finetune.arms" in line, line


def test_long_log_lines_wrap_at_words_within_the_width_and_json_stays_one_line(monkeypatch):
    """On an 80-column terminal a log line longer than the console (a verdict, a time line, a
    progress line) goes on below, indented, broken after '; ' or ', ' or at a space, never mid-
    word and never past the width (before: printed as one line, which the terminal broke
    anywhere, mid-word); --log-format json stays one record per line."""
    from goodfit_cli.cli import console

    term = Console(file=io.StringIO(), force_terminal=True, width=80, color_system=None)
    monkeypatch.setattr(console, "out", term)
    verdict = ("verdict (chosen on validation): ship 'goodfit' at wise_alpha=0.7: old mse "
               "0.1234 (+0.0100 vs the base, within the gate: max 1.5x); new mse 0.4567 (-0.3012 "
               "vs the base); the best new mse on validation of the 3 arms [/tmp/x]")
    console.log(verdict)
    lines = term.file.getvalue().splitlines()
    assert lines == [
        "verdict (chosen on validation): ship 'goodfit' at wise_alpha=0.7: old mse 0.1234",
        "  (+0.0100 vs the base, within the gate: max 1.5x);",
        "  new mse 0.4567 (-0.3012 vs the base); the best new mse on validation of the 3",
        "  arms [/tmp/x]"]
    assert " ".join(line.strip() for line in lines) == verdict  # no word cut, no text lost
    term.file.seek(0), term.file.truncate()
    ev = RichEvents("an-arm-with-a-long-name", {"old": "mse", "new": "mse"},
                    Display("text", 30.0, Clock()), live=False)
    ev.on_start(20, 0)
    ev.on_batch(1), ev.on_evaluation(REC), ev.on_end()
    lines = term.file.getvalue().splitlines()
    assert lines == ["an-arm-with-a-long-name: batch 1/20  loss 0.1235  lr 0.0005  "
                     "12,346 samples/s", "  old mse 0.5  new mse 0.25  eta 0m00s"]
    term.file.seek(0), term.file.truncate()
    monkeypatch.setattr(console.DISPLAY, "format", "json")
    console.log(verdict)
    (line,) = term.file.getvalue().splitlines()
    assert json.loads(line) == {"event": "log", "message": verdict}
