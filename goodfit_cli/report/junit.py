"""Gate results as JUnit XML, the format every CI system shows as test cases."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.atomic import atomic_write


def write_junit(path: str | os.PathLike, results: dict[str, dict]) -> None:
    """JUnit XML: one testsuite "goodfit.gate", one testcase per arm and limit, failures for
    violations. Written through the one atomic writer."""
    checks = [(arm, c) for arm, res in results.items() for c in res["checks"]]
    failures = sum(not c["passed"] for _, c in checks)
    root = ET.Element("testsuites", name="goodfit", tests=str(len(checks)),
                      failures=str(failures), errors="0")
    suite = ET.SubElement(root, "testsuite", name="goodfit.gate", tests=str(len(checks)),
                          failures=str(failures), errors="0", skipped="0")
    for arm, c in checks:
        case = ET.SubElement(suite, "testcase", classname=f"goodfit.{arm}", name=c["limit"])
        if c["passed"]:
            ET.SubElement(case, "system-out").text = c["message"]
        else:
            ET.SubElement(case, "failure", message=c["message"], type="GateViolation").text = \
                c["message"]
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot write the JUnit file ({e.strerror or e})") from None
    atomic_write(path, data)
