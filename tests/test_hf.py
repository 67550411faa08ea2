"""transformers model folders as bases, text data and datasets folders (goodfit[hf]).

What is checked, on tiny models built here from configs (hidden 32, 2 layers; nothing is
downloaded): a ViT image classifier's and a BERT-style text classifier's save_pretrained
folders build as the registered `transformers` model from their config.json, load their
weights (renamed by transformers itself) with the head grown for new classes (the base's rows
kept, the logits on the old classes the base's own), keep id2label true, and are fed as their
image processor says (mean, std, size, resample); text is tokenised by the folder's own
tokenizer with the lengths recorded; save_to_disk folders are data; a missing library is one
line naming the extra. Through the CLI: a ViT folder with an old and a new task and a gate,
and a BERT folder on text with replay, streaming and --nproc 2; each arm also writes a folder
that from_pretrained loads and that computes what goodfit's checkpoint computes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.core.errors import UserError
from goodfit_cli.data import build_data
from goodfit_cli.data.inputs import from_config, geometry
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.models import build_model, head_prefixes
from goodfit_cli.models.from_config import spec_from_config
from goodfit_cli.recipe import parse_recipe
from goodfit_cli.trainer.session import adopt_base_inputs, load_checkpoint

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]
WORDS = "the a movie plot good great fine bad awful poor game team match news report".split()
TOPICS = {"neg": ["bad", "awful", "poor"], "pos": ["good", "great", "fine"],
          "sport": ["game", "team", "match"], "news": ["news", "report"]}


def vit_folder(path: Path) -> Path:
    """A 3-class ViT (32x32 images, patches of 8) and its image processor, saved as a user would."""
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=3,
                                 id2label={0: "cat", 1: "dog", 2: "bird"},
                                 label2id={"cat": 0, "dog": 1, "bird": 2})
    transformers.ViTForImageClassification(cfg).save_pretrained(path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN,
                                   image_std=STD, resample=3).save_pretrained(path)
    return path


def bert_folder(path: Path) -> Path:
    """A 2-class BERT-style classifier (neg, pos) with a word-level tokenizer built here."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]",
                                                unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=32, id2label={0: "neg", 1: "pos"},
                                  label2id={"neg": 0, "pos": 1})
    transformers.BertForSequenceClassification(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def image_npz(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for name, n, cls in (("old_train", 24, [0, 1, 2]), ("old_test", 12, [0, 1, 2]),
                         ("new_train", 24, [3, 4]), ("new_test", 12, [3, 4])):
        np.savez(folder / f"{name}.npz", x=rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
                 y=np.resize(np.asarray(cls), n))


def text_session(tmp_path: Path, base: Path, overrides: list[str]):
    """The text recipe over tmp_path's JSONL files with `base` as its --base, opened as a
    fine-tune opens it (the base's inputs and model adopted): the session."""
    from goodfit_cli.trainer.session import Place, adopt_base_model, open_session

    recipe = parse_recipe(RECIPE.format(name="r", data="text", ext="jsonl"),
                          str(tmp_path / "r.yaml"), overrides)
    adopt_base_inputs(recipe, base)
    s = open_session(recipe, Place(data_dir=str(tmp_path)), join=False)
    adopt_base_model(recipe, base, s.tasks)
    return s


def text_jsonl(folder: Path) -> None:
    """Old task: neg/pos reviews (pos listed first); new task: sport/news."""
    rng = np.random.default_rng(0)
    for name, n, labels in (("old_train", 32, ["pos", "neg"]), ("old_test", 16, ["pos", "neg"]),
                            ("new_train", 32, ["sport", "news"]), ("new_test", 16, ["sport", "news"])):
        with open(folder / f"{name}.jsonl", "w") as f:
            for i in range(n):
                lab = labels[i % 2]
                words = rng.choice(TOPICS[lab] + ["the", "movie"], size=int(rng.integers(3, 10)))
                f.write(json.dumps({"text": " ".join(words), "label": lab}) + "\n")


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    return vit_folder(tmp_path_factory.mktemp("vit") / "vit")


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return bert_folder(tmp_path_factory.mktemp("bert") / "bert")


def text_args(folder: Path, **extra) -> dict:
    return {"old": {"train": "old_train.jsonl", "test": "old_test.jsonl"},
            "new": {"train": "new_train.jsonl", "test": "new_test.jsonl"}, **extra}


# ------------------------------------------------------------------ models


def test_a_transformers_config_names_the_transformers_model(vit):
    """config.json with `architectures` -> the registered transformers model on that folder,
    the data's class count and names; timm configs are unchanged."""
    config = json.loads((vit / "config.json").read_text())
    assert spec_from_config(config, vit / "config.json", 5) == (
        "transformers", {"path": str(vit.resolve()), "num_classes": 5})
    assert spec_from_config(config, vit / "config.json", None)[1]["num_classes"] == 3
    assert spec_from_config(config, vit / "config.json", 2, ["a", "b"])[1]["labels"] == ["a", "b"]


def test_a_vit_folder_loads_with_its_head_grown_and_its_own_logits(vit):
    """The folder's weights (renamed by transformers 5: encoder.layer.*.query -> layers.*.q_proj)
    load into the 5-class model: rows 0-2 are the base's, the logits on classes 0-2 equal
    from_pretrained's, and id2label keeps cat/dog/bird."""
    model = build_model("transformers", {"path": str(vit), "num_classes": 5})
    assert head_prefixes(model) == ["classifier."]
    loaded = load_checkpoint(model, vit, grow_rows=True)
    assert [c["kept_rows"] for c in loaded.head_changes] == [3, 3]
    assert loaded.input == {"kind": "image", "mean": MEAN, "std": STD,
                            "source": "preprocessor_config.json"}
    ref = transformers.AutoModelForImageClassification.from_pretrained(vit).eval()
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = model(x), ref(pixel_values=x).logits
    assert isinstance(ours, torch.Tensor) and ours.shape == (4, 5)
    assert torch.allclose(ours[:, :3], theirs, atol=1e-6)
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "bird", 3: "LABEL_3", 4: "LABEL_4"}
    assert model.config.label2id["bird"] == 2


def test_a_folder_that_is_not_a_classifier_is_one_line(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=8, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "m")
    with pytest.raises(UserError, match=r"architecture 'BertModel' is not a classifier"):
        build_model("transformers", {"path": str(tmp_path / "m"), "num_classes": 2})


def test_a_missing_library_names_the_extra(monkeypatch):
    """Without transformers installed, one line says which extra to install."""
    from goodfit_cli.io import hf

    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    with pytest.raises(UserError, match=r"needs the transformers library: pip install 'goodfit\[hf\]'"):
        hf.library("transformers", "x")


# ------------------------------------------------------------------ inputs


def test_the_image_processor_sets_mean_std_size_and_interpolation(vit, tmp_path):
    """preprocessor_config.json: mean/std feed the model (do_normalize false: [0, 1] as is);
    size and resample (3: bicubic) fill an image dataset's unset args."""
    proc = json.loads((vit / "preprocessor_config.json").read_text())
    spec = from_config(None, proc)
    assert (spec.mean, spec.std, spec.source) == (tuple(MEAN), tuple(STD), "preprocessor_config.json")
    assert from_config(None, {**proc, "do_normalize": False}).std == (1.0, 1.0, 1.0)
    recipe = parse_recipe(RECIPE.format(name="r", data="hf_disk", ext="x"), str(tmp_path / "r.yaml"))
    assert adopt_base_inputs(recipe, vit) == {"size": [32, 32], "interpolation": "bicubic",
                                              "labels_from": str(vit.resolve())}
    assert recipe.data.args["size"] == [32, 32]


# ------------------------------------------------------------------ data


def test_text_is_tokenised_by_the_folders_tokenizer_with_its_label_ids(bert, tmp_path):
    """input_ids are the tokenizer's own; the base's label2id decides neg=0, pos=1 although the
    file lists pos first, new names follow; padding longest pads every split to one length;
    what was done is the task's preprocessing record."""
    text_jsonl(tmp_path)
    tasks = build_data("text", text_args(tmp_path, tokenizer=str(bert), max_length=12,
                                         padding="longest"), seed=0, data_dir=str(tmp_path))
    old, new = tasks["old"], tasks["new"]
    first = json.loads((tmp_path / "old_train.jsonl").read_text().splitlines()[0])
    tok = transformers.AutoTokenizer.from_pretrained(bert)
    ids = tok(first["text"])["input_ids"]
    assert old.train.x["input_ids"][0, :len(ids)].tolist() == ids
    assert old.train.x["attention_mask"][0].sum() == len(ids)
    assert first["label"] == "pos" and old.train.y[0] == 1
    assert sorted(set(new.train.y.tolist())) == [2, 3]
    assert new.label_names == ["neg", "pos", "sport", "news"]
    widths = {t.x["input_ids"].shape[1] for task in tasks.values() for t in (task.train, task.test)}
    assert widths == {9}  # the longest text: 9 words, one token each
    assert old.preprocessing == {"tokenizer": str(bert), "max_length": 12, "padding": "longest",
                                 "truncation": True, "length": 9, "truncated": 0, "pad_token_id": 0,
                                 "text": "text"}
    cut = build_data("text", text_args(tmp_path, tokenizer=str(bert), max_length=4),
                     seed=0, data_dir=str(tmp_path))
    assert cut["old"].train.x["input_ids"].shape[1] == 4 and cut["old"].preprocessing["truncated"] > 0
    with pytest.raises(UserError, match=r"tokens, more than max_length 4; set truncation: true"):
        build_data("text", text_args(tmp_path, tokenizer=str(bert), max_length=4,
                                     truncation=False), seed=0, data_dir=str(tmp_path))


def test_a_save_to_disk_folder_is_data(tmp_path):
    """Images of two sizes resized to `size`; a ClassLabel's names and ids kept; text columns
    need a tokenizer."""
    from PIL import Image

    rng = np.random.default_rng(0)
    feats = datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=["cat", "dog", "fox"])})
    for name, cls in (("old_train", [0, 1]), ("old_test", [0, 1]), ("new_train", [2]),
                      ("new_test", [2])):
        imgs = [Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8))
                for i in range(4)]
        datasets.Dataset.from_dict({"image": imgs, "label": list(np.resize(cls, 4))},
                                   features=feats).save_to_disk(tmp_path / name)
    args = {"old": {"train": "old_train", "test": "old_test"},
            "new": {"train": "new_train", "test": "new_test"}, "size": [16, 16]}
    tasks = build_data("hf_disk", args, seed=0, data_dir=str(tmp_path))
    assert tasks["old"].train.x.shape == (4, 16, 16, 3) and tasks["old"].train.x.dtype == torch.uint8
    assert tasks["old"].train.y.tolist() == [0, 1, 0, 1] and tasks["new"].train.y.tolist() == [2] * 4
    assert tasks["new"].label_names == ["cat", "dog", "fox"]
    assert tasks["old"].test_ids[1] == f"{tmp_path / 'old_test'}#1"
    with pytest.raises(UserError, match=r"image 1 is 24x21, image 0 24x20; set data.args.size"):
        build_data("hf_disk", {**args, "size": None}, seed=0, data_dir=str(tmp_path))


