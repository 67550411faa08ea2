"""The pieces of a report both renderers show (values and deltas read as report/reading.py
words them): the main table's rows, the verdict, the notes, the candidates, the flipped
examples and the confusion matrices.

render.py lays them out as Markdown and as HTML; nothing here writes a file.
"""

from __future__ import annotations

import json

from goodfit_cli.data.validation import THIN, class_named, thin_shown
from goodfit_cli.core.units import amount_text
from goodfit_cli.objectives import unit
from goodfit_cli.report.reading import (_DASH, _delta_text, _tone, fmt_ci, fmt_delta,
                                        fmt_value, unit_in)

def verdict(report: dict) -> str:
    """One line: all arms passed / which failed the gate / no gate; then what the verdict ships."""
    return _verdict(report)[1]


def _verdict(report: dict) -> tuple[str, str]:
    """("pass" | "fail" | "none", the verdict line): the arms against the gate, then what the
    report's verdict ships and whether that passes the gate on test, so a reader whose arms
    failed learns in the first line whether something within the gate ships."""
    arms = report["arms"]
    gated = [a for a in arms if a.get("gate")]
    if not gated:
        tone = "none"
        line = f"{len(arms)} arm{'s' * (len(arms) != 1)} compared with the base (no gate)"
    elif failed := [a["name"] for a in gated if not a["gate"]["passed"]]:
        tone = "fail"
        line = f"gate FAILED for {', '.join(failed)} ({len(failed)} of {len(gated)} arms)"
    else:
        tone = "pass"
        line = (f"all {len(gated)} arms passed the gate" if len(gated) > 1
                else f"{gated[0]['name']} passed the gate")
    return tone, line + _ships(report)


def _ships(report: dict) -> str:
    """'; ships X (passes the gate on test)' / '; ships nothing: keep the base', or ''."""
    v = report.get("verdict")
    if not v:
        return ""
    ship = v.get("ship")
    if ship is None:
        return "; the verdict ships nothing: keep the base"
    gate = {True: " (passes the gate on test)", False: " (FAILS the gate on test)"}
    return f"; the verdict ships {ship['name']}{gate.get(ship.get('passes_gate_test'), '')}"


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
    uo, un = unit_in(report, "old", po), unit_in(report, "new", pn)
    rows = [[("base", ""), (fmt_value(po, base["old"].get(po), uo), ""), ("", ""),
             (_base_new(report, pn), ""), ("", "")]
            + [("", "")] * (has_compute + 2 * has_flips + has_gate)]
    for a in report["arms"]:
        do, dn = a["delta"]["old"].get(po), a["delta"]["new"].get(pn)
        row = [(a["name"], ""), (fmt_value(po, a["metrics"]["old"].get(po), uo), ""),
               (_delta_text(po, do, uo), _tone(do)),
               (fmt_value(pn, a["metrics"]["new"].get(pn), un), ""),
               (_delta_text(pn, dn, un), _tone(dn))]
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
    return fmt_value(metric, report["base_metrics"]["new"].get(metric),
                     unit_in(report, "new", metric))


def _candidates(report: dict) -> list[tuple[str, str]]:
    """(label, checkpoint) of every candidate: labels like adamw#2 name a file."""
    return [(a["name"], a["checkpoint"]) for a in report["arms"]]


def class_label(report: dict, c) -> str:
    """A class id as the report shows it: with its name when the data names its classes
    (provenance "class_names": an image folder's folder names, a table's label names)."""
    return class_named(c, (report.get("provenance") or {}).get("class_names"))


def _flipped_rows(report: dict, top: int = 10) -> list[list[tuple[str, str]]]:
    """The first old-task samples each arm broke: index, file or row, label, base → arm."""
    rows = []
    for a in report["arms"]:
        f = (a.get("flipped") or {}).get("old")
        for e in (f or {}).get("negative", [])[:top]:
            rows.append([(a["name"], ""), (str(e["index"]), ""), (e.get("id") or _DASH, ""),
                         (class_label(report, e["target"]), ""),
                         (f"{class_label(report, e['base'])} → {class_label(report, e['arm'])}",
                          "worse")])
    return rows


