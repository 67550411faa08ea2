"""The terminal: Rich consoles, progress bars for the engine's events, and summary tables.

Only the CLI layer draws; the engine emits events and the report layer returns data.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

out = Console()
err = Console(stderr=True)


class RichEvents:
    """Draws the engine's events: a progress bar on a terminal, eval lines otherwise."""

    def __init__(self, label: str, primary: dict[str, str]) -> None:
        self.label, self.primary = label, primary
        self.live = out.is_terminal
        self.progress: Progress | None = None
        self.task = None

    def on_start(self, total_batches: int, done: int) -> None:
        if self.live:
            self.progress = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                     TimeRemainingColumn(), console=out, transient=False)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total_batches, completed=done,
                                               info="")

    def on_batch(self, batch: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=batch)

    def on_evaluation(self, rec: dict[str, Any]) -> None:
        info = "  ".join(f"{t} {m} {rec[t][m]:.4g}" for t, m in self.primary.items()
                         if m in rec.get(t, {}))
        if self.progress is not None:
            self.progress.update(self.task, info=info)
        else:
            out.print(f"{self.label}: batch {rec['batch']}  {info}", highlight=False)

    def on_end(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def log(msg: str, markup: bool = False) -> None:
    """One line of progress; the text (paths, recipe values) is never read as Rich markup."""
    out.print(msg if markup else escape(msg), highlight=False, soft_wrap=True)


def metrics_table(title: str, rows: list[tuple[str, dict]], primary: dict[str, str]) -> Table:
    t = Table(title=title)
    t.add_column("model")
    for task in ("old", "new"):
        t.add_column(f"{task} {primary[task]}", justify="right")
    for name, m in rows:
        t.add_row(name, *(f"{m[task].get(primary[task], float('nan')):.4g}" for task in ("old", "new")))
    return t


def _num(value: float | None, spec: str = ".4g") -> str:
    """A metric cell; the report stores a NaN metric (a diverged arm) as null."""
    return "nan" if value is None else format(value, spec)


def summary_table(report: dict[str, Any]) -> Table:
    """Base and arms on both tasks, deltas coloured by direction (green better, red worse)."""
    primary = {t: report["tasks"][t]["primary"] for t in ("old", "new")}
    arms = report["arms"]
    has_flips = any((a.get("flips") or {}).get("old") for a in arms)
    has_gate = any(a.get("gate") for a in arms)
    t = Table(title="regression report")
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
    t.add_row("base", _num(base["old"].get(primary["old"])), "",
              _num(base["new"].get(primary["new"])), "", "", *[""] * (has_flips + has_gate))
    for arm in arms:
        cells = []
        for task in ("old", "new"):
            m = primary[task]
            cells.append(_num(arm["metrics"][task].get(m)))
            d = (arm.get("delta") or {}).get(task, {}).get(m)
            if d is None:
                cells.append("")
            else:
                colour = "green" if d.get("better") else "red"
                cells.append(f"[{colour}]{_num(d['value'], '+.4g')}[/]")
        p = arm.get("provenance") or {}
        cells.append(f"{p['batches']}/{p['main_updates']}" if "batches" in p else "-")
        if has_flips:
            flips = (arm.get("flips") or {}).get("old")
            cells.append(f"{flips['nfr']:.2%}" if flips else "-")
        if has_gate:
            gate = arm.get("gate")
            cells.append("-" if not gate else ("[green]pass[/]" if gate["passed"] else "[red]FAIL[/]"))
        t.add_row(arm["name"], *cells)
    return t
