"""`goodfit wise RUN` (the run folder, not one of its arms) names RUN and says to give an arm
(before: `recipe not found: recipe.yaml`, the recipe looked for beside the run folder)."""

from __future__ import annotations

from test_reliability import assert_one_error_line, invoke


def test_wise_of_a_run_folder_names_it_and_asks_for_an_arm(tmp_path):
    run = tmp_path / "run"
    (run / "adamw").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "adamw" / "summary.json").write_text("{}")
    line = assert_one_error_line(invoke("wise", run, "--alpha", "0.5", "--out", tmp_path / "w"))
    assert str(run) in line and "not a finished arm" in line and "give one of its arms" in line
    # the arms it holds, to copy (before: 'RUN/<arm>' alone)
    assert line.endswith(f"give one of its arms: {run / 'adamw'}"), line
    assert not (tmp_path / "w").exists()
