"""An arm listed twice (in finetune.arms or by --optimizer) is a user's mistake: one line naming
it, exit 2, before anything is written (before: both trained into one folder, exit 0, and the
report listed the same arm twice as "2 arms compared")."""

from __future__ import annotations

import pytest
from test_reliability import TINY, assert_one_error_line, invoke


@pytest.mark.parametrize("given, where", [
    (["finetune.arms=[adamw, adamw]"], "finetune.arms"),
    (["--optimizer", "sgd", "--optimizer", "sgd"], "--optimizer"),
])
def test_an_arm_listed_twice_is_refused_before_anything_is_written(tmp_path, given, where):
    res = invoke("finetune", "--recipe", "toy", "--base", tmp_path / "missing.safetensors",
                 "--out", tmp_path / "run", *TINY, *given)
    line = assert_one_error_line(res)
    assert where in line and "listed twice" in line
    assert not (tmp_path / "run").exists()
