"""The report of a `goodfit search`: the Pareto front, the recommendation, JSON / Markdown / HTML
(the front and the rules themselves: report/front.py).

Inputs are plain data: every trial (`{"number", "state", "arm", "params", "old", "new",
"feasible", "dir", "checkpoint"}`, old/new = each task's primary metric), the recipe's default
arms as points, and WiSE-FT curves as lines (drawn by report/search_plot.py). Both axes are
oriented by the metric's direction (`core.metrics.direction`): one point dominates another when
it is at least as good on both tasks and better on one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from goodfit_cli.core.units import value_text
from goodfit_cli.objectives import direction, unit
from goodfit_cli.io.staging import write_together
from goodfit_cli.report.render import _CSS, _h, _html_table, md_escape
from goodfit_cli.report.sections import slack_line, time_rows, within_phrase
from goodfit_cli.report.trials import shipped_name
from goodfit_cli.report.search_plot import crushed, pareto_svg


def _sections(rep: dict[str, Any], e=str) -> tuple[str, list[str], list[str], list[tuple]]:
    """(title, the header's paragraphs, the recommendation's lines, [(title, head, rows)]):
    what report.md and report.html both show. `e` escapes the names and paths the user chose
    (Markdown: md_escape, so no HTML, link or secret reaches a PR; HTML escapes later)."""
    m_old, m_new = rep["metrics"]
    u = {t: (rep.get("units") or {}).get(t, unit(m)) for t, m in (("old", m_old), ("new", m_new))}
    vo, vn = (lambda v: value_text(v, u["old"], missing="-")), (  # noqa: E731
        lambda v: value_text(v, u["new"], missing="-"))
    title = f"goodfit search: {e(rep['study'])}"
    header = [f"Recipe {e(rep['recipe'])}, base {e(rep['base'])}, storage {e(rep['storage'])}; "
              f"{len(rep['trials'])} trials ({rep['complete']} complete"
              f"{_reruns(rep.get('reruns'))}, {rep.get('pruned', 0)} pruned early"
              + (f", {rep['interrupted']} interrupted and run again" if rep.get("interrupted")
                 else "") + "; "
              f"{rep.get('batches', 0)} training batches in "
              f"all). Objectives: old {m_old}, new {m_new}; gate: "
              f"{e(rep['gate']) if rep['gate'] else 'none (every trial is feasible)'}"
              f"{_margin(rep.get('val_margin'))}; rule: "
              f"{rep.get('rule', 'new')}." + _budget(rep.get("budget")) + _fisher(rep)
              + _offset(rep),
              "Every choice (objectives, gate, front, recommendation) is made on the validation "
              "splits; the test numbers beside them are for the report only."]
    rec, said = rep["recommendation"], []
    if rec is None:
        said.append("No finished trial passes the gate and gains on the new task: nothing is "
                    "recommended.")
    else:
        knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in rec["params"].items())
        test = ""
        if rec.get("test_old") is not None:
            gate = {True: "passes", False: failing("FAILS", rec.get("violations_test"), e),
                    None: "-"}[rec.get("passes_gate_test")]
            test = (f"; on test: old {m_old} {value_text(rec['test_old'], u['old'], 5)}, new "
                    f"{m_new} {value_text(rec['test_new'], u['new'], 5)} (gate on test: {gate})")
        d = rec.get("default") or ""
        default = (f", the study's replay reference {d} (the recipe's first arm, replaying old "
                   "data)" if d.endswith("+replay") else
                   f", the recipe's default arm {d}" if d else "")
        of = (", the exponential moving average of its weights (finetune.ema)"
              if shipped_name(rec) != rec["arm"] else "")
        said.append(f"Trial {rec['number']}, {shipped_name(rec)} (finetune.arms=[{rec['arm']}]"
                    f"{default}{of}; {knobs}), "
                    f"by --rule "
                    f"{rep.get('rule', 'new')}: on validation old {m_old} "
                    f"{vo(rec['old'])}, new {m_new} {vn(rec['new'])}{test}; exported to "
                    + e(rep.get("exported") or f"not exported ({rep.get('export_note', '')})")
                    + ".")
        said += [slack_line(f, m_old, u["old"]) for f in rep.get("floor_slack") or []]
        if rep.get("close_calls"):
            said.append(_close_calls(rep["close_calls"], m_new, u["new"]))
        failed = {r["name"] for r in rep["defaults"] if r.get("gate") is False}
        said += [f"against {name}: {verdict}" + (f" ({name} fails the gate)" if name in failed
                                                 else "")
                 for name, verdict in rep["against_defaults"].items()]
    front = {p["number"] for p in rep["front"]}
    def judged(t: dict) -> str:
        if t["state"] != "COMPLETE":  # pruned: its best WiSE-FT point at its last rung
            if "rung" not in t:
                return "-"
            n = t["rung_violations"]
            return f"at rung {t['rung']}: " + ("no new-task gain" if n is None else "pass"
                                               if n == 0 else f"{n} limit{'s' * (n > 1)} crossed")
        return (failing("FAIL", t.get("violations"), e) if not t["feasible"] else
                "pass" if t.get("gains", True) else "pass, no new-task gain")

    tables = [("Trials", ["trial", "state", "arm (or its EMA)", "knobs", "batches",
                          f"old {m_old} (val)",
                          f"new {m_new} (val)", "gate (val)", "front", f"old {m_old} (test)",
                          f"new {m_new} (test)"],
               [[str(t["number"]), t["state"] + (f" (re-run of {t['rerun_of']})"
                                                 if "rerun_of" in t else "")
                 + (f" (retry of {t['retry_of']})" if "retry_of" in t else ""),
                 shipped_name(t),
                 ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in t["params"].items()),
                 "-" if t.get("batches") is None else str(t["batches"])
                 + (f" (weights of {t['weights_batch']})" if "weights_batch" in t else ""),
                 vo(t["old"]), vn(t["new"]) if "rung" not in t else
                 f"{vn(t['rung_new'])} at rung {t['rung']}", judged(t),
                 "*" if t["number"] in front else "", vo(t.get("test_old")),
                 vn(t.get("test_new"))] for t in rep["trials"]])]
    if rep["defaults"]:
        gate = {True: "pass", False: "FAIL", None: "-"}
        rows = []
        if rep.get("base_point"):
            b = rep["base_point"]
            rows.append(["base (no fine-tune)", vo(b["old"]), vn(b["new"]), "-",
                         vo(b.get("test_old")), vn(b.get("test_new"))])
        rows += [[f"{r['name']} (trial {r['number']})" if "number" in r else r["name"],
                  vo(r["old"]), vn(r["new"]),
                  (failing("FAIL", r.get("violations"), e) if r.get("gate") is False
                   else gate[r.get("gate")]) if "state" not in r else
                  (f"{r['state']}" + (f"; new {m_new} {vn(r['rung_new'])} at rung {r['rung']}, "
                                      "best WiSE-FT point" if "rung" in r else "")),
                  vo(r.get("test_old")), vn(r.get("test_new"))] for r in rep["defaults"]]
        ref = " and the replay reference" * any(r["name"].endswith("+replay")
                                                for r in rep["defaults"])
        tables.append((f"The recipe's default arms{ref}", ["arm", f"old {m_old} (val)",
                                                     f"new {m_new} (val)", "gate (val)",
                                                     f"old {m_old} (test)",
                                                     f"new {m_new} (test)"], rows))
    time = rep.get("time") or {}
    if time.get("phases_s"):
        tables.append((f"Where the time went (the {time['trials']} trials' own timings.json, "
                       "summed)", ["phase", "s", "share"],
                       time_rows(time["phases_s"], sum(time["phases_s"].values()))))
    return title, header + [f"- {e(n)}" for n in rep["notes"]], said, tables


def failing(word: str, violations: list[str] | None, e=str) -> str:
    """'FAIL: old accuracy dropped 3.10 pts (limit 1.00 pts)': the limits a point failed, each
    with its value and limit (report/gate.py), or the bare word for a report that has none."""
    return f"{word}: {e('; '.join(violations))}" if violations else word


def render_markdown(rep: dict[str, Any]) -> str:
    title, header, said, tables = _sections(rep, md_escape)
    lines = [f"# {title}", "", header[0], "", header[1], ""] + header[2:]
    lines += ["", "## Recommendation", "", said[0]] + [f"- {x}" for x in said[1:]]
    for name, head, rows in tables:
        lines += ["", f"## {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_html(rep: dict[str, Any], svg: str) -> str:
    """One self-contained page like the finetune report's: header, recommendation, the plot,
    the tables (no script, no external URL)."""
    title, header, said, tables = _sections(rep)
    notes = [h[2:] for h in header[2:]]
    parts = [f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_h(title)}'
             f"</title><style>{_CSS}</style></head><body><h1>{_h(title)}</h1>",
             *[f"<p>{_h(p)}</p>" for p in header[:2]]]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{_h(n)}</li>" for n in notes) + "</ul>")
    parts += ["<h2>Recommendation</h2>", f"<p><b>{_h(said[0])}</b></p>"]
    if said[1:]:
        parts.append("<ul>" + "".join(f"<li>{_h(x)}</li>" for x in said[1:]) + "</ul>")
    parts.append(f'<h2>Trials, front and default arms (validation)</h2><div class="plots">{svg}'
                 "</div>")
    for name, head, rows in tables:
        parts += [f"<h2>{_h(name)}</h2>",
                  _html_table(head, [[(c, "") for c in row] for row in rows])]
    return "\n".join(parts) + "\n</body></html>\n"


def _close_calls(cc: dict, m_new: str, shown: str | None = None) -> str:
    """The report's line on `close_calls`."""
    within = within_phrase(cc, m_new, shown)
    if not cc["trials"]:
        return f"No other candidate is {within}."
    n, others = len(cc["trials"]), cc["candidates"] - 1
    names = f"trial{'s' if n > 1 else ''} {', '.join(map(str, cc['trials']))}"
    who = (f"the other candidate ({names}) is" if others == 1 else
           f"{n} of the {others} other candidates ({names}) {'are' if n > 1 else 'is'}")
    return (f"Within validation noise: {who} {within}: the validation split cannot tell "
            f"{'them' if n > 1 else 'it'} from the recommendation, and the winner of a close "
            "call tends to land lower on test than on validation (a larger validation split "
            "narrows it).")