def _all_metric_rows(report: dict) -> tuple[list[str], list[list[tuple[str, str]]]]:
    head = ["task", "metric", "base"] + [a["name"] for a in report["arms"]]
    rows = []
    for task in ("old", "new"):
        names = list(report["base_metrics"][task])
        for a in report["arms"]:
            names += [m for m in a["metrics"][task] if m not in names]
        for m in names:
            u = unit_in(report, task, m)
            value = (_base_new(report, m) if task == "new" else
                     fmt_value(m, report["base_metrics"][task].get(m), u))
            row = [(task, ""), (m, ""), (value, "")]
            for a in report["arms"]:
                d = a["delta"][task].get(m)
                text = fmt_value(m, a["metrics"][task].get(m), u)
                row.append((text + (f" ({_delta_text(m, d, u)})" if d else ""), _tone(d)))
            rows.append(row)
    return head, rows


def _per_class_rows(report: dict, top: int = 5) -> list[list[tuple[str, str]]]:
    rows = []
    for a in report["arms"]:
        for r in [r for r in a["per_class"].get("old", []) if r["delta"] < 0][:top]:
            rows.append([(a["name"], ""), (class_label(report, r["class"]), ""),
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
    uo, un = unit_in(report, "old", mo), unit_in(report, "new", mn)
    head = ["arm"] + [f"old {mo} at new {mn} = {fmt_value(mn, v['new'], un)}"
                      for v in ro["values"]]
    rows = [[(a["name"], "")] + [(fmt_value(mo, v["old"], uo), "")
                                 for v in a["readout"]["values"]]
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
    others = {n: f for n, f in (prov.get("inputs") or {}).items() if f != fed}
    notes += [f"Inputs of {n}: " + (f"normalised with mean {_stats(f['mean'])}, std "
                                    f"{_stats(f['std'])} ({f['source']})." if "mean" in f
                                    else f"{f.get('source', 'as stored')}.")
              for n, f in others.items()]  # compare: a checkpoint fed other statistics
    notes += [prov["input_warning"]] if prov.get("input_warning") else []
    notes += _balance_note(prov)
    notes += [prov["validation_gap"]["message"]] if prov.get("validation_gap") else []
    notes += [prov[k]["message"] for k in ("base_outside_gate", "base_outside_gate_test",
                                           "ancestor", "other_base", "other_model") if prov.get(k)]
    notes += [f"Arm {a} diverged in an earlier command of this run ({line}) and was left out: "
              "it is no candidate of this report's verdict."
              for a, line in (prov.get("diverged") or {}).items()]
    if not head:
        return notes
    return notes + [f"Base head: {c['message']}." for c in head["changes"]] + [
        f"The base is measured with {head['measured_with']}."]


def _balance_note(prov: dict) -> list[str]:
    """The new task's class balance as trained (its loss's `balance`, finetune.sampling), when
    the run used one: one line."""
    args = ((prov.get("losses") or {}).get("new") or {}).get("args") or {}
    drawn = (prov.get("sampling") or {}).get("how")
    said = ([f"loss {args['balance']} (tau {args.get('balance_tau', 1.0):g})"]
            if args.get("balance", "none") != "none" else [])
    said += [f"batches drawn {drawn} over its classes"] if drawn else []
    return [f"New-task class balance: {'; '.join(said)}."] if said else []


def _stats(values: list[float]) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:6])
    return f"[{shown}{', ...' if len(values) > 6 else ''}]"


def _early_stops(report: dict) -> list[tuple[str, str]]:
    """(arm, why it stopped and where its checkpoint is from) for arms with early stopping, or
    that a search trial's rung ended with (workflows/pruning.py PruneWatch.settle)."""
    rows = []
    for a in report["arms"]:
        e, r = ((a.get("provenance") or {}).get(k) for k in ("early_stop", "rung_weights"))
        if e:
            where = (f"stopped at batch {e['stopped_at']} of {e['budget']}: "
                     if e.get("stopped_at") is not None else "")
            kept = "" if r else f"; checkpoint: {e['checkpoint']}"  # else the rung's (below)
            rows.append((a["name"], f"{where}{e['reason']}{kept}"))
        if r:
            at = r.get("rung_batch", r["batch"])  # early stopping's best then, if earlier
            then = "" if at == r["batch"] else f" at batch {at}, early stopping's best then"
            rows.append((a["name"], f"checkpoint: the weights of batch {r['batch']} (the "
                         f"search's rung {r['rung']}{then}), whose best WiSE-FT point on "
                         "validation beat the end weights'"))
    return rows


def _header_lines(report: dict) -> list[str]:
    """The gate's limits and the split choices are made on: the top of every report."""
    lines = [f"Gate: {report.get('gate_limits') or 'no gate'}."]
    sel = (report.get("provenance") or {}).get("validation")
    names = (report.get("provenance") or {}).get("class_names")
    if sel:
        lines.append("Choices (early stopping, plateau, WiSE α, the verdict) are made on "
                     "validation: " + "; ".join(f"{t} {_split_text(v, names)}"
                                                for t, v in sel.items())
                     + ". Test is measured for the report only.")
    elif "base_val_metrics" in report:
        lines.append("Choices (the verdict) are made on validation; test is measured for the "
                     "report only.")
    return lines


def _split_text(v: dict, names: list[str] | None = None) -> str:
    sizes = f"{v.get('train')} train / {v.get('val')} val / {v.get('test')} test"
    if v.get("thin"):  # classes the choices barely see (data/validation.py thin_classes)
        sizes += f"; under {THIN} val samples: {thin_shown(v['thin'], names)}"
    if v.get("overlap"):  # test/val samples that are training ones (data/overlap.py)
        sizes += "; shared inputs: " + ", ".join(f"{n} {k.replace('_', ' ')}"
                                                  for k, n in v["overlap"].items())
    if v.get("source") == "carved":
        how = "stratified by class" if v.get("stratified") else "random"
        return (f"carved from training ({v['fraction'] * 100:g} %, {how}, seed {v['seed']}; "
                f"{sizes})")
    return f"given by the data ({sizes})"


def _verdict_rows(report: dict) -> tuple[list[str], list[list[tuple[str, str]]]] | None:
    """The base (what the verdict compares against on validation), then per arm: validation and
    test primaries, the gate on validation, what dominates it."""
    v = report.get("verdict")
    if not v:
        return None
    po, pn = v["metrics"]
    uo, un = unit_in(report, "old", po), unit_in(report, "new", pn)
    head = ["model", f"old {po} (val)", f"new {pn} (val)", f"old {po} (test)", f"new {pn} (test)",
            "gate (val)", "dominated by (val; ✓ = also on test)", "verdict"]
    gated = any(a.get("gate") for a in report["arms"])  # no gate: nothing to pass
    gate_cell = lambda ok: ("passes" if ok else "FAILS") if gated else "no gate"  # noqa: E731
    bv, bt = report.get("base_val_metrics") or {}, report.get("base_metrics") or {}
    rows = [[("base", "")] + [(fmt_value(m, (side.get(t) or {}).get(m), u), "")  # the reference
                              for side in (bv, bt) for t, m, u in (("old", po, uo),
                                                                    ("new", pn, un))]
            + [(_DASH, ""), (_DASH, ""), ("the reference (kept when nothing ships)", "")]]
    for a in v["arms"]:
        val, test = a["val"] or {}, a["test"] or {}
        names = [d["name"] + (" ✓" if d["confirmed_on_test"] else "")
                 for d in sorted(a["dominated_by"], key=lambda d: not d["confirmed_on_test"])]
        by = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "") \
            if names else _DASH
        tone = "worse" if a["dominated_by"] else "better"
        rows.append([(a["name"], ""), (fmt_value(po, val.get("old"), uo), ""),
                     (fmt_value(pn, val.get("new"), un), ""),
                     (fmt_value(po, test.get("old"), uo), ""),
                     (fmt_value(pn, test.get("new"), un), ""),
                     (gate_cell(a["passes_gate_val"]), ""), (by, ""),
                     (a["status"], tone)])
    return head, rows


