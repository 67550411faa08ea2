"""Report dict → Markdown (a pull-request comment) and one self-contained HTML page.

The HTML has inline CSS and inline SVG only: no script, no stylesheet link, no external URL.
Rates (accuracy, flip and miss rates) print in % and their deltas in percentage points (pts).
"""

from __future__ import annotations

import html
import json
import re

from goodfit_cli.core.text import printable
from goodfit_cli.objectives import is_rate
from goodfit_cli.report.svg import line_plot

_DASH = "—"


# ---------------------------------------------------------------- formatting shared by both
def fmt_value(metric: str, v: float | None) -> str:
    if v is None:
        return _DASH
    return f"{v * 100:.2f} %" if is_rate(metric) else f"{v:.4g}"


def fmt_delta(metric: str, d: float) -> str:
    return f"{d * 100:+.2f} pts" if is_rate(metric) else f"{d:+.4g}"


def fmt_ci(metric: str, ci: list | None) -> str:
    if not ci:
        return ""
    scale, f = (100, ".2f") if is_rate(metric) else (1, ".3g")
    return f"[{ci[0] * scale:{f}}, {ci[1] * scale:{f}}]"


def _marker(entry: dict) -> str:
    """'▲ (better)', '▼ (worse)', '= (same)': the arrow is the sign, the word the direction."""
    if entry["value"] == 0:
        return "= (same)"
    arrow = "▲" if entry["value"] > 0 else "▼"
    if entry["better"] is None:
        return arrow
    return f"{arrow} ({'better' if entry['better'] else 'worse'})"


def _delta_text(metric: str, entry: dict | None) -> str:
    if entry is None:
        return _DASH
    ci = fmt_ci(metric, entry["ci"])
    if not ci and entry.get("no_ci"):  # e.g. balanced_accuracy: no paired bootstrap applies
        ci = f"(no CI: {entry['no_ci']})"
    return f"{fmt_delta(metric, entry['value'])} {_marker(entry)}" + (f" {ci}" if ci else "")


def _tone(entry: dict | None) -> str:
    if entry is None or entry["value"] == 0 or entry["better"] is None:
        return ""
    return "better" if entry["better"] else "worse"


def verdict(report: dict) -> str:
    """One line: all arms passed / which failed the gate / no gate."""
    return _verdict(report)[1]


def _verdict(report: dict) -> tuple[str, str]:
    """("pass" | "fail" | "none", the verdict line)."""
    arms = report["arms"]
    gated = [a for a in arms if a.get("gate")]
    if not gated:
        return "none", f"{len(arms)} arm{'s' * (len(arms) != 1)} compared with the base (no gate)"
    failed = [a["name"] for a in gated if not a["gate"]["passed"]]
    if failed:
        return "fail", f"gate FAILED for {', '.join(failed)} ({len(failed)} of {len(gated)} arms)"
    return "pass", f"all {len(gated)} arms passed the gate"


def _main_rows(report: dict) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Header and rows of (text, tone) cells for the base-vs-arms table on primary metrics."""
    po, pn = report["tasks"]["old"]["primary"], report["tasks"]["new"]["primary"]
    has_flips = any("old" in a["flips"] for a in report["arms"])
    has_gate = any(a.get("gate") for a in report["arms"])
    # compute per arm: GoodFit spends n_ref + 1 batches per update, so both are shown
    has_compute = any("batches" in a.get("provenance", {}) for a in report["arms"])
    head = ["model", f"old {po}", "Δ old", f"new {pn}", "Δ new"]
    head += ["batches / updates"] * has_compute
    head += ["NFR (old)", "PFR (old)"] * has_flips + ["gate"] * has_gate
    base = report["base_metrics"]
    rows = [[("base", ""), (fmt_value(po, base["old"].get(po)), ""), ("", ""),
             (_base_new(report, pn), ""), ("", "")]
            + [("", "")] * (has_compute + 2 * has_flips + has_gate)]
    for a in report["arms"]:
        do, dn = a["delta"]["old"].get(po), a["delta"]["new"].get(pn)
        row = [(a["name"], ""), (fmt_value(po, a["metrics"]["old"].get(po)), ""),
               (_delta_text(po, do), _tone(do)), (fmt_value(pn, a["metrics"]["new"].get(pn)), ""),
               (_delta_text(pn, dn), _tone(dn))]
        if has_compute:
            p = a.get("provenance", {})
            row.append((f"{p.get('batches', _DASH)} / {p.get('main_updates', _DASH)}", ""))
        if has_flips:
            f = a["flips"].get("old")
            row += [(f"{fmt_value('nfr', f['nfr'])} {fmt_ci('nfr', f['nfr_ci'])}".strip(), ""),
                    (f"{fmt_value('pfr', f['pfr'])} {fmt_ci('pfr', f['pfr_ci'])}".strip(), "")
                    ] if f else [(_DASH, ""), (_DASH, "")]
        if has_gate:
            g = a.get("gate")
            row.append(("", "") if g is None else
                       ("passed", "better") if g["passed"] else ("FAILED", "worse"))
        rows.append(row)
    return head, rows


def _base_new(report: dict, metric: str) -> str:
    """The base's new-task value; n/a for a loss measured through a masked head."""
    if metric in report.get("base_masked", []):
        return "n/a (masked head)"
    return fmt_value(metric, report["base_metrics"]["new"].get(metric))