def _reruns(n: int | None) -> str:
    """", N of them re-runs of pruned trials" (search --reruns), or nothing."""
    return f", {n} of them re-runs of pruned trials" if n else ""


def _labels(rep: dict[str, Any]) -> tuple[str, str]:
    """The axes' names with each primary metric's unit: ('old ade@8s, m', 'new accuracy,
    share'); x is the old task, y the new (as every report's trade-off plot)."""
    u = rep.get("units") or {}
    return tuple(f"{t} {m}" + (f", {s}" if (s := u.get(t, unit(m))) else "")  # type: ignore
                 for t, m in zip(("old", "new"), rep["metrics"]))


def write_search_report(rep: dict[str, Any], out: Path, curves: list[tuple[str, list]]) -> None:
    """report.json, report.md and report.html (with the Pareto plot) into `out`, atomically
    and as one set (rendered first: a failure or an interrupt leaves the old set whole)."""
    md = render_markdown(rep)
    dirs = (direction(rep["metrics"][0]), direction(rep["metrics"][1]))
    args = (rep["trials"], [r for r in rep["defaults"] if r.get("old") is not None], curves,
            _labels(rep), dirs,
            rep.get("base_point"), rep["recommendation"])
    linear, log = pareto_svg(*args, log=False), pareto_svg(*args)
    zoomed = pareto_svg(*args, log=False, zoom=True) if crushed(*args[:3]) else ""
    html = render_html(rep, linear + (log if log != linear else "") + zoomed)  # log: when it
    # differs; zoomed: when the trials fill a fifth of an axis or less
    write_together(out, {"report.json": json.dumps(rep, indent=2, default=str),
                         "report.md": md, "report.html": html})