def test_a_relative_tokenizer_reads_against_the_data_folder_and_is_recorded_absolute(
        bert, tmp_path, monkeypatch):
    """`tokenizer: tok` beside the data, read from another directory with data_dir set: found
    where the data paths are found (it was looked up in the cwd: "tok is not a folder"), and
    recorded absolute, so run.json's preprocessing names it from anywhere."""
    import shutil

    text_jsonl(tmp_path)
    shutil.copytree(bert, tmp_path / "tok")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    tasks = build_data("text", text_args(tmp_path, tokenizer="tok", max_length=12), seed=0,
                       data_dir=str(tmp_path))
    assert tasks["old"].preprocessing["tokenizer"] == str(tmp_path / "tok")
    monkeypatch.chdir(tmp_path)  # no data_dir: the cwd's folder, still recorded absolute
    tasks = build_data("text", text_args(tmp_path, tokenizer="tok", max_length=12), seed=0,
                       data_dir=None)
    assert tasks["new"].preprocessing["tokenizer"] == str(tmp_path / "tok")


def test_a_tokenizer_saved_on_its_own_reads_text_with_the_bases_label_ids(bert, tmp_path):
    """`tokenizer: tok`, a folder tokenizer.save_pretrained wrote (no weights, no config.json),
    beside a --base bert (neg 0, pos 1): the text is read (it stopped with "tok: no
    model.safetensors in the folder"), and the base's label2id, which adopt_base_inputs hands
    over as labels_from, keeps neg 0 and pos 1 although the file lists pos first."""
    text_jsonl(tmp_path)
    transformers.AutoTokenizer.from_pretrained(bert).save_pretrained(tmp_path / "tok")
    assert not (tmp_path / "tok" / "config.json").exists()
    recipe = parse_recipe(RECIPE.format(name="r", data="text", ext="jsonl").replace(
        "args:", "args:\n    tokenizer: tok\n    max_length: 12"), str(tmp_path / "r.yaml"))
    assert adopt_base_inputs(recipe, bert) == {"labels_from": str(bert.resolve())}
    tasks = build_data("text", recipe.data.args, seed=0, data_dir=str(tmp_path))
    first = json.loads((tmp_path / "old_train.jsonl").read_text().splitlines()[0])
    assert first["label"] == "pos" and tasks["old"].train.y[0] == 1
    assert tasks["new"].label_names == ["neg", "pos", "sport", "news"]
    assert tasks["old"].preprocessing["tokenizer"] == str(tmp_path / "tok")


