"""Regression reports: RunSide data → a JSON report → Markdown (PR comment) and one HTML page."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from goodfit_cli.report.build import build_report
from goodfit_cli.report.model import RunSide
from goodfit_cli.report.render import render_html, render_markdown, verdict
from goodfit_cli.report.schema import REPORT_SCHEMA, validate_report

__all__ = ["RunSide", "build_report", "render_markdown", "render_html", "validate_report",
           "write_report", "verdict", "REPORT_SCHEMA"]


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Validate `report` and write report.json, report.md and report.html into out_dir.

    Each file is written to a temp file in out_dir and renamed over its target, so a reader
    never sees a half-written file. Returns {"json": path, "md": path, "html": path}.
    """
    errors = validate_report(report)
    if errors:
        raise ValueError(f"report does not match {report.get('schema')}: " + "; ".join(errors[:5]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"json": json.dumps(report, indent=2, allow_nan=False) + "\n",
             "md": render_markdown(report), "html": render_html(report)}
    paths = {}
    for kind, text in texts.items():
        path = out / f"report.{kind}"
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".report.{kind}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths[kind] = path
    return paths
