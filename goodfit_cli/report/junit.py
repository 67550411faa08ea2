"""Gate results as JUnit XML, the format every CI system shows as test cases."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.atomic import atomic_write


def class_name(arm: str) -> str:
    """The testcase's classname for `arm`: "goodfit." and the arm's name with every run of dots
    and whitespace made one "_". CI systems (Jenkins, GitLab) read a classname's dots as
    package separators, so "goodfit.plain@wise0.5" would show as class "5" of package
    "goodfit.plain@wise0"; the arm's own name is the testcase's property "arm"."""
    return "goodfit." + re.sub(r"[.\s]+", "_", arm)


def write_junit(path: str | os.PathLike, results: dict[str, dict]) -> None:
    """JUnit XML: one testsuite "goodfit.gate", one testcase per arm and limit (`class_name`),
    failures for violations. Written through the one atomic writer."""
    checks = [(arm, c) for arm, res in results.items() for c in res["checks"]]
    failures = sum(not c["passed"] for _, c in checks)
    root = ET.Element("testsuites", name="goodfit", tests=str(len(checks)),
                      failures=str(failures), errors="0")
    suite = ET.SubElement(root, "testsuite", name="goodfit.gate", tests=str(len(checks)),
                          failures=str(failures), errors="0", skipped="0")
    for arm, c in checks:
        case = ET.SubElement(suite, "testcase", classname=class_name(arm), name=c["limit"])
        ET.SubElement(ET.SubElement(case, "properties"), "property", name="arm", value=arm)
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