def test_a_gpt2_whose_pad_token_id_is_not_the_tokenizers_is_one_line(tmp_path):
    """GPT2ForSequenceClassification reads each text's last token that is not the config's
    pad_token_id; a config saying 0 (<eos>) while the tokenizer pads with 2 (<pad>) read the
    padding at the end of every text, silently. Refused in one line naming config.json and both
    ids (no pad_token_id: the line says which to set); with the ids alike the model is built and
    run.json's preprocessing says the id."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<eos>", "<unk>", "<pad>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                eos_token="<eos>", unk_token="<unk>")
    text_jsonl(tmp_path)
    for pad in (0, None, 2):
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=1, n_head=2,
                                      n_positions=32, num_labels=2, pad_token_id=pad,
                                      id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
        folder = tmp_path / f"gpt{pad}"
        transformers.GPT2ForSequenceClassification(cfg).save_pretrained(folder)
        fast.save_pretrained(folder)
        s = text_session(tmp_path, folder, ["data.args.max_length=12"])
        if pad == 0:
            with pytest.raises(UserError, match=r"gpt0/config.json: pad_token_id is 0 but the "
                               r"tokenizer .* pads the texts with id 2"):
                s.model()
        elif pad is None:  # GPT-2's own ValueError, once said as labels needing more outputs
            with pytest.raises(UserError, match=r"gptNone/config.json: no pad_token_id, .*set "
                               r"\"pad_token_id\": 2 \(the tokenizer's padding id\)") as e:
                s.model()
            assert "outputs" not in str(e.value)
        else:
            assert s.model().config.pad_token_id == 2
            assert s.tasks["old"].preprocessing["pad_token_id"] == 2


def test_texts_longer_than_the_models_positions_name_max_length(bert, tmp_path):
    """The default max_length 128 on a BERT of 32 positions failed inside the model, said as
    data not fitting with a hint that the labels need more outputs; it names
    data.args.max_length and the config's max_position_embeddings."""
    text_jsonl(tmp_path)
    s = text_session(tmp_path, bert, ["data.args.max_length=40"])
    with pytest.raises(UserError, match=r"r.yaml: data.args.max_length: the texts are 40 tokens "
                       r"but .*config.json max_position_embeddings is 32") as e:
        s.model()
    assert "outputs" not in str(e.value)


def test_what_a_measurement_rests_on_includes_the_transformers_config(tmp_path):
    """compare reused an arm's stored metrics after the base folder's config.json changed what
    the model computes (hidden_act gelu -> relu; same weights, data and recipe): measured_on
    hashed the model's name and args (its folder's path), not its config."""
    from goodfit_cli.trainer.measured import measured_on

    folder = bert_folder(tmp_path / "bert")
    text_jsonl(tmp_path)
    s = text_session(tmp_path, folder, ["data.args.max_length=12"])
    first = measured_on(s, s.model())
    assert measured_on(s, s.model()) == first  # built again: the same
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    assert measured_on(s, s.model()) != first


def test_the_exported_folder_holds_the_tokenizer_that_read_the_texts(bert, tmp_path):
    """data.args.tokenizer names another folder than the base (its vocabulary swaps good and
    bad): the arm's hf/ folder held the base's tokenizer files, so from_pretrained users fed
    the model ids it was not trained on. It holds the tokenizer that read the texts."""
    from goodfit_cli.models.hf import pretrained_folder
    tok = json.loads((bert / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(tok))
    (tmp_path / "tok" / "tokenizer_config.json").write_bytes(
        (bert / "tokenizer_config.json").read_bytes())
    text_jsonl(tmp_path)
    s = text_session(tmp_path, bert, ["data.args.max_length=12",
                                                     "data.args.tokenizer=tok"])
    pretrained_folder(s.model(), tmp_path / "out")
    assert (tmp_path / "out" / "hf" / "tokenizer.json").read_text() == json.dumps(tok)
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "out" / "hf")
    assert exported("good")["input_ids"] == [vocab["good"]]  # tok's id, not the base's