def _candidates(report: dict) -> list[tuple[str, str]]:
    """(label, checkpoint) of every candidate: labels like adamw#2 name a file."""
    return [(a["name"], a["checkpoint"]) for a in report["arms"]]


def _flipped_rows(report: dict, top: int = 10) -> list[list[tuple[str, str]]]:
    """The first old-task samples each arm broke: index, file or row, label, base -> arm."""
    rows = []
    for a in report["arms"]:
        f = (a.get("flipped") or {}).get("old")
        for e in (f or {}).get("negative", [])[:top]:
            rows.append([(a["name"], ""), (str(e["index"]), ""), (e.get("id") or _DASH, ""),
                         (str(e["target"]), ""), (f"{e['base']} -> {e['arm']}", "worse")])
    return rows


def _confusion_html(title: str, conf: dict, limit: int = 30) -> str:
    """A confusion matrix (rows: true class, columns: predicted) as a table; big ones as their
    largest off-diagonal cells."""
    labels, matrix = conf["labels"], conf["matrix"]
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


def _all_metric_rows(report: dict) -> tuple[list[str], list[list[tuple[str, str]]]]:
    head = ["task", "metric", "base"] + [a["name"] for a in report["arms"]]
    rows = []
    for task in ("old", "new"):
        names = list(report["base_metrics"][task])
        for a in report["arms"]:
            names += [m for m in a["metrics"][task] if m not in names]
        for m in names:
            value = (_base_new(report, m) if task == "new" else
                     fmt_value(m, report["base_metrics"][task].get(m)))
            row = [(task, ""), (m, ""), (value, "")]
            for a in report["arms"]:
                d = a["delta"][task].get(m)
                text = fmt_value(m, a["metrics"][task].get(m))
                row.append((text + (f" ({_delta_text(m, d)})" if d else ""), _tone(d)))
            rows.append(row)
    return head, rows


def _per_class_rows(report: dict, top: int = 5) -> list[list[tuple[str, str]]]:
    rows = []
    for a in report["arms"]:
        for r in [r for r in a["per_class"].get("old", []) if r["delta"] < 0][:top]:
            rows.append([(a["name"], ""), (str(r["class"]), ""),
                         (fmt_value("accuracy", r["base"]), ""),
                         (fmt_value("accuracy", r["arm"]), ""),
                         (fmt_delta("accuracy", r["delta"]), "worse"), (str(r["count"]), "")])
    return rows


def _readout_table(report: dict) -> tuple[list[str], list[list[tuple[str, str]]]] | None:
    arms = [a for a in report["arms"] if a.get("readout")]
    if not arms:
        return None
    ro = arms[0]["readout"]
    mn, mo = ro["metric_new"], ro["metric_old"]
    head = ["arm"] + [f"old {mo} at new {mn} = {fmt_value(mn, v['new'])}" for v in ro["values"]]
    rows = [[(a["name"], "")] + [(fmt_value(mo, v["old"]), "") for v in a["readout"]["values"]]
            for a in arms]
    return head, rows


def _violations(report: dict) -> list[tuple[str, str]]:
    return [(a["name"], v) for a in report["arms"] if a.get("gate")
            for v in a["gate"]["violations"]]


def _head_notes(report: dict) -> list[str]:
    """The base's head, when loading changed it (grown, cut or re-initialised): one line each."""
    prov = report["provenance"]
    head = prov.get("base_head")
    fed = prov.get("input")
    notes = ([f"Inputs: {fed['kind']}s normalised with mean {_stats(fed['mean'])}, std "
              f"{_stats(fed['std'])} ({fed['source']})."] if fed and "mean" in fed else [])
    notes += [prov["input_warning"]] if prov.get("input_warning") else []
    if not head:
        return notes
    return notes + [f"Base head: {c['message']}." for c in head["changes"]] + [
        f"The base is measured with {head['measured_with']}."]


def _stats(values: list[float]) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:6])
    return f"[{shown}{', ...' if len(values) > 6 else ''}]"


