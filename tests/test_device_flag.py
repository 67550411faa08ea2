"""A `--device` that is not auto, cpu or cuda[:N] is a user's mistake: one line naming it,
exit 2, nothing written (before: `internal error: RuntimeError: Expected one of cpu, cuda, ...`,
exit 1; `--device mps` or `meta` failed the same way, further in)."""

from __future__ import annotations

import pytest
from test_reliability import TINY, assert_one_error_line, invoke


@pytest.mark.parametrize("device", ["tpu", "CPU", "mps", "meta", "cuda:x"])
def test_an_unknown_device_is_one_line_and_exit_2(tmp_path, device):
    res = invoke("pretrain", "--recipe", "toy", "--out", tmp_path / "run", *TINY,
                 "--device", device)
    line = assert_one_error_line(res)
    assert f"device '{device}'" in line and "internal error" not in line
    assert not (tmp_path / "run").exists()