def test_a_tokenizer_without_a_padding_token_is_one_line(bert, tmp_path):
    """A GPT-2 style tokenizer saved without a pad token: texts cannot be padded to one length,
    said in one line naming the folder (it was transformers' ValueError, an internal error)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]"] + WORDS)},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.save_pretrained(tmp_path / "nopad")
    for f in ("config.json", "model.safetensors"):  # a model folder, as data.args.tokenizer is
        (tmp_path / "nopad" / f).write_bytes((bert / f).read_bytes())
    text_jsonl(tmp_path)
    with pytest.raises(UserError, match=r"tokenizer: .*nopad: its tokenizer has no padding token"):
        build_data("text", text_args(tmp_path, tokenizer=str(tmp_path / "nopad")), seed=0,
                   data_dir=str(tmp_path))
    fast.pad_token = "[UNK]"  # with one: read
    fast.save_pretrained(tmp_path / "nopad")
    tasks = build_data("text", text_args(tmp_path, tokenizer=str(tmp_path / "nopad"),
                                         max_length=12), seed=0, data_dir=str(tmp_path))
    assert tasks["old"].train.x["input_ids"].shape[1] == 12


def test_each_save_to_disk_folder_reads_its_own_classlabel_names(tmp_path):
    """An old task saved with ClassLabel(cat, dog) and a new one with ClassLabel(fox, owl): the
    new task's ids 0, 1 are fox and owl (classes 2, 3), never the old task's cat and dog; a
    ClassLabel id outside its names (-1, datasets' "no label") is one line naming the row."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, names, ys in (("old_train", ["cat", "dog"], [0, 1, 1]),
                            ("old_test", ["cat", "dog"], [1, 0, 1]),
                            ("new_train", ["fox", "owl"], [0, 1, 0]),
                            ("new_test", ["fox", "owl"], [1, 1, 0]),
                            ("unlabelled", ["fox", "owl"], [0, -1, 1])):
        feats = datasets.Features({"image": datasets.Image(),
                                   "label": datasets.ClassLabel(names=names)})
        imgs = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in ys]
        datasets.Dataset.from_dict({"image": imgs, "label": ys},
                                   features=feats).save_to_disk(tmp_path / name)
    args = {"old": {"train": "old_train", "test": "old_test"},
            "new": {"train": "new_train", "test": "new_test"}}
    tasks = build_data("hf_disk", args, seed=0, data_dir=str(tmp_path))
    assert tasks["old"].train.y.tolist() == [0, 1, 1] and tasks["old"].test.y.tolist() == [1, 0, 1]
    assert tasks["new"].train.y.tolist() == [2, 3, 2] and tasks["new"].test.y.tolist() == [3, 3, 2]
    assert tasks["new"].label_names == ["cat", "dog", "fox", "owl"]
    with pytest.raises(UserError, match=r"new.test: .*unlabelled: row 1, column 'label': class "
                                        r"id -1 is not one of its 2 ClassLabel names"):
        build_data("hf_disk", {**args, "new": {"train": "new_train", "test": "unlabelled"}},
                   seed=0, data_dir=str(tmp_path))


def test_a_classlabel_in_another_order_keeps_the_bases_ids(vit, tmp_path):
    """The ViT base's label2id is cat 0, dog 1, bird 2; the data's ClassLabel lists bird, cat,
    dog, fox, owl. A transformers --base sets labels_from, so cat stays 0 (its head row), bird
    2, and the new fox, owl follow (they were the ClassLabel's ids: bird 0, the base's cat row
    scored and relabelled as bird, silently)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(
        names=["bird", "cat", "dog", "fox", "owl"])})
    for name, cls in (("old_train", [0, 1, 2]), ("old_test", [2, 1, 0]), ("new_train", [3, 4]),
                      ("new_test", [4, 3])):
        imgs = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in cls]
        datasets.Dataset.from_dict({"image": imgs, "label": cls},
                                   features=feats).save_to_disk(tmp_path / name)
    recipe = parse_recipe(RECIPE.format(name="r", data="hf_disk", ext="x").replace(
        ".x", ""), str(tmp_path / "r.yaml"))
    adopt_base_inputs(recipe, vit)
    assert recipe.data.args["labels_from"] == str(vit.resolve())
    tasks = build_data("hf_disk", recipe.data.args, seed=0, data_dir=str(tmp_path))
    assert tasks["old"].train.y.tolist() == [2, 0, 1] and tasks["old"].test.y.tolist() == [1, 0, 2]
    assert tasks["new"].train.y.tolist() == [3, 4] and tasks["new"].test.y.tolist() == [4, 3]
    assert tasks["old"].label_names == ["cat", "dog", "bird", "fox", "owl"]


def image_folders(root: Path, classes: dict[str, list[str]]) -> None:
    """`root/<split>/<class>/<i>.png`: two random 8x8 images per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, names in classes.items():
        for c in names:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")