def _early_stops(report: dict) -> list[tuple[str, str]]:
    """(arm, why it stopped and where its checkpoint is from) for arms with early stopping."""
    rows = []
    for a in report["arms"]:
        e = (a.get("provenance") or {}).get("early_stop")
        if e:
            where = (f"stopped at batch {e['stopped_at']} of {e['budget']}: "
                     if e.get("stopped_at") is not None else "")
            rows.append((a["name"], f"{where}{e['reason']}; checkpoint: {e['checkpoint']}"))
    return rows


def _header_lines(report: dict) -> list[str]:
    """The gate's limits and the split choices are made on: the top of every report."""
    lines = [f"Gate: {report.get('gate_limits') or 'no gate'}."]
    sel = (report.get("provenance") or {}).get("validation")
    if sel:
        lines.append("Choices (early stopping, plateau, WiSE α, the verdict) are made on "
                     "validation: " + "; ".join(f"{t} {_split_text(v)}" for t, v in sel.items())
                     + ". Test is measured for the report only.")
    elif "base_val_metrics" in report:
        lines.append("Choices (the verdict) are made on validation; test is measured for the "
                     "report only.")
    return lines


def _split_text(v: dict) -> str:
    sizes = f"{v.get('train')} train / {v.get('val')} val / {v.get('test')} test"
    if v.get("source") == "carved":
        how = "stratified by class" if v.get("stratified") else "random"
        return (f"carved from training ({v['fraction'] * 100:g} %, {how}, seed {v['seed']}; "
                f"{sizes})")
    return f"given by the data ({sizes})"


def _verdict_rows(report: dict) -> tuple[list[str], list[list[tuple[str, str]]]] | None:
    """Per arm: validation and test primaries, the gate on validation, what dominates it."""
    v = report.get("verdict")
    if not v:
        return None
    po, pn = v["metrics"]
    head = ["arm", f"old {po} (val)", f"new {pn} (val)", f"old {po} (test)", f"new {pn} (test)",
            "gate (val)", "dominated by (val; ✓ = also on test)", "verdict"]
    rows = []
    for a in v["arms"]:
        val, test = a["val"] or {}, a["test"] or {}
        names = [d["name"] + (" ✓" if d["confirmed_on_test"] else "")
                 for d in sorted(a["dominated_by"], key=lambda d: not d["confirmed_on_test"])]
        by = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "") \
            if names else _DASH
        tone = "worse" if a["dominated_by"] else "better"
        rows.append([(a["name"], ""), (fmt_value(po, val.get("old")), ""),
                     (fmt_value(pn, val.get("new")), ""), (fmt_value(po, test.get("old")), ""),
                     (fmt_value(pn, test.get("new")), ""),
                     ("passes" if a["passes_gate_val"] else "FAILS", ""), (by, ""),
                     (a["status"], tone)])
    return head, rows


def _ship_line(report: dict) -> str | None:
    v = report.get("verdict")
    if not v:
        return None
    po, pn = v["metrics"]
    ship = v["ship"]
    if ship is None:
        return ("Ship nothing: no candidate passes the gate on validation; keep the base "
                f"({v['candidates']} candidates).")
    what = ship["name"] + (f" (`goodfit wise RUN/{ship['arm']} --alpha {ship['alpha']:g}`)"
                           if ship["kind"] == "wise" else "")
    gate = {True: "passes", False: "FAILS", None: "no gate"}[ship["passes_gate_test"]]
    val, test = ship["val"], ship["test"] or {}
    return (f"Ship {what}: validation old {po} {fmt_value(po, val['old'])}, new {pn} "
            f"{fmt_value(pn, val['new'])}; test old {fmt_value(po, test.get('old'))}, new "
            f"{fmt_value(pn, test.get('new'))} (test gate: {gate}).")


