"""Table features are read by column name, the same columns from every file: a file whose
columns come in another order, a column named twice, an extra column or the label listed as a
feature would otherwise feed the model other numbers than its training file's, silently."""

from __future__ import annotations

import pytest
import torch

from goodfit_cli.core.errors import UserError
from goodfit_cli.data import build_data

ROWS = [(1.0, 10.0, 0), (2.0, 20.0, 1), (3.0, 30.0, 0), (4.0, 40.0, 1)]


def csv(path, header="a,b,label", order=(0, 1, 2)):
    path.write_text(header + "\n" + "".join(",".join(str(r[i]) for i in order) + "\n"
                                            for r in ROWS))


def tasks(tmp_path, **args):
    spec = {"train": "tr.csv", "test": "te.csv"}
    return build_data("table", {"old": spec, "new": spec, **args}, seed=0,
                      data_dir=str(tmp_path), where="data")


def test_a_test_file_with_its_columns_in_another_order_is_read_by_name(tmp_path):
    csv(tmp_path / "tr.csv")
    csv(tmp_path / "te.csv", "b,label,a", (1, 2, 0))
    old = tasks(tmp_path)["old"]
    assert torch.equal(old.test.x, torch.tensor([r[:2] for r in ROWS]))


@pytest.mark.parametrize("header, args, why", [
    ("a,a,label", {}, r"data.args.old.test: .*te.csv: column 'a' is named twice in the header"),
    ("a,b,label", {"features": ["a", "label"]}, r"data.args.features: lists the label column"),
])
def test_a_column_named_twice_or_the_label_as_a_feature_is_refused(tmp_path, header, args, why):
    csv(tmp_path / "tr.csv")
    csv(tmp_path / "te.csv", header)
    with pytest.raises(UserError, match="^" + why):
        tasks(tmp_path, **args)


def test_a_column_the_first_file_lacks_is_refused_unless_features_are_listed(tmp_path):
    csv(tmp_path / "tr.csv")
    (tmp_path / "te.csv").write_text("a,b,c,label\n" + "".join(f"{a},{b},5,{y}\n"
                                                                for a, b, y in ROWS))
    with pytest.raises(UserError, match=r"^data.args.old.test: .*te.csv has column 'c', which "
                                        r".*tr.csv lacks; list the feature columns"):
        tasks(tmp_path)
    assert tasks(tmp_path, features=["b", "a"])["old"].test.x[0].tolist() == [10.0, 1.0]