def test_image_folders_keep_the_ids_of_the_classes_the_base_names(vit, tmp_path):
    """The ViT base's label2id is cat 0, dog 1, bird 2; the folders bird, cat, dog were numbered
    in name order (bird 0: the base's cat row scored bird images, and the exported id2label said
    bird, silently). A --base naming its classes sets labels_from: cat stays 0, bird 2, the new
    fox, owl follow; folders bearing none of its names are refused (labels_from: null numbers
    them in order); a timm folder's label_names count as names too."""
    import timm

    image_folders(tmp_path, {"old_train": ["bird", "cat", "dog"], "old_test": ["bird", "cat",
                             "dog"], "new_train": ["fox", "owl"], "new_test": ["fox", "owl"]})
    recipe = parse_recipe(RECIPE.format(name="r", data="imagefolder", ext="x").replace(
        ".x", ""), str(tmp_path / "r.yaml"))
    adopt_base_inputs(recipe, vit)
    assert recipe.data.args["labels_from"] == str(vit.resolve())
    tasks = build_data("imagefolder", recipe.data.args, seed=0, data_dir=str(tmp_path))
    assert tasks["old"].label_names == ["cat", "dog", "bird", "fox", "owl"]
    assert tasks["old"].test.y.tolist() == [2, 2, 0, 0, 1, 1]  # bird, cat, dog folders
    assert tasks["new"].test.y.tolist() == [3, 3, 4, 4] and tasks["old"].classes == [2, 0, 1]
    plain = {**recipe.data.args, "old": {"train": "new_train", "test": "new_test"}}
    with pytest.raises(UserError, match=r"labels_from: .*no old class folder \(fox, owl\)"):
        build_data("imagefolder", plain, seed=0, data_dir=str(tmp_path))
    tasks = build_data("imagefolder", {**plain, "labels_from": None}, seed=0,
                       data_dir=str(tmp_path))
    assert tasks["old"].label_names[:2] == ["fox", "owl"]
    timm.models.save_for_hf(timm.create_model("test_resnet", num_classes=3), str(tmp_path / "t"),
                            model_config={"label_names": ["dog", "bird", "cat"]},
                            safe_serialization=True)
    recipe = parse_recipe(RECIPE.format(name="r", data="imagefolder", ext="x").replace(
        ".x", ""), str(tmp_path / "r.yaml"))
    adopt_base_inputs(recipe, tmp_path / "t")
    tasks = build_data("imagefolder", recipe.data.args, seed=0, data_dir=str(tmp_path))
    assert tasks["old"].label_names == ["dog", "bird", "cat", "fox", "owl"]


def test_integer_classes_of_image_folders_are_the_bases_label_ids(vit, tmp_path):
    """The ViT base's label2id is cat 0, dog 1, bird 2; folders bird, cat, dog. `classes: [0,
    1]` picked the folders at positions 0 and 1 (bird, cat) where a save_to_disk or text
    source with the same labels_from picks the label ids 0 and 1 (cat, dog). Now the folders
    the base calls 0 and 1; an id it does not name, or one whose name has no folder, is one
    line naming the recipe key; without labels_from an integer is still a folder's position."""
    image_folders(tmp_path, {"old_train": ["bird", "cat", "dog"], "old_test": ["bird", "cat",
                             "dog"], "new_train": ["cat", "fox"], "new_test": ["cat", "fox"]})
    args = {"old": {"train": "old_train", "test": "old_test", "classes": [0, 1]},
            "new": {"train": "new_train", "test": "new_test"}, "labels_from": str(vit.resolve())}
    old = build_data("imagefolder", args, seed=0, data_dir=str(tmp_path))["old"]
    assert [old.label_names[i] for i in old.classes] == ["cat", "dog"] and old.classes == [0, 1]
    for chosen, said in (([0, 3], r"new.classes\[1\]: 3 is not a label id of .*ids 0..2"),
                         ([2], r"new.classes\[0\]: label id 2 is 'bird' in .* no class folder")):
        spec = {"old": args["old"], "new": {**args["new"], "classes": chosen}}
        with pytest.raises(UserError, match=said):
            build_data("imagefolder", {**args, **spec}, seed=0, data_dir=str(tmp_path))
    old = build_data("imagefolder", {**args, "labels_from": None}, seed=0,
                     data_dir=str(tmp_path))["old"]
    assert [old.label_names[i] for i in old.classes] == ["bird", "cat"]