def _flat(d: dict) -> list[tuple[str, str]]:
    return [(k, v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in d.items()]


# ---------------------------------------------------------------- Markdown
_MD_SPECIAL = re.compile(r"([\\`*|]|(?<=\])[(\[])")  # `](` / `][`: a link


def md_escape(text) -> str:
    """Text for report.md (posted as a PR comment): credentials redacted, control and bidi
    characters escaped (core.text.printable), HTML escaped (`<img onerror=...>` stays text),
    Markdown's emphasis, code and table characters and link brackets backslashed, no URL
    verbatim."""
    text = html.escape(printable(text), quote=False).replace("://", "&#58;//")
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_table(head: list[str], rows: list[list[tuple[str, str]]]) -> list[str]:
    lines = ["| " + " | ".join(md_escape(h) for h in head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(md_escape(c) for c, _ in row) + " |" for row in rows]


def render_markdown(report: dict) -> str:
    """A pull-request comment: verdict, base-vs-arms table, regressions, read-out, violations."""
    out = [f"### goodfit: {verdict(report)}", ""]
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
                f"**{md_escape(_ship_line(report))}**", ""]
        out += _md_table(*chosen)
        out += ["", f"Rule: {md_escape(v['rule'])}"] + ([f"Note: {md_escape(v['note'])}."] if v["note"]
                                                    else [])
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
        out += _md_table(["arm", "index", "sample", "label", "base -> arm"], flipped)
    readout = _readout_table(report)
    if readout:
        out += ["", "#### Trade-off read-out (fit along each arm's path; — = outside the path)", ""]
        out += _md_table(*readout)
    violations = _violations(report)
    if violations:
        out += ["", "#### Gate violations", ""]
        out += [f"- **{md_escape(n)}**: {md_escape(v)}" for n, v in violations]
    out += ["", "#### Candidates", ""] + [f"- **{md_escape(n)}**: `{md_escape(c)}`"
                                          for n, c in _candidates(report)]
    out += ["", "<details><summary>All metrics</summary>", ""]
    out += _md_table(*_all_metric_rows(report))
    out += ["", "</details>", "", "<details><summary>Provenance</summary>", ""]
    out += _md_table(["key", "value"], [[(k, ""), (v, "")] for k, v in _flat(report["provenance"])])
    for a in report["arms"]:
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


def _plots(report: dict) -> list[str]:
    po, pn = report["tasks"]["old"]["primary"], report["tasks"]["new"]["primary"]
    base = report["base_metrics"]
    bo, bn = base["old"].get(po), base["new"].get(pn)
    plots = []
    for task, metric, ref in (("old", po, bo), ("new", pn, bn)):
        series = [(a["name"], [r.get("batch", i) for i, r in enumerate(a["curve"])],
                   [(r.get(task) or {}).get(metric) for r in a["curve"]])
                  for a in report["arms"]]
        if any(s[1] for s in series):
            base_pt = [("base", 0, ref)] if ref is not None else None
            plots.append(line_plot(series, f"{task} task {metric} vs batches", "batches",
                                   f"{task} {metric}", points=base_pt))
    base_pt = [("base", bn, bo)] if bn is not None and bo is not None else None
    paths = [(a["name"], [bn] + [(r.get("new") or {}).get(pn) for r in a["curve"]],
              [bo] + [(r.get("old") or {}).get(po) for r in a["curve"]]) for a in report["arms"]]
    if any(a["curve"] for a in report["arms"]):
        plots.append(line_plot(paths, "trade-off path (base → arm)", f"new {pn}", f"old {po}",
                               points=base_pt))
    wise = [(a["name"], [(w.get("new") or {}).get(pn) for w in a["wise"]],
             [(w.get("old") or {}).get(po) for w in a["wise"]])
            for a in report["arms"] if a.get("wise")]
    if wise:
        plots.append(line_plot(wise, "WiSE-FT interpolation (α from base to arm)", f"new {pn}",
                               f"old {po}", points=base_pt))
    return plots


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
                  f"<p><b>{_h(_ship_line(report))}</b></p>", _html_table(*chosen),
                  f'<p class="note">Rule: {_h(report["verdict"]["rule"])}'
                  + (f" Note: {_h(note)}." if note else "") + "</p>"]
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
                  _html_table(["arm", "index", "sample", "label", "base -> arm"], flipped)]
    confusions = [_confusion_html(f"base, {t} task", c)
                  for t, c in report.get("base_confusion", {}).items()]
    confusions += [_confusion_html(f"{a['name']}, {t} task", c)
                   for a in report["arms"] for t, c in (a.get("confusion") or {}).items()]
    if confusions:
        parts += ["<h2>Confusion matrices (rows: true class, columns: predicted)</h2>",
                  *confusions]
    readout = _readout_table(report)
    if readout:
        parts += ["<h2>Trade-off read-out</h2>", _html_table(*readout),
                  '<p class="note">Old-task metric from a least-squares fit along each arm\'s '
                  "path, read at fixed new-task values; — = outside the path (not extrapolated)."
                  "</p>"]
    parts += ["<h2>All metrics</h2>", _html_table(*_all_metric_rows(report)),
              "<details><summary>Provenance</summary>",
              _kv_table(report["provenance"])]
    for a in report["arms"]:
        parts += [f"<h3>{_h(a['name'])} <code>{_h(a['checkpoint'])}</code></h3>",
                  _kv_table(a["provenance"])]
    parts.append(f'<p class="note">schema {_h(report["schema"])}, created {_h(report["created"])}'
                 "</p></details></body></html>")
    return "\n".join(parts)