def _wise_rows(report: dict) -> tuple[list[str], list[list[tuple[str, str]]]] | None:
    """Per arm with a WiSE-FT curve on validation: the α chosen there (the best new-task point
    that gains over the base and passes the gate; report/trials.py) with its validation and
    test primaries; the grid's other points are measured on validation only."""
    arms = [a for a in report["arms"] if a.get("wise") and any("val" in w for w in a["wise"])]
    if not arms:
        return None
    po, pn = report["tasks"]["old"]["primary"], report["tasks"]["new"]["primary"]
    uo, un = unit_in(report, "old", po), unit_in(report, "new", pn)
    head = ["arm", "grid (val)", "chosen α", f"old {po} (val)", f"new {pn} (val)",
            f"old {po} (test)", f"new {pn} (test)"]
    rows = []
    for a in arms:
        grid = ", ".join(f"{w['alpha']:g}" for w in a["wise"] if 0 < w["alpha"] < 1)
        w = next((w for w in a["wise"] if w.get("chosen")), None)
        if w is None:
            rows.append([(a["name"], ""), (grid, ""), ("none (no interior point gains and "
                                                       "passes the gate)", "")]
                        + [(_DASH, "")] * 4)
            continue
        val = w.get("val") or {}
        rows.append([(a["name"], ""), (grid, ""), (f"{w['alpha']:g}", ""),
                     (fmt_value(po, (val.get("old") or {}).get(po), uo), ""),
                     (fmt_value(pn, (val.get("new") or {}).get(pn), un), ""),
                     (fmt_value(po, (w.get("old") or {}).get(po), uo), ""),
                     (fmt_value(pn, (w.get("new") or {}).get(pn), un), "")])
    return head, rows


