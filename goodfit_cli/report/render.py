"""Report dict → Markdown (a pull-request comment) and one self-contained HTML page.

The HTML has inline CSS and inline SVG only: no script, no stylesheet link, no external URL.
Rates (accuracy, flip and miss rates) print in % and their deltas in percentage points (pts).
"""

from __future__ import annotations

import html
import re

from goodfit_cli.core.text import printable
from goodfit_cli.objectives import metric as declared_metric
from goodfit_cli.report.sections import (  # verdict: re-exported by the package
    class_label,
    time_rows,
    _all_metric_rows,
    _candidates,
    _early_stops,
    _flat,
    _flipped_rows,
    _head_notes,
    _header_lines,
    _main_rows,
    _per_class_rows,
    _readout_table,
    _ship_line,
    _verdict,
    _verdict_rows,
    _violations,
    _wise_rows,
    verdict,
)
from goodfit_cli.report.build import curve_points, curve_split
from goodfit_cli.report.reading import unit_in
from goodfit_cli.report.svg import line_plot

# ---------------------------------------------------------------- Markdown
_MD_SPECIAL = re.compile(r"([\\`*|]|(?<=\])[(\[])")  # `](` / `][`: a link


def md_escape(text) -> str:
    """Text for report.md (posted as a PR comment): credentials redacted, control and bidi
    characters escaped (core.text.printable), HTML escaped (`<img onerror=...>` stays text),
    Markdown's emphasis, code and table characters and link brackets backslashed, no URL
    verbatim."""
    text = html.escape(printable(text), quote=False).replace("://", "&#58;//")
    return _MD_SPECIAL.sub(r"\\\1", text)


def _spans(text) -> list[tuple[str, bool]]:
    """Text cut at its `code spans` (a command to run): [(part, is_code)]. Unpaired backticks,
    or a span's content that escaping would change (markup, a URL, a secret), stay plain text."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:
        return [(str(text), False)]
    out = [(p, i % 2 == 1 and p.strip() != "" and md_escape(p) == p) for i, p in enumerate(parts)]
    return [(p if code or i % 2 == 0 else f"`{p}`", code) for i, (p, code) in enumerate(out)]


def md_spans(text) -> str:
    """md_escape, the text's code spans kept as code spans (their content verbatim)."""
    return "".join(f"`{p}`" if code else md_escape(p) for p, code in _spans(text))


def _h_spans(text) -> str:
    """_h, the text's code spans written as <code>."""
    return "".join(f"<code>{_h(p)}</code>" if code else _h(p) for p, code in _spans(text))


