"""A test or validation sample that is, byte for byte, a training sample (a file copied into both
splits) is counted per task, recorded in run.json's validation record, said in one line and
shown in the report; a streamed training split is not read for it (data/overlap.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from runs import npz_task

from goodfit_cli.data.base import Split, Task
from goodfit_cli.data.overlap import fingerprints, shared
from goodfit_cli.data.validation import overlap_line, split_lines

ROOT = Path(__file__).resolve().parents[1]


def _task(train, test, val) -> Task:
    return Task("new", "classification", train, test, 2, [0, 1], val=val)


def test_shared_counts_test_and_val_copies_of_training_and_test_samples():
    x = torch.randn(10, 3)
    y = torch.arange(10) % 2
    test = Split(torch.cat([x[[2, 5, 7]], torch.randn(4, 3)]), torch.zeros(7, dtype=torch.long))
    val = Split(torch.cat([test.x[[4]], torch.randn(2, 3)]), torch.zeros(3, dtype=torch.long))
    assert shared(_task(Split(x, y), test, val)) == {"test_in_train": 3, "val_in_test": 1}
    # one bit away is another sample; a label does not make a copy another sample
    near = x[[2]].clone()
    near.view(torch.int32)[0, 0] ^= 1
    other = Split(torch.cat([near, x[[5]]]), torch.tensor([1, 0]))
    assert shared(_task(Split(x, y), other, Split(torch.randn(2, 3), y[:2]))) == {
        "test_in_train": 1}
    assert shared(_task(Split(x, y), Split(torch.randn(2, 3), y[:2]), val)) == {}


def test_fingerprints_read_every_input_of_a_dict_and_skip_what_is_not_in_memory():
    ids = torch.tensor([[1, 2, 3], [1, 2, 3]])
    masks = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the same tokens, another mask: not a copy
    a = fingerprints(Split({"input_ids": ids, "attention_mask": masks}, torch.zeros(2)))
    assert len(a) == 2 and a[0] != a[1]
    b = fingerprints(Split({"input_ids": ids[:1], "attention_mask": masks[:1]}, torch.zeros(1)))
    assert b == a[:1]
    assert fingerprints(Split(torch.zeros(0, 3), torch.zeros(0))) == []
    assert fingerprints(object()) is None  # a streamed split
    task = _task(object(), Split(ids.float(), torch.zeros(2)), None)
    assert shared(task) == {}


def test_the_line_names_the_task_the_counts_and_the_split_sizes():
    rec = {"source": "given", "train": 48, "val": 10, "test": 12,
           "overlap": {"test_in_train": 3, "val_in_test": 1}}
    line = overlap_line("new", rec)
    assert line.startswith("new task: 3 of its 12 test samples are training samples; 1 of its "
                           "10 val samples are test samples (the same inputs, byte for byte)")
    assert overlap_line("new", {"val": 10}) is None
    assert split_lines("old", {"val": 3, "thin": {"1": 0}, **{k: rec[k] for k in (
        "test", "overlap")}})[1] == overlap_line("old", {**rec, "val": 3})


def test_finetune_records_says_and_reports_copies_of_training_samples(tmp_path):
    rng = np.random.default_rng(0)
    data = {}
    for name, n, cls in (("tr", 48, [0, 1]), ("va", 10, [0, 1]), ("te", 12, [0, 1]),
                         ("ntr", 32, [2]), ("nva", 6, [2]), ("nte", 8, [2])):
        y = np.resize(np.asarray(cls), n).astype(np.int64)
        data[name] = [rng.normal(size=(n, 2)).astype(np.float32), y]
    data["nte"][0][[1, 4]] = data["ntr"][0][[0, 9]]  # two new test samples copied from training
    recipe = npz_task(tmp_path, {k: tuple(v) for k, v in data.items()})

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "goodfit_cli", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    assert cli("pretrain", "--recipe", recipe, "--out", tmp_path / "b").returncode == 0
    res = cli("finetune", "--recipe", recipe, "--base",
              tmp_path / "b" / "model.safetensors", "--out", tmp_path / "ft", "--no-wise")
    assert res.returncode == 0, res.stderr
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["validation"]["new"]["overlap"] == {"test_in_train": 2}
    assert "overlap" not in run["validation"]["old"]
    said = " ".join((res.stdout + res.stderr).split())
    assert "new task: 2 of its 8 test samples are training samples" in said
    report = (tmp_path / "ft" / "report.md").read_text()
    assert "shared inputs: 2 test in train" in report
    res = cli("data", "summary", "--recipe", recipe)  # what a user looks at before a run
    assert res.returncode == 0, res.stderr
    assert "new task: 2 of its 8 test samples are training samples" in " ".join(
        (res.stdout + res.stderr).split())
    res = cli("data", "summary", "--recipe", recipe, "--json")
    assert json.loads(res.stdout)["new"]["validation"]["overlap"] == {"test_in_train": 2}