def test_image_folders_are_resized_and_cropped_as_the_bases_image_processor_does(vit, tmp_path):
    """A transformers image processor resizes to exactly (height, width), the aspect not kept,
    and DeiT's then centre-crops to crop_size; imagefolder resized the short side and cropped
    the centre (a 24x40 image lost its sides) and fed DeiT its 40x40 resize uncropped (refused
    as not fitting a 32x32 model). The adopted args now give the processor's own pixels (to
    one level: PIL and torch round apart)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("old_train", "old_test", "new_train", "new_test"):
        for c in (["bird", "cat", "dog"] if split.startswith("old") else ["fox"]):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(
                tmp_path / split / c / "0.png")
    deit = tmp_path / "deit"  # the ViT's files with DeiT's processor: only it is read here
    deit.mkdir()
    for name in ("config.json", "model.safetensors"):
        (deit / name).write_bytes((vit / name).read_bytes())
    transformers.DeiTImageProcessor(size={"height": 40, "width": 40}, resample=3,
                                    crop_size={"height": 32, "width": 32}).save_pretrained(deit)
    for base, proc in ((vit, transformers.ViTImageProcessor.from_pretrained(vit)),
                       (deit, transformers.DeiTImageProcessor.from_pretrained(deit))):
        recipe = parse_recipe(RECIPE.format(name="r", data="imagefolder", ext="x").replace(
            ".x", ""), str(tmp_path / "r.yaml"))
        adopt_base_inputs(recipe, base)
        test = build_data("imagefolder", recipe.data.args, seed=0,
                          data_dir=str(tmp_path))["old"].test.x
        theirs = proc([Image.open(tmp_path / "old_test" / c / "0.png") for c in
                       ("bird", "cat", "dog")], do_rescale=False, do_normalize=False,
                      return_tensors="pt")["pixel_values"]
        assert test.shape == (3, 32, 32, 3)
        assert (test.permute(0, 3, 1, 2).float() - theirs).abs().max() <= 1, base  # rounding
    assert geometry({"pretrained_cfg": {"crop_mode": "squash"}}, None) == {"crop_mode": "squash"}
    assert geometry({"pretrained_cfg": {"crop_mode": "center"}}, None) == {}  # timm's default


def test_save_to_disk_images_get_the_timm_bases_crop_as_image_folders_do(tmp_path):
    """A timm folder whose pretrained_cfg says 16x16, bicubic, crop_pct 0.875 (timm's eval
    transform: the short side to 18, the centre 16x16 cut): hf_disk took only its size and
    squashed each 20x24 image to 16x16, the aspect lost and nothing cropped, so the model saw
    other pixels than it was trained on. Now its images are the image folder's, pixel for
    pixel, and run.json and recipe.yaml say crop_pct and crop_mode."""
    from PIL import Image
    from runs import timm_hub

    from goodfit_cli.recipe import load_recipe

    rng = np.random.default_rng(0)
    feats = datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=["a", "b", "c"])})
    for name, cls in (("old_train", ["a", "b"]), ("old_test", ["a", "b"]), ("new_train", ["c"]),
                      ("new_test", ["c"])):
        cls = [c for c in cls for _ in range(5)]
        imgs = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in cls]
        datasets.Dataset.from_dict({"image": imgs, "label": [ord(c) - 97 for c in cls]},
                                   features=feats).save_to_disk(tmp_path / name)
        for i, (c, img) in enumerate(zip(cls, imgs)):  # the same images as image folders
            (tmp_path / "folders" / name / c).mkdir(parents=True, exist_ok=True)
            img.save(tmp_path / "folders" / name / c / f"{i}.png")
    timm_hub(tmp_path / "hub", input_size=[3, 16, 16], interpolation="bicubic", crop_pct=0.875)
    (tmp_path / "r.yaml").write_text(RECIPE.format(name="r", data="hf_disk", ext="x").replace(
        ".x", "").replace("adamw", "sgd").replace("seed: 0\n", "seed: 0\ndata_dir: .\n"))
    res = CliRunner().invoke(app, ["finetune", "--base", str(tmp_path / "hub"), "--recipe",
                                   str(tmp_path / "r.yaml"), "--out", str(tmp_path / "ft"),
                                   "--no-wise"])
    assert res.exit_code == 0, res.output
    geometry = {"size": [16, 16], "interpolation": "bicubic", "crop_pct": 0.875,
                "crop_mode": "center"}
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["input"]["from_config"] == geometry
    assert run["preprocessing"] == {"image": "image", **geometry}
    args = load_recipe(tmp_path / "ft" / "recipe.yaml").data.args
    disk = build_data("hf_disk", args, seed=0, data_dir=str(tmp_path))
    folder = build_data("imagefolder", {**args, "old": {"train": "folders/old_train",
                                                        "test": "folders/old_test"},
                                        "new": {"train": "folders/new_train",
                                                "test": "folders/new_test"}},
                        seed=0, data_dir=str(tmp_path))
    for t in ("old", "new"):
        assert disk[t].test.x.shape[1:] == (16, 16, 3)
        assert torch.equal(disk[t].test.x, folder[t].test.x)
        assert torch.equal(disk[t].train.x, folder[t].train.x)


def test_save_to_disk_images_are_cropped_as_the_bases_image_processor_does(vit, tmp_path):
    """DeiT's processor resizes to 40x40 and centre-crops 32x32: hf_disk took only the 40x40
    resize and fed the model uncropped images. Now its pixels are the processor's (to one
    level: PIL and torch round apart), as imagefolder's are."""
    from PIL import Image

    rng = np.random.default_rng(1)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(
        names=["cat", "dog", "bird", "fox"])})
    imgs = [Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)) for _ in range(3)]
    for name, cls in (("old_train", [0, 1, 2]), ("old_test", [0, 1, 2]), ("new_train", [3]),
                      ("new_test", [3])):
        datasets.Dataset.from_dict({"image": imgs[:len(cls)], "label": cls},
                                   features=feats).save_to_disk(tmp_path / name)
    deit = tmp_path / "deit"  # the ViT's files with DeiT's processor: only it is read here
    deit.mkdir()
    for name in ("config.json", "model.safetensors"):
        (deit / name).write_bytes((vit / name).read_bytes())
    proc = transformers.DeiTImageProcessor(size={"height": 40, "width": 40}, resample=3,
                                           crop_size={"height": 32, "width": 32})
    proc.save_pretrained(deit)
    recipe = parse_recipe(RECIPE.format(name="r", data="hf_disk", ext="x").replace(
        ".x", ""), str(tmp_path / "r.yaml"))
    assert adopt_base_inputs(recipe, deit)["crop_pct"] == pytest.approx(0.8)
    test = build_data("hf_disk", recipe.data.args, seed=0, data_dir=str(tmp_path))["old"].test.x
    theirs = proc(imgs, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"]
    assert test.shape == (3, 32, 32, 3)
    assert (test.permute(0, 3, 1, 2).float() - theirs).abs().max() <= 1


def test_save_to_disk_pixels_wider_than_8_bits_are_read_or_refused_never_wrapped(tmp_path):
    """An Array2D(uint16) image column (rows decoded as Python lists) and a numpy-formatted one
    are read by their top 8 bits (257 * v -> v), as a 16-bit image file is, never modulo 256
    (nor a traceback); int64 pixels within 0..255 are kept; float pixels in 0..1 and a 32-bit
    PIL image (mode I) over 255 are one line naming the row, never truncated or clipped."""
    from PIL import Image

    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, (4, 6, 6)).astype(np.uint16)
    folders = {"u16": (datasets.Array2D((6, 6), "uint16"), list(v * 257)),
               "i64": (datasets.Array2D((6, 6), "int64"), list(v.astype(np.int64))),
               "unit": (datasets.Array2D((6, 6), "float32"), list(v / 255.0)),
               "mode_i": (datasets.Image(), [Image.fromarray((a * 257).astype(np.int32))
                                             for a in v])}
    for name, (feature, rows) in folders.items():
        feats = datasets.Features({"image": feature, "label": datasets.Value("int64")})
        datasets.Dataset.from_dict({"image": rows, "label": [0, 1, 0, 1]},
                                   features=feats).save_to_disk(tmp_path / name)
    datasets.load_from_disk(str(tmp_path / "u16")).with_format("numpy").save_to_disk(
        tmp_path / "u16np")
    want = torch.from_numpy(np.repeat(v.astype(np.uint8)[..., None], 3, axis=3))
    for name in ("u16", "u16np", "i64"):
        split = {"train": name, "test": name}
        tasks = build_data("hf_disk", {"old": split, "new": split}, seed=0,
                           data_dir=str(tmp_path))
        assert torch.equal(tasks["old"].train.x, want), name
    for name, what in (("unit", r"float64 values 0\.0\.\.0\.9"), ("mode_i", r"int32 values")):
        split = {"train": name, "test": name}
        with pytest.raises(UserError, match=rf"{name}: image 0 holds {what}.*; images are read "
                                            r"as 8-bit: save uint8 \(0..255\) or 16-bit"):
            build_data("hf_disk", {"old": split, "new": split}, seed=0, data_dir=str(tmp_path))


