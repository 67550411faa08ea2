"""An output file option (`--junit`, eval's `--out`) naming an existing folder is refused
before any work, in one line naming the option and the path (before: `finetune --junit DIR`
trained every arm, wrote the run, then failed with `cannot write DIR: Is a directory`)."""

from __future__ import annotations

from test_reliability import TINY, assert_one_error_line, invoke


def test_junit_or_eval_out_naming_a_folder_is_refused_before_training(tmp_path):
    base = tmp_path / "base"
    assert invoke("pretrain", "--recipe", "toy", "--out", base, *TINY).exit_code == 0
    res = invoke("finetune", "--recipe", "toy", "--base", base / "model.safetensors",
                 "--out", tmp_path / "run", "--optimizer", "rmsprop", "--no-wise",
                 "--max-old-drop", "10", "--junit", base, *TINY)
    line = assert_one_error_line(res)
    assert "--junit" in line and str(base) in line and "directory" in line
    assert not (tmp_path / "run").exists()  # nothing trained, nothing to clear before a re-run
    res = invoke("eval", "-c", base / "model.safetensors", "--recipe", "toy", "--out", base,
                 *TINY)
    line = assert_one_error_line(res)
    assert "--out" in line and str(base) in line and "directory" in line