def _md_table(head: list[str], rows: list[list[tuple[str, str]]]) -> list[str]:
    lines = ["| " + " | ".join(md_escape(h) for h in head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(md_escape(c) for c, _ in row) + " |" for row in rows]


def _time_rows(report: dict) -> tuple[list[str], list[list[tuple[str, str]]]] | None:
    """Where the command's time went (provenance "timings", core/timing.py): each phase's
    seconds and share of the total; None when the report has no record."""
    rec = (report.get("provenance") or {}).get("timings")
    if not isinstance(rec, dict) or not isinstance(rec.get("phases_s"), dict):
        return None
    phases = {**rec["phases_s"], "other": rec.get("other_s", 0.0)}
    rows = time_rows(phases, rec.get("total_s") or 0.0)
    arms = rec.get("arms_s") if isinstance(rec.get("arms_s"), dict) else {}
    for row, phase in zip(rows, [*phases, None]):  # each arm's share: a column per arm
        row += [f"{arms[a][phase]:.2f}" if phase in arms[a] else "" for a in arms]
    return (["phase", "s", "share", *arms], [[(c, "") for c in row] for row in rows])


def _time_note(report: dict) -> str:
    rec = report["provenance"]["timings"]
    ratio = rec.get("command_over_training")
    runs = rec.get("commands", 1)
    cut = rec.get("cut_short") if isinstance(rec.get("cut_short"), dict) else {}
    return ((f"Command / training: {ratio:.2f}. " if ratio else "")
            + (f"Summed over the run's {runs} commands (it was resumed). " if runs > 1 else "")
            + "".join(f"Command {n} ended {how}. " for n, how in cut.items())
            + "The report's own writing is in timings.json beside it.")


def render_markdown(report: dict) -> str:
    """A pull-request comment: verdict, base-vs-arms table, regressions, read-out, violations."""
    out = [f"### goodfit: {md_escape(verdict(report))}", ""]
    out += [line for text in _header_lines(report) for line in (md_escape(text), "")]
    out += _md_table(*_main_rows(report))
    out += ["", "Δ = arm − base; ▲/▼ is the sign of the change, (better)/(worse) its effect; "
            "[lo, hi] is a 95 % paired bootstrap interval. NFR/PFR: share of all old-task samples "
            "the arm broke/fixed."]
    out += [line for note in _head_notes(report) for line in ("", f"**{md_escape(note)}**")]
    chosen = _verdict_rows(report)
    if chosen:
        v = report["verdict"]
        out += ["", "#### Verdict (chosen on validation, confirmed on test)", "",
                f"**{md_spans(_ship_line(report))}**", ""]
        out += _md_table(*chosen)
        out += ["", f"Rule: {md_escape(v['rule'])}"] + ([f"Note: {md_escape(v['note'])}."] if v["note"]
                                                    else [])
    wise = _wise_rows(report)
    if wise:
        out += ["", "#### WiSE-FT α (grid on validation; the chosen point also on test)", ""]
        out += _md_table(*wise)
    stops = _early_stops(report)
    if stops:
        out += ["", "#### Early stopping", ""] + [f"- **{md_escape(n)}**: {md_escape(t)}"
                                                  for n, t in stops]
    per_class = _per_class_rows(report)
    if per_class:
        out += ["", "#### Largest per-class regressions (old task, top 5 per arm)", ""]
        out += _md_table(["arm", "class", "base", "arm acc.", "Δ", "n"], per_class)
    flipped = _flipped_rows(report, top=5)
    if flipped:
        out += ["", "#### Old-task samples each arm broke (first 5; all in report.json)", ""]
        out += _md_table(["arm", "index", "sample", "label", "base → arm"], flipped)
    readout = _readout_table(report)
    if readout:
        on = _readout_split(report)
        out += ["", f"#### Trade-off read-out (fit along each arm's path on {on}; — = outside "
                "the path)", ""]
        out += _md_table(*readout)
    violations = _violations(report)
    if violations:
        out += ["", "#### Gate violations", ""]
        out += [f"- **{md_escape(n)}**: {md_escape(v)}" for n, v in violations]
    out += ["", "#### Candidates", ""] + [f"- **{md_escape(n)}**: {md_spans(f'`{c}`')}"
                                          for n, c in _candidates(report)]
    times = _time_rows(report)
    if times:
        out += ["", "#### Where the time went", ""] + _md_table(*times)
        out += ["", md_escape(_time_note(report))]
    out += ["", "<details><summary>All metrics</summary>", ""]
    out += _md_table(*_all_metric_rows(report))
    out += ["", "</details>", "", "<details><summary>Provenance</summary>", ""]
    out += _md_table(["key", "value"], [[(k, ""), (v, "")] for k, v in _flat(report["provenance"])])
    for a in (a for a in report["arms"] if a.get("provenance")):  # none recorded: no table
        out += ["", f"**{md_escape(a['name'])}** ({md_escape(a['checkpoint'])})", ""]
        out += _md_table(["key", "value"], [[(k, ""), (v, "")] for k, v in _flat(a["provenance"])])
    out += ["", f"Report schema `{report['schema']}`, created {report['created']}.", "",
            "</details>", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- HTML
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2328;
max-width:1100px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #d0d7de;padding:4px 8px;
text-align:left;font-variant-numeric:tabular-nums}th{background:#f6f8fa}
td.better{color:#1a7f37;background:#dafbe1}td.worse{color:#cf222e;background:#ffebe9}
.verdict{font-weight:bold;padding:8px;border-radius:6px;display:inline-block}
.pass{background:#dafbe1}.fail{background:#ffebe9}.none{background:#f6f8fa}
.plots{display:flex;flex-wrap:wrap;gap:12px}.note{color:#57606a;font-size:12px}
table.confusion td{text-align:right}td.diag{background:#dafbe1}td.off{background:#ffebe9}
"""


def _h(text) -> str:
    """HTML-escaped text; '://' is written as an entity so no URL appears verbatim in the file."""
    return html.escape(printable(text)).replace("://", "&#58;//")


def _html_table(head: list[str], rows: list[list[tuple[str, str]]]) -> str:
    th = "".join(f"<th>{_h(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td class="{t}">{_h(c)}</td>' if t else f"<td>{_h(c)}</td>"
                                    for c, t in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(d: dict) -> str:
    return _html_table(["key", "value"], [[(k, ""), (v, "")] for k, v in _flat(d)])


def _readout_split(report: dict) -> str:
    """The split the read-out's paths are on, in words."""
    splits = {a["readout"].get("split", "test") for a in report["arms"] if a.get("readout")}
    if len(splits) != 1:
        return "validation or test"
    return "validation" if splits.pop() == "val" else "test"


def _plots(report: dict) -> list[str]:
    """The training curves (each arm's periodic evaluations, on validation unless its records
    measured test: curve_split) and the trade-off path, then the WiSE-FT curves; a trade-off
    is drawn old task on x, new task on y, as the search's Pareto plot."""
    po, pn = report["tasks"]["old"]["primary"], report["tasks"]["new"]["primary"]
    base = report["base_metrics"]
    base_val = report.get("base_val_metrics")
    plots = []
    arms = [(a, curve_points(a["curve"]), a.get("curve_split") or curve_split(a["curve"]))
            for a in report["arms"]]
    drawn = {split for _, c, split in arms if c}
    on_val = drawn == {"val"}
    ref_metrics = base_val if on_val else base if drawn <= {"test"} else None  # the base's point
    word = "validation" if on_val else "test" if drawn <= {"test"} else "validation or test"
    if len(drawn) > 1:  # runs of both kinds compared: each line says its split
        arms = [({**a, "name": f"{a['name']} ({split})"}, c, split) for a, c, split in arms]
    bo = (ref_metrics or {}).get("old", {}).get(po)
    bn = (ref_metrics or {}).get("new", {}).get(pn)
    for task, metric, ref in (("old", po, bo), ("new", pn, bn)):
        series = [(a["name"], [r["batch"] for r in c], [(r[task] or {}).get(metric) for r in c])
                  for a, c, _ in arms]
        if any(s[1] for s in series):
            base_pt = [("base", 0, ref)] if ref is not None else None
            plots.append(line_plot(series, f"{task} task {metric} on {word} vs batches",
                                   "batches", _axis(report, task, metric, word), points=base_pt))
    base_pt = [("base", bo, bn)] if bn is not None and bo is not None else None
    paths = [(a["name"], [bo] + [(r["old"] or {}).get(po) for r in c],
              [bn] + [(r["new"] or {}).get(pn) for r in c]) for a, c, _ in arms]
    if any(c for _, c, _ in arms):
        plots.append(line_plot(paths, f"trade-off path on {word} (base → arm)",
                               _axis(report, "old", po, word), _axis(report, "new", pn, word),
                               points=base_pt))
    test_pt = ([("base", base["old"].get(po), base["new"].get(pn))]
               if base["new"].get(pn) is not None and base["old"].get(po) is not None else None)
    plots += _wise_plot(report, po, pn, test_pt)
    return plots


def _axis(report: dict, task: str, metric: str, split: str) -> str:
    """An axis's label: task, metric, its unit where it has one (a rate's is "share": the axis
    reads in shares, the tables in %), split and which way is better ('old ade@8s, m (val;
    lower is better)'); a metric nothing declares a direction for gets none."""
    m = declared_metric(metric)
    better = "" if m is None else f"; {'higher' if m.direction > 0 else 'lower'} is better"
    u = unit_in(report, task, metric)
    return f"{task} {metric}{f', {u}' if u else ''} ({split}{better})"


def _wise_plot(report: dict, po: str, pn: str, base_test: list | None) -> list[str]:
    """Each arm's WiSE-FT curve on validation (its grid: where α is chosen), the base's and each
    arm's chosen point on validation marked; a report made before the grid moved to validation
    (its points without "val") draws its test curve, as it was."""
    arms = [a for a in report["arms"] if a.get("wise")]
    if not arms:
        return []
    on_val = all("val" in w for a in arms for w in a["wise"]) and "base_val_metrics" in report
    split = "val" if on_val else None

    def at(w: dict, task: str, metric: str):
        return ((w.get(split) if split else w) or {}).get(task, {}).get(metric)

    lines = [(a["name"], [at(w, "old", po) for w in a["wise"]],
              [at(w, "new", pn) for w in a["wise"]]) for a in arms]
    if not on_val:
        return [line_plot(lines, "WiSE-FT interpolation on test (α from base to arm)",
                          _axis(report, "old", po, "test"), _axis(report, "new", pn, "test"),
                          points=base_test)]
    base = report["base_val_metrics"]
    points = [("base", base["old"].get(po), base["new"].get(pn))]
    points += [(f"α {w['alpha']:g} chosen: {a['name']}", at(w, "old", po), at(w, "new", pn), i)
               for i, a in enumerate(arms) for w in a["wise"] if w.get("chosen")]  # its colour
    # α first: a legend entry is cut at 20 characters, the arm is told by the colour
    return [line_plot(lines, "WiSE-FT interpolation on validation (α from base to arm)",
                      _axis(report, "old", po, "val"), _axis(report, "new", pn, "val"),
                      points=points)]


def _confusion_html(title: str, conf: dict, report: dict, limit: int = 30) -> str:
    """A confusion matrix (rows: true class, columns: predicted) as a table; big ones as their
    largest off-diagonal cells. Classes by id, with their names when the data has them."""
    labels, matrix = [class_label(report, c) for c in conf["labels"]], conf["matrix"]
    if len(labels) > limit:
        cells = sorted(((matrix[i][j], labels[i], labels[j]) for i in range(len(labels))
                        for j in range(len(labels)) if i != j and matrix[i][j]), reverse=True)
        items = "".join(f"<li>{_h(t)} predicted as {_h(p)}: {n}</li>" for n, t, p in cells[:10])
        return f"<h3>{_h(title)}</h3><p class=\"note\">{len(labels)} classes; the largest " \
               f"confusions:</p><ul>{items}</ul>"
    head = "".join(f"<th>{_h(c)}</th>" for c in labels)
    body = "".join(
        f"<tr><th>{_h(labels[i])}</th>" + "".join(
            f'<td class="{"diag" if i == j else "off" if n else ""}">{n}</td>'
            for j, n in enumerate(row)) + "</tr>" for i, row in enumerate(matrix))
    return (f"<h3>{_h(title)}</h3><table class=\"confusion\"><tr><th>true \\ predicted</th>"
            f"{head}</tr>{body}</table>")


def render_html(report: dict) -> str:
    """One self-contained HTML page: tables with direction-aware colours and inline SVG plots."""
    tone, v = _verdict(report)
    parts = [f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
             f"<title>goodfit report: {_h(v)}</title><style>{_CSS}</style></head><body>",
             f'<h1>goodfit report</h1><p class="verdict {tone}">{_h(v)}</p>',
             *[f"<p>{_h(text)}</p>" for text in _header_lines(report)],
             "<h2>Base vs arms (primary metrics)</h2>", _html_table(*_main_rows(report)),
             '<p class="note">Δ = arm − base; green better, red worse (by the metric\'s '
             "direction); [lo, hi] is a 95 % paired bootstrap interval. NFR/PFR: share of all "
             "old-task samples the arm broke/fixed.</p>"]
    parts += [f'<p class="note"><b>{_h(note)}</b></p>' for note in _head_notes(report)]
    chosen = _verdict_rows(report)
    if chosen:
        note = report["verdict"]["note"]
        parts += ["<h2>Verdict (chosen on validation, confirmed on test)</h2>",
                  f"<p><b>{_h_spans(_ship_line(report))}</b></p>", _html_table(*chosen),
                  f'<p class="note">Rule: {_h(report["verdict"]["rule"])}'
                  + (f" Note: {_h(note)}." if note else "") + "</p>"]
    wise = _wise_rows(report)
    if wise:
        parts += ["<h2>WiSE-FT α (grid on validation; the chosen point also on test)</h2>",
                  _html_table(*wise)]
    violations = _violations(report)
    if violations:
        parts.append("<h2>Gate violations</h2><ul>" + "".join(
            f"<li><b>{_h(n)}</b>: {_h(m)}</li>" for n, m in violations) + "</ul>")
    stops = _early_stops(report)
    if stops:
        parts.append("<h2>Early stopping</h2><ul>" + "".join(
            f"<li><b>{_h(n)}</b>: {_h(t)}</li>" for n, t in stops) + "</ul>")
    plots = _plots(report)
    if plots:
        parts.append('<h2>Curves</h2><div class="plots">' + "".join(plots) + "</div>")
    parts += ["<h2>Candidates</h2>", _html_table(["label", "checkpoint"], [
        [(n, ""), (c, "")] for n, c in _candidates(report)])]
    per_class = _per_class_rows(report)
    if per_class:
        parts += ["<h2>Largest per-class regressions (old task, top 5 per arm)</h2>",
                  _html_table(["arm", "class", "base", "arm acc.", "Δ", "n"], per_class)]
    flipped = _flipped_rows(report)
    if flipped:
        parts += ["<h2>Old-task samples each arm broke (first 10 per arm; all counts and the "
                  "first 100 in report.json)</h2>",
                  _html_table(["arm", "index", "sample", "label", "base → arm"], flipped)]
    confusions = [_confusion_html(f"base, {t} task", c, report)
                  for t, c in report.get("base_confusion", {}).items()]
    confusions += [_confusion_html(f"{a['name']}, {t} task", c, report)
                   for a in report["arms"] for t, c in (a.get("confusion") or {}).items()]
    if confusions:
        parts += ["<h2>Confusion matrices (rows: true class, columns: predicted)</h2>",
                  *confusions]
    readout = _readout_table(report)
    if readout:
        parts += ["<h2>Trade-off read-out</h2>", _html_table(*readout),
                  '<p class="note">Old-task metric from a least-squares fit along each arm\'s '
                  f"path on {_readout_split(report)}, read at fixed new-task values; — = outside "
                  "the path (not extrapolated).</p>"]
    times = _time_rows(report)
    if times:
        parts += ["<h2>Where the time went</h2>", _html_table(*times),
                  f'<p class="note">{_h(_time_note(report))}</p>']
    parts += ["<h2>All metrics</h2>", _html_table(*_all_metric_rows(report)),
              "<details><summary>Provenance</summary>",
              _kv_table(report["provenance"])]
    for a in (a for a in report["arms"] if a.get("provenance")):  # none recorded: no table
        parts += [f"<h3>{_h(a['name'])} <code>{_h(a['checkpoint'])}</code></h3>",
                  _kv_table(a["provenance"])]
    parts.append(f'<p class="note">schema {_h(report["schema"])}, created {_h(report["created"])}'
                 "</p></details></body></html>")
    return "\n".join(parts)