def test_save_to_disk_arrays_of_one_channel_are_read_and_channels_first_refused(tmp_path):
    """Array3D (H, W, 1) greyscale rows become RGB (each channel the grey value); (3, H, W)
    channels-first rows are one line naming the shape. Both were PIL's TypeError ("Cannot
    handle this data type"), an internal error."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (4, 6, 6, 1)).astype(np.uint8)
    for name, shape, rows in (("grey", (6, 6, 1), list(grey)),
                              ("chw", (3, 6, 6), list(np.moveaxis(np.repeat(grey, 3, 3), 3, 1)))):
        feats = datasets.Features({"image": datasets.Array3D(shape, "uint8"),
                                   "label": datasets.Value("int64")})
        datasets.Dataset.from_dict({"image": rows, "label": [0, 1, 0, 1]},
                                   features=feats).save_to_disk(tmp_path / name)
    split = {"train": "grey", "test": "grey"}
    tasks = build_data("hf_disk", {"old": split, "new": split}, seed=0, data_dir=str(tmp_path))
    assert torch.equal(tasks["old"].train.x, torch.from_numpy(np.repeat(grey, 3, axis=3)))
    split = {"train": "chw", "test": "chw"}
    with pytest.raises(UserError, match=r"chw: image 0 is an array of shape \(3, 6, 6\); an "
                                        r"image is \(H, W\), \(H, W, 1\)"):
        build_data("hf_disk", {"old": split, "new": split}, seed=0, data_dir=str(tmp_path))


def test_a_damaged_save_to_disk_folder_is_one_line(tmp_path):
    """A folder whose state.json lacks its keys, or whose dataset_info.json is not an object:
    one line naming the split and the folder (datasets raised KeyError / AttributeError, which
    reached the CLI as an internal error)."""
    import shutil

    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]},
                               features=feats).save_to_disk(tmp_path / "good")
    for name, damage in (("nokeys", ("state.json", "{}")), ("info", ("dataset_info.json", "[1]"))):
        shutil.copytree(tmp_path / "good", tmp_path / name)
        (tmp_path / name / damage[0]).write_text(damage[1])
        split = {"train": name, "test": "good"}
        with pytest.raises(UserError, match=rf"old.train: cannot read .*{name} with datasets."
                                            r"load_from_disk \((KeyError|AttributeError) "):
            build_data("hf_disk", {"old": split, "new": {"train": "good", "test": "good"}},
                       seed=0, data_dir=str(tmp_path))


def test_a_save_to_disk_folders_image_reading_reports_progress(tmp_path):
    """20 images decoded row by row into one array (each row at its place), the progress heard
    every 16 rows and at the end; an image of another size is named by its row."""
    from PIL import Image

    from goodfit_cli.core.progress import listening

    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (8, 10, 3), dtype=np.uint8) for _ in range(20)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    labels = [i % 2 for i in range(19)] + [2]
    for name in ("old_train", "old_test", "new_train", "new_test"):
        datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in imgs],
                                    "label": labels}, features=feats).save_to_disk(tmp_path / name)
    args = {"old": {"train": "old_train", "test": "old_test"},
            "new": {"train": "new_train", "test": "new_test"}}
    heard = []

    class Heard:
        def start(self, what, total):
            heard.append((what, total))

        def advance(self, done):
            heard.append(done)

        def end(self, done):
            heard.append(("end", done))

    with listening(Heard()):
        tasks = build_data("hf_disk", args, seed=0, data_dir=str(tmp_path))
    assert torch.equal(tasks["old"].train.x, torch.from_numpy(np.stack(imgs)))
    assert heard[:4] == [("reading old.train images", 20), 16, 20, ("end", 20)]
    imgs[17] = rng.integers(0, 255, (9, 10, 3), dtype=np.uint8)
    datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in imgs], "label": labels},
                               features=feats).save_to_disk(tmp_path / "odd")
    with pytest.raises(UserError, match=r"odd: image 17 is 10x9, image 0 10x8; set data.args"):
        build_data("hf_disk", {**args, "old": {"train": "odd", "test": "old_test"}}, seed=0,
                   data_dir=str(tmp_path))


# ------------------------------------------------------------------ through the CLI


def goodfit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "goodfit_cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


RECIPE = """name: {name}
seed: 0
device: cpu
data:
  name: {data}
  args:
    old: {{train: old_train.{ext}, test: old_test.{ext}}}
    new: {{train: new_train.{ext}, test: new_test.{ext}}}
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
finetune:
  optimizer: {{name: adamw, lr: 1.0e-3}}
  steps: 2
  batch_size: 8
  arms: [adamw]
eval: {{every: 2, batch_size: 64}}
"""


def same_logits(run_arm: Path, base: Path, auto, batch: dict) -> None:
    """The arm's hf/ folder (from_pretrained) computes what its goodfit checkpoint computes."""
    exported = auto.from_pretrained(run_arm / "hf").eval()
    model = build_model("transformers", {"path": str(base), "num_classes":
                                         exported.config.num_labels})
    model.load_state_dict(ckpt.load_model(run_arm / "model.safetensors")[0])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch), exported(**batch).logits, atol=1e-5)