def _ship_line(report: dict) -> str | None:
    v = report.get("verdict")
    if not v:
        return None
    po, pn = v["metrics"]
    ship = v["ship"]
    if ship is None:
        why = v.get("none_because") or "no candidate passes the gate on validation"
        k = v["candidates"]
        return f"Ship nothing: {why}; keep the base ({k} candidate{'' if k == 1 else 's'})."
    what = ship["name"] + (f" (`goodfit wise RUN/{ship['arm']} --alpha {ship['alpha']:g}`)"
                           if ship["kind"] == "wise" else "")
    gate = {True: "passes", False: "FAILS", None: "no gate"}[ship["passes_gate_test"]]
    val, test = ship["val"], ship["test"] or {}
    uo, un = unit_in(report, "old", po), unit_in(report, "new", pn)
    return (f"Ship {what}: validation old {po} {fmt_value(po, val['old'], uo)}, new {pn} "
            f"{fmt_value(pn, val['new'], un)}; test old {fmt_value(po, test.get('old'), uo)}, "
            f"new {fmt_value(pn, test.get('new'), un)} (test gate: {gate})."
            + "".join(" " + slack_line(f, po, uo) for f in ship.get("floor_slack") or [])
            + _close(ship, pn, un) + _tied(ship))


def _tied(ship: dict) -> str:
    """The candidates exactly equal to the shipped one on validation (verdict.py)."""
    tied = ship.get("tied_with")
    if not tied:
        return ""
    return (f" Tied on validation with {', '.join(tied)} (the same old and new values): the "
            "first in the report's order is shipped; validation cannot choose between them.")


def slack_line(f: dict, metric: str, shown: str | None = None) -> str:
    """How far a choice's validation old-task value clears a floor or ceiling, in standard errors
    of that reading (report/margin.py floor_slack), for the verdict and a search."""
    z, u = f"{f['z']:.1f}", unit(metric) if shown is None else shown
    return (f"Its validation old {metric} clears {f['limit']} by {amount_text(f['slack'], u, 2)}, "
            f"{z} standard error{'' if z == '1.0' else 's'} of that reading "
            f"(±{amount_text(f['se'], u, 2)} on {f['n']} "
            "samples): fresh data can take that back (the test numbers are the check).")


def within_phrase(cc: dict, metric: str, shown: str | None = None) -> str:
    """'within one standard error of its validation new accuracy (±5.4 pts on 71 samples)': the
    close calls' bound (report/margin.py within_noise) in words, for the verdict and a search."""
    z = "one standard error" if cc["z"] == 1 else f"{cc['z']:g} standard errors"
    se = amount_text(cc["se"], unit(metric) if shown is None else shown, 2)
    return f"within {z} of its validation new {metric} (±{se} on {cc['n']} samples)"


def _close(ship: dict, pn: str, shown: str | None = None) -> str:
    """What the validation split cannot tell from the shipped candidate (verdict.py)."""
    cc = ship.get("close_calls")
    if not cc:
        return ""
    within = within_phrase(cc, pn, shown)
    if not cc["names"]:
        return f" No other candidate that passes is {within}."
    return (f" Within validation noise: {', '.join(cc['names'])} "
            f"{'is' if len(cc['names']) == 1 else 'are'} {within}; the validation split "
            "cannot tell them apart.")


def _flat(d: dict) -> list[tuple[str, str]]:
    return [(k, v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in d.items()]


def time_rows(phases: dict[str, float], total: float) -> list[list[str]]:
    """[phase, seconds, share of `total`] per phase, then the total: a "Where the time went"
    table's rows (the finetune, compare and wise reports; the search's, summed over trials)."""
    share = lambda v: f"{v / total:.0%}" if total else "-"  # noqa: E731
    return ([[k.replace("_", " "), f"{v:.2f}", share(v)] for k, v in phases.items()]
            + [["total", f"{total:.2f}", share(total)]])
