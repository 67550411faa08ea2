"""docs/ci.md's exit-code table is the one a CI job reads: it lists every code a command can
end with (core/errors.py's and the CLI's), and its GitHub Actions step handles each failing one
by name (before: exit 4, a diverged fine-tune, was missing, and the step called it a crash in
goodfit to report)."""

from __future__ import annotations

import re
from pathlib import Path

from goodfit_cli.core.errors import Diverged, GateFailure, UserError

CI = (Path(__file__).resolve().parents[1] / "docs" / "ci.md").read_text(encoding="utf-8")


def test_every_exit_code_is_in_the_ci_table_and_handled_by_the_github_step():
    table = CI.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([0-9][0-9 /]*) \|", table, re.M)
    documented = {int(c) for row in rows for c in row.split("/")}
    codes = {0, 1, 130, 143, UserError.exit_code, GateFailure.exit_code, Diverged.exit_code}
    assert documented == codes
    step = CI.split("code=$?", 1)[1].split("esac", 1)[0]
    handled = {int(c) for case in re.findall(r"^\s*([\d|]+)\)", step, re.M)
               for c in case.split("|")}
    assert codes - {1} <= handled  # 1 (a bug) is the `*)` branch