def test_cli_finetunes_a_vit_folder_with_a_grown_head_and_a_gate(vit, tmp_path, monkeypatch):
    """No model section: the ViT comes from the folder, grows 3 -> 5 classes, is measured with
    its own rows (the old accuracy by hand, fed with the processor's mean/std), the gate is
    applied (an impossible new-task floor: exit 3, files written), and adamw/hf loads with
    from_pretrained, id2label true, the processor's statistics beside it."""
    image_npz(tmp_path)
    (tmp_path / "vit.yaml").write_text(RECIPE.format(name="vit", data="npz", ext="npz"))
    monkeypatch.chdir(tmp_path)  # in this process: the CLI as a user types it, without a start-up
    res = CliRunner().invoke(app, ["finetune", "--base", str(vit), "--recipe", "vit.yaml", "--out",
                                   "run", "--no-wise", "--max-old-drop", "1.0", "--min-old",
                                   "accuracy=1.0"], catch_exceptions=False)  # fails: a random ViT
    assert res.exit_code == 3, res.output
    assert "model: transformers ViTForImageClassification from" in res.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["input"]["source"] == "preprocessor_config.json" and run["input"]["mean"] == MEAN
    assert run["base_head"]["measured"] == "exact"
    ref = transformers.AutoModelForImageClassification.from_pretrained(vit).eval()
    f = np.load(tmp_path / "old_test.npz")
    x = (torch.from_numpy(f["x"]).permute(0, 3, 1, 2).float() / 255
         - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        by_hand = (ref(pixel_values=x).logits.argmax(1).numpy() == f["y"]).mean()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["base_metrics"]["old"]["accuracy"] == pytest.approx(by_hand, abs=1e-9)
    assert report["arms"][0]["gate"]["passed"] is False
    hf_dir = tmp_path / "run" / "adamw" / "hf"
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "bird", "3": "LABEL_3", "4": "LABEL_4"}
    assert json.loads((hf_dir / "preprocessor_config.json").read_text())["image_std"] == STD
    same_logits(tmp_path / "run" / "adamw", vit, transformers.AutoModelForImageClassification,
                {"pixel_values": x[:4]})


def test_cli_finetunes_a_bert_folder_on_text_with_replay_streaming_on_two_processes(bert, tmp_path):
    """Text through the CLI on 2 processes, the batches streamed and old samples replayed: the
    tokenizer comes from --base, run.json records the tokenisation, and adamw/hf (model and
    tokenizer) loads with from_pretrained with id2label neg, pos, sport, news."""
    text_jsonl(tmp_path)
    (tmp_path / "text.yaml").write_text(RECIPE.format(name="text", data="text", ext="jsonl"))
    res = goodfit("finetune", "--base", str(bert), "--recipe", "text.yaml", "--out", "run",
                  "--no-wise", "--nproc", "2", "--max-old-drop", "1.0", "data.args.max_length=12",
                  "data.loader.mode=stream", "finetune.replay.fraction=0.25", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["preprocessing"] == {"tokenizer": str(bert.resolve()), "max_length": 12,
                                    "padding": "max_length", "truncation": True, "length": 12,
                                    "truncated": 0, "pad_token_id": 0, "text": "text"}
    summary = json.loads((tmp_path / "run" / "adamw" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replay"]["old_per_batch"] == 2
    hf_dir = tmp_path / "run" / "adamw" / "hf"
    assert json.loads((hf_dir / "config.json").read_text())["id2label"] == {
        "0": "neg", "1": "pos", "2": "sport", "3": "news"}
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    batch = dict(tok(["the good game", "awful news report"], return_tensors="pt"))
    same_logits(tmp_path / "run" / "adamw", bert, transformers.AutoModelForSequenceClassification,
                batch)


def test_resume_with_the_recipe_accepts_the_args_taken_from_the_base(tmp_path):
    """`finetune --recipe R --resume RUN`: data args the run took from the base folder (the
    tokenizer, an image size; run.json input.from_config) do not make R another recipe; any
    other difference still does."""
    from goodfit_cli.workflows.resume import check_resume_args

    text = RECIPE.format(name="text", data="text", ext="jsonl")
    (tmp_path / "text.yaml").write_text(text)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"input": {"source": "as stored",
                                                        "from_config": {"tokenizer": "/b"}}}))
    saved = parse_recipe(text, str(run / "recipe.yaml"), ["data.args.tokenizer=/b"])
    check_resume_args(run, saved, str(tmp_path / "text.yaml"), None, False, [])
    other = parse_recipe(text, str(run / "recipe.yaml"), ["data.args.tokenizer=/b",
                                                          "data.args.max_length=9"])
    with pytest.raises(UserError, match=r"data.args.max_length"):
        check_resume_args(run, other, str(tmp_path / "text.yaml"), None, False, [])


def test_an_interrupted_arm_is_not_resumed_under_a_changed_transformers_config(tmp_path):
    """`finetune --resume` continued an interrupted arm after the base folder's config.json
    changed what the model computes (hidden_act gelu -> relu, same weights): the state's and
    the arm's identity did not cover the config. Refused in one line; unchanged, it resumes."""
    import runs as runner

    folder = bert_folder(tmp_path / "bert")
    text_jsonl(tmp_path)
    recipe = parse_recipe(RECIPE.format(name="r", data="text", ext="jsonl"),
                          str(tmp_path / "r.yaml"),
                          ["data.args.max_length=12", "finetune.steps=6", "checkpoint.every=2"])
    run = tmp_path / "run"
    with pytest.raises(Exception) as e:
        runner.finetune(recipe, folder, run, device="cpu", data_dir=str(tmp_path), stop_after=3,
                        wise=False)
    assert type(e.value).__name__ == "Interrupted"
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(json.dumps({**json.loads(config), "hidden_act": "relu"}))
    with pytest.raises(UserError, match="config.json hashes to"):
        runner.finetune(recipe, folder, run, device="cpu", data_dir=str(tmp_path), resume=True,
                        wise=False)
    (folder / "config.json").write_text(config)
    said: list[str] = []
    runner.finetune(recipe, folder, run, device="cpu", data_dir=str(tmp_path), resume=True,
                    wise=False, log=said.append)
    assert "adamw: resuming at batch 3/6" in said
