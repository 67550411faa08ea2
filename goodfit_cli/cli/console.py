"""The terminal: Rich consoles, progress for the engine's events, and summary tables.

Only the CLI layer draws; the engine emits events and the report layer returns data. Three
ways to show a run (`Display`): a progress bar with train loss, lr, samples/s and ETA on a
terminal; one plain line every `every_s` seconds without one (CI logs); and `--log-format json`,
one JSON object per line. A table that does not fit the width is printed one record per line,
so no cell (no number) is ever cut.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from goodfit_cli.cli.lines import wrap_lines
from goodfit_cli.core.text import printable
from goodfit_cli.core.units import RATE, delta_text, marker, value_text

out = Console()
err = Console(stderr=True)


@dataclass
class Display:
    """How runs are shown: `format` text or json; without a terminal (or in json) a progress
    line every `every_s` seconds of `clock`."""

    format: str = "text"
    every_s: float = 30.0
    clock: Callable[[], float] = time.monotonic


DISPLAY = Display()


def emit(event: str, **fields: Any) -> None:
    """One JSON object on one line of stdout (--log-format json)."""
    out.file.write(json.dumps({"event": event, **fields}, default=str) + "\n")
    out.file.flush()


def _duration(s: float) -> str:
    """A time as minutes and seconds, hours and minutes, from two days on days and hours, and
    from a year on years: an ETA of a run far too long reads as such (not as 1234273h52m)."""
    if s >= 365.25 * 86400:
        years = s / (365.25 * 86400)
        return f"{years:,.0f} years" if years < 1e6 else f"{years:.2g} years"
    s = int(round(s))
    if s >= 2 * 86400:
        return f"{s // 86400}d{s // 3600 % 24:02d}h"
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class RichEvents:
    """Draws the engine's events: a progress bar on a terminal; otherwise one line (text or
    JSON) every `display.every_s` seconds and one at the end."""

    def __init__(self, label: str, primary: dict[str, str], display: Display | None = None,
                 live: bool | None = None, units: dict[str, str] | None = None) -> None:
        self.label, self.primary = label, primary
        # each task's primary metric's unit (core.units): "share" (shown in %), "m", ""
        self.units = {k: (units or {}).get(t, "") for t in primary for k in (t, f"val {t}")}
        self.display = display or DISPLAY
        self.json = self.display.format == "json"
        self.live = (out.is_terminal if live is None else live) and not self.json
        self.progress: Progress | None = None
        self.task = None
        self.total = self.batch = self.first = 0
        self.shown = -1  # the batch of the last progress line
        self.t0 = self.last = 0.0
        self.info: dict[str, Any] = {}  # the last record's train loss, lr, samples/s, metrics

    def on_start(self, total_batches: int, done: int) -> None:
        self.total, self.batch, self.first = total_batches, done, done
        self.t0 = self.last = self.display.clock()
        if self.json:
            emit("start", run=self.label, total=total_batches, done=done)
        if self.live:
            self.progress = Progress(TextColumn(f"[bold]{escape(self.label)}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                     TimeRemainingColumn(), console=out, transient=False)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total_batches, completed=done,
                                               info="")

    def on_batch(self, batch: int) -> None:
        self.batch = batch
        if self.progress is not None:
            self.progress.update(self.task, completed=batch)
            return
        now = self.display.clock()
        if now - self.last >= self.display.every_s:
            self.last = now
            self._line(now)

    def on_evaluation(self, rec: dict[str, Any]) -> None:
        self.info = {"loss": rec.get("train_loss"), "lr": rec.get("lr"),
                     "samples/s": rec.get("samples_per_s"),
                     **{f"{t} {m}": rec[t][m] for t, m in self.primary.items()
                        if m in (rec.get(t) or {})},  # test: eval.curves test+val only
                     **{f"val {t} {m}": rec["val"][t][m] for t, m in self.primary.items()
                        if m in ((rec.get("val") or {}).get(t) or {})}}
        if self.json:
            emit("evaluation", run=self.label, **rec)
        if self.progress is not None:
            self.progress.update(self.task, info=escape(self._info()))

    def eta_s(self, now: float) -> float | None:
        """Seconds left at the pace since the start (None before a batch is done)."""
        done = self.batch - self.first
        return (now - self.t0) / done * (self.total - self.batch) if done > 0 else None

    def _info(self) -> str:
        parts = []
        for k, v in self.info.items():
            if v is None:
                continue
            if k == "samples/s":
                parts.append(f"{v:,.0f} samples/s")
            elif k in ("loss", "lr"):
                parts.append(f"{k} {v:.3g}" if k == "lr" else f"{k} {v:.4g}")
            else:  # "old accuracy 91.25 %", "val new ade@8s 7.945 m": as the reports show it
                parts.append(f"{k} {value_text(v, self.units.get(k.rsplit(' ', 1)[0], ''))}")
        return "  ".join(parts)

    def _line(self, now: float) -> None:
        eta, self.shown = self.eta_s(now), self.batch
        if self.json:
            emit("progress", run=self.label, batch=self.batch, total=self.total,
                 eta_s=None if eta is None else round(eta, 1),
                 **{k.replace(" ", "_").replace("/", "_per_"): v for k, v in self.info.items()})
            return
        text = f"{self.label}: batch {self.batch}/{self.total}"
        text += f"  {self._info()}" if self.info else ""
        text += f"  eta {_duration(eta)}" if eta is not None and self.batch < self.total else ""
        say(Text(text))

    def on_end(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            return
        now = self.display.clock()
        if self.json:
            emit("end", run=self.label, batch=self.batch, total=self.total,
                 wall_s=round(now - self.t0, 3))
        elif self.shown != self.batch:  # where the run ended, unless just said
            self._line(now)


class WorkProgress:
    """Draws core/progress.py's work (reading an image folder, evaluating a large split) of at
    least `min_items` items: on a terminal a transient bar once it has lasted `delay_s` seconds
    of the clock (a short evaluation inside a training flashes nothing; none while another live
    display refuses it: rich 13); without one a line every `display.every_s` seconds while it
    lasts (nothing for work done sooner) and a last line with its time once a line was said;
    json: 'work' events at the same moments. Under torchrun, rank 0 only."""

    def __init__(self, display: Display | None = None, live: bool | None = None,
                 min_items: int = 256, delay_s: float = 2.0) -> None:
        self.display, self._live, self.min_items = display or DISPLAY, live, min_items
        self.delay_s = delay_s
        self.active, self.said = False, False
        self.progress: Progress | None = None

    def start(self, what: str, total: int) -> None:
        self.what, self.total, self.said = what, total, False
        # torchrun's other ranks do the same work: only rank 0 speaks, as for the training
        self.active = total >= self.min_items and os.environ.get("RANK", "0") == "0"
        self.json = self.display.format == "json"  # read now: a command sets it after startup
        self.bar = (self.active and not self.json
                    and (out.is_terminal if self._live is None else self._live))
        self.t0 = self.last = self.display.clock()
        self.progress = None

    def _draw(self, done: int) -> None:
        from rich.errors import LiveError

        bar = Progress(TextColumn(escape(self.what)), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn(), console=out, transient=True)
        try:
            bar.start()
        except LiveError:  # another live display (rich 13): this work is shown by none
            self.active = False
            return
        self.progress, self.task = bar, bar.add_task(self.what, total=self.total,
                                                     completed=done)

    def advance(self, done: int) -> None:
        if not self.active:
            return
        if self.progress is not None:
            self.progress.update(self.task, completed=done)
            return
        now = self.display.clock()
        if self.bar:
            if now - self.t0 >= self.delay_s and done < self.total:
                self._draw(done)
        elif now - self.last >= self.display.every_s and done < self.total:  # the end says it
            self.last = now
            self._line(done, now)

    def end(self, done: int) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        elif self.active and self.said:
            self._line(done, self.display.clock(), final=True)
        self.active = False

    def _line(self, done: int, now: float, final: bool = False) -> None:
        self.said, spent = True, now - self.t0
        if self.json:
            emit("work", what=self.what, done=done, total=self.total, wall_s=round(spent, 3),
                 **({"stopped": True} if final and done < self.total else {}))
            return
        text = f"{self.what}: {done:,}/{self.total:,}"
        if final and done < self.total:  # raised or interrupted: never read as finished
            text = f"{self.what}: stopped at {done:,}/{self.total:,} after {_duration(spent)}"
        elif final:
            text += f" in {_duration(spent)}"
        elif 0 < done < self.total:
            text += f"  eta {_duration(spent / done * (self.total - done))}"
        say(Text(text))


def log(msg: str, markup: bool = False) -> None:
    """One line of progress; the text (paths, recipe values) is never read as Rich markup."""
    if DISPLAY.format == "json":
        emit("log", message=Text.from_markup(msg).plain if markup else msg)
        return
    say(Text.from_markup(msg) if markup else Text(msg))


def say(text: Text, console: Console | None = None) -> None:
    """Print a line of text: on a terminal (or a width COLUMNS sets), one wider than the console
    is broken at '; ' or ', ' or a space, never past the width (`wrap_lines`), so the terminal
    does not break it mid-word; piped (a CI log, no COLUMNS) it stays one line to grep."""
    console = console or out
    lines = [text]
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        lines = [line for part in text.split("\n", allow_blank=True)
                 for line in wrap_lines(part, console.width)]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _keys(heads: list[str]) -> list[str]:
    """A JSON key per column: a header that repeats ("Δ" after each task's metric) is named
    with the column before it ("old accuracy Δ"), so no column overwrites another."""
    keys = [f"{heads[i - 1]} {h}" if i and heads.count(h) > 1 else h
            for i, h in enumerate(heads)]
    return [k if keys.count(k) == 1 else f"{k} ({i + 1})" for i, k in enumerate(keys)]


def _cuts(console: Console, table: Table, cells: list[str]) -> bool:
    """Whether Rich would end a cell with '…' at the console's width: a table's minimum width
    can fit while Rich still shrinks a column below its longest word."""
    drawn = "".join(s.text for line in console.render_lines(table, console.options, pad=False)
                    for s in line)
    return "…" in drawn and not any("…" in c for c in cells)


def show(table: Table, console: Console | None = None) -> None:
    """Print a table whole: as a table when it fits the console's width, else one record per
    line (`title`, then `first cell: header value, ...`); in json mode one 'table' event."""
    console = console or out
    heads = [Text.from_markup(str(c.header)).plain for c in table.columns]
    rows = list(zip(*(list(c.cells) for c in table.columns)))
    title = Text.from_markup(str(table.title or "")).plain
    if DISPLAY.format == "json" and console is out:
        keys = _keys(heads)
        emit("table", title=title, rows=[{k: Text.from_markup(str(c)).plain for k, c in
                                          zip(keys, row)} for row in rows])
        return
    wide = console.options.update_width(10 ** 5)
    if Measurement.get(console, wide, table).minimum <= console.width and not _cuts(
            console, table, heads + [str(c) for row in rows for c in row]):
        console.print(table)
        return
    if title:
        console.print(escape(title), highlight=False, soft_wrap=True)
    for row in rows:  # cells are markup (colours); headers are plain text
        cells = [f"{escape(h)} {c}" for h, c in zip(heads[1:], row[1:]) if str(c)]
        for line in _record_lines(str(row[0]), cells, console.width):
            console.print(line, highlight=False, soft_wrap=True)


def _record_lines(first: str, cells: list[str], width: int) -> list[str]:
    """One record, `first: cell, cell, ...`, broken between cells so that no line is wider
    than `width` (the terminal would wrap it mid-cell): a line that is full goes on below,
    indented by two spaces. A cell wider than a line alone stays whole on its own line."""
    lines, line = [], f"{first}:" if cells else first
    for i, cell in enumerate(cells):
        last = "" if i == len(cells) - 1 else ","  # a line that goes on ends with its comma
        if Text.from_markup(f"{line} {cell}{last}").cell_len <= width or not line.strip():
            line = f"{line} {cell}{last}"
        else:
            lines.append(line)
            line = f"  {cell}{last}"
    return [*lines, line]


def metrics_table(title: str, rows: list[tuple[str, dict]], primary: dict[str, str],
                  units: dict[str, str] | None = None) -> Table:
    """Each row's primary metrics, as the reports show them (`units`: the unit per task)."""
    t = Table(title=escape(printable(title)))  # it holds the recipe's name
    t.add_column("model")
    for task in ("old", "new"):
        t.add_column(f"{task} {primary[task]}", justify="right")
    for name, m in rows:
        t.add_row(escape(printable(name)), *(value_text(m[task].get(primary[task]),
                                                        (units or {}).get(task, ""))
                                             for task in ("old", "new")))
    return t


def _delta(d: dict, unit: str) -> str:
    """A Δ cell: the change, and a marker that reads without colour ("▼ better")."""
    arrow, word = marker(d.get("better"), d["value"])
    colour = {"better": "green", "worse": "red"}.get(word)
    text = f"{delta_text(d['value'], unit)} {arrow}{f' {word}' if word else ''}"
    return f"[{colour}]{escape(text)}[/]" if colour else escape(text)


def summary_table(report: dict[str, Any]) -> Table:
    """Base and arms on both tasks in their units; each Δ says better or worse in words (and
    in colour: green better, red worse)."""
    primary = {t: report["tasks"][t]["primary"] for t in ("old", "new")}
    arms = report["arms"]
    has_flips = any((a.get("flips") or {}).get("old") for a in arms)
    has_gate = any(a.get("gate") for a in arms)
    from goodfit_cli.report.reading import unit_in  # once a report exists (it imports torch)

    units = {t: unit_in(report, t, primary[t]) for t in primary}  # an older report: declared
    # no outer frame and two spaces between columns: base and three arms fit 80 columns
    t = Table(title="regression report (test split)", box=box.SIMPLE_HEAD, show_edge=False,
              pad_edge=False, padding=(0, 1, 0, 0))
    t.add_column("model", no_wrap=True)
    for task in ("old", "new"):
        t.add_column(f"{task} {primary[task]}", justify="right", no_wrap=True)
        t.add_column("Δ", justify="right", no_wrap=True)
    t.add_column("batches/upd", justify="right", no_wrap=True)
    if has_flips:
        t.add_column("old NFR", justify="right", no_wrap=True)
    if has_gate:
        t.add_column("gate", no_wrap=True)
    base = report["base_metrics"]
    t.add_row("base", value_text(base["old"].get(primary["old"]), units["old"]), "",
              value_text(base["new"].get(primary["new"]), units["new"]), "", "",
              *[""] * (has_flips + has_gate))
    for arm in arms:
        cells = []
        for task in ("old", "new"):
            m = primary[task]
            cells.append(value_text(arm["metrics"][task].get(m), units[task]))
            d = (arm.get("delta") or {}).get(task, {}).get(m)
            cells.append("" if d is None else "nan" if d.get("value") is None
                         else _delta(d, units[task]))
        p = arm.get("provenance") or {}
        cells.append(f"{p['batches']}/{p['main_updates']}" if "batches" in p else "-")
        if has_flips:
            flips = (arm.get("flips") or {}).get("old")
            cells.append(value_text(flips["nfr"], RATE) if flips else "-")
        if has_gate:
            gate = arm.get("gate")
            cells.append("-" if not gate else ("[green]pass[/]" if gate["passed"] else "[red]FAIL[/]"))
        t.add_row(escape(printable(arm["name"])), *cells)  # a file name: no markup, no ESC
    return t