def _budget(b: dict | None) -> str:
    """The budget line: what the study may train and what it trained (default arms included)."""
    if not b:
        return ""
    cap = ("unlimited" if b["finetunes"] is None else
           f"{b['finetunes']:g} fine-tunes ({b['batches']} batches)")
    return (f" Budget: {cap}; spent {b['spent_batches']} training batches = "
            f"{b['spent_finetunes']:.2f} fine-tunes of {b['steps_per_finetune']} batches, the "
            "recipe's default arms included (evaluations and WiSE-FT points not counted).")


def _choice(rep: dict, setting: str, knob: str, name: str, what: str) -> str:
    """A choice each trial may take after its training (the report's `setting`, the trials'
    `knob`): in words (`what`), with how many finished trials took one."""
    if rep.get(setting) is None:
        return ""
    if not rep[setting]:
        return f" {name}: off."
    took = sum(bool(t["params"].get(knob)) for t in rep["trials"] if t["state"] == "COMPLETE")
    return f" {name}: {what} ({took} of {rep['complete']} finished trials took one)."


def _fisher(rep: dict) -> str:
    """The Fisher-weighted point's setting (the trials' knob: fisher_beta)."""
    return _choice(rep, "fisher", "fisher_beta", "Fisher-weighted point", "each trial's change "
                   "from the base weighed by the old task's Fisher where that is better on "
                   "validation, α chosen with β")


def _offset(rep: dict) -> str:
    """The new-class offset's setting."""
    together = (", together with its WiSE-FT α (never below the old-task value of the α "
                "chosen alone)") if rep.get("offset_with_alpha") else ""
    return _choice(rep, "new_offset", "new_offset", "New-class offset", "chosen per trial on "
                   f"validation, never losing old-task accuracy there{together}")


def _margin(z: float | None) -> str:
    """How the gate is read on validation (report/margin.py), for the report's header."""
    return (f", on validation {z:g} standard error(s) inside each limit on a rate" if z else
            "")
