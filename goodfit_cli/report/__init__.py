"""Regression reports: RunSide data → a JSON report → Markdown (PR comment) and one HTML page."""

from __future__ import annotations

import json
import os
from pathlib import Path

from goodfit_cli.io.staging import write_together
from goodfit_cli.report.build import build_report
from goodfit_cli.report.model import RunSide
from goodfit_cli.report.render import render_html, render_markdown, verdict
from goodfit_cli.report.schema import REPORT_SCHEMA, validate_report

__all__ = ["RunSide", "build_report", "render_markdown", "render_html", "validate_report",
           "write_report", "verdict", "REPORT_SCHEMA"]


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Validate `report` and write report.json, report.md and report.html into out_dir.

    Each file goes through the one atomic writer (goodfit_cli.io.atomic), so a reader never sees
    a half-written file and a full disk is one UserError line; the three replace the old ones
    as a set (io/staging.py), so an interrupt or a failure never leaves new and old mixed.
    Returns {"json": path, "md": path, "html": path}.
    """
    errors = validate_report(report)
    if errors:
        raise ValueError(f"report does not match {report.get('schema')}: " + "; ".join(errors[:5]))
    out = Path(out_dir)
    texts = {"json": json.dumps(report, indent=2, allow_nan=False) + "\n",
             "md": render_markdown(report), "html": render_html(report)}
    write_together(out, {f"report.{kind}": text for kind, text in texts.items()})  # one set
    return {kind: out / f"report.{kind}" for kind in texts}
