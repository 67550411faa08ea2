"""Hugging Face transformers classifiers built from a model folder (`save_pretrained`'s layout).

`transformers_model(path, num_classes)` reads the folder's config.json with transformers'
AutoConfig (local files only, no remote code), sets the class count and the label names, and
builds the architecture it names with AutoModelForImageClassification or
AutoModelForSequenceClassification `.from_config`: random weights, which the checkpoint loader
then fills from the folder's model.safetensors (goodfit's own safetensors reader: the head
grows for new classes keeping the base's rows, as for every model). A forward hook makes the
model return its logits tensor, which is what the objectives take; images arrive as
`pixel_values`, a dict batch (input_ids, attention_mask) as keywords.

Label names stay true: class i keeps the base's id2label name for the rows the base had, takes
the data's name (`labels`) where it gives one, else "LABEL_i"; label2id is its inverse.
`save_folder` writes a trained model back as a folder `from_pretrained` loads (config.json +
model.safetensors), with the tokenizer files of the folder that read its texts (else the base
folder's) and the base folder's image processor files beside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from goodfit_cli.core.args import ArgError, check_int
from goodfit_cli.core.errors import UserError
from goodfit_cli.data.inputs import IMAGE, spec_of
from goodfit_cli.io.atomic import write_json
from goodfit_cli.io.hf import PRETRAINED_DIR, auto_config, library
from goodfit_cli.io.hubdir import PROCESSOR, resolve_base
from goodfit_cli.io.staging import staged

SOURCE = "goodfit_hf_folder"  # the model attribute that names the folder it was built from
TOKENIZER = "goodfit_tokenizer_folder"  # ... and the tokenizer folder its texts were read by
HEADS = {"ForImageClassification": "AutoModelForImageClassification",
         "ForSequenceClassification": "AutoModelForSequenceClassification"}
# what a folder carries besides its weights and config: the tokenizer and the processors
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
              "vocab.json", "merges.txt", "added_tokens.json", "spiece.model", "tokenizer.model",
              "sentencepiece.bpe.model", "chat_template.jinja", PROCESSOR, "processor_config.json")
PROCESSORS = (PROCESSOR, "processor_config.json")  # the rest: the tokenizer's


def _logits(_module: nn.Module, _args: Any, output: Any) -> Any:
    """Forward hook: a transformers ModelOutput becomes its logits tensor."""
    return getattr(output, "logits", output)


def label_names(config: Any, num_classes: int, labels: Sequence[str] | None) -> list[str]:
    """A name per class: the data's, else the base's id2label for its own rows, else LABEL_i."""
    base = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    given = list(labels or [])
    return [given[i] if i < len(given) else base.get(i, f"LABEL_{i}") for i in range(num_classes)]


def _auto_class(folder: Path, config: Any) -> Any:
    """AutoModelForImageClassification or ...ForSequenceClassification, by the architecture."""
    arch = (getattr(config, "architectures", None) or [""])[0]
    auto = next((cls for suffix, cls in HEADS.items() if arch.endswith(suffix)), None)
    if auto is None:
        raise UserError(f"{folder / 'config.json'}: architecture {arch or '(none)'!r} is not a "
                        "classifier goodfit fine-tunes; it takes *ForImageClassification and "
                        "*ForSequenceClassification folders")
    return getattr(library("transformers", f"{folder}: a transformers model"), auto)


def folder_state(folder: Path) -> dict[str, Any]:
    """The weights of a save_pretrained folder, named as the built model names them.

    transformers renames some weights between a folder and the model in memory (ViT's
    `encoder.layer.0.attention.attention.query` is `layers.0.attention.q_proj` in version 5), so
    the folder is read by transformers itself: from_pretrained, local files only, safetensors
    only, no remote code; its state dict is what the checkpoint loader then fits into the model
    (the head grown for new classes)."""
    config = auto_config(folder, f"{folder}: a transformers model")
    try:
        model = _auto_class(folder, config).from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{folder}: transformers cannot load it "
                        f"({(str(e).strip().splitlines() or [type(e).__name__])[0][:200]})") from None
    return {k: v.detach() for k, v in model.state_dict().items()}


def transformers_model(path: str, num_classes: int, labels: Sequence[str] | None = None) -> nn.Module:
    """The classifier a transformers folder's config.json names, with `num_classes` outputs."""
    check_int("num_classes", num_classes, 1)
    if labels is not None and (isinstance(labels, str) or not all(isinstance(v, str) for v in labels)):
        raise ArgError("labels", f"expected a list of class names, got {labels!r}")
    folder = resolve_base(Path(path)).folder if Path(path).is_dir() else None
    if folder is None:
        raise ArgError("path", f"{path} is not a model folder (config.json + model.safetensors)")
    config = auto_config(folder, f"{folder}: a transformers model")
    auto = _auto_class(folder, config)
    names = label_names(config, num_classes, labels)
    config.num_labels = num_classes
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    model = auto.from_config(config, trust_remote_code=False)
    model.register_forward_hook(_logits)
    heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise UserError(f"{folder}: {config.architectures[0]} has no linear layer with {num_classes} outputs to "
                        "use as its head")
    model.goodfit_head_prefixes = [heads[-1] + "."]  # the last one: the classifier's output
    setattr(model, SOURCE, str(folder))
    return model


def is_transformers(model: nn.Module) -> bool:
    """Whether `model` was built by `transformers_model` (its arms also write a folder)."""
    return getattr(model, SOURCE, None) is not None


def pretrained_folder(model: nn.Module, out: Path) -> dict[str, str]:
    """Beside the checkpoint written to `out`: `out/hf`, the folder from_pretrained loads, when
    `model` (unwrapped) was built from a transformers folder; the summary's entry naming it
    ({} for any other model, which gets none)."""
    if not is_transformers(model):
        return {}
    save_folder(model, out / PRETRAINED_DIR)
    return {"pretrained_folder": str((out / PRETRAINED_DIR).resolve())}  # never cwd-relative


def save_folder(model: nn.Module, out: Path) -> None:
    """Write `model` (unwrapped) as a folder from_pretrained loads: config.json (with its
    id2label), model.safetensors, and the base folder's processor files and the tokenizer files
    of the folder its texts were tokenised by (TOKENIZER, else the base's); an image
    processor's mean/std become the ones the model was trained with. The new set replaces
    any previous one only once it is complete (io.staging)."""
    source = Path(getattr(model, SOURCE))
    tokenizer = Path(getattr(model, TOKENIZER, None) or source)
    spec = spec_of(model)

    def previous() -> list[Path]:
        return sorted(p for p in out.iterdir() if p.is_file()) if out.is_dir() else []

    processor = resolve_base(source).processor
    fed = processor is not None and spec is not None and spec.kind == IMAGE
    with staged(out, previous) as stage:
        model.save_pretrained(str(stage))
        for name in SIDE_FILES:
            folder = source if name in PROCESSORS else tokenizer
            if (folder / name).is_file() and not (stage / name).exists() and not (
                    fed and name == PROCESSOR):
                shutil.copyfile(folder / name, stage / name)
        if fed:
            write_json(stage / PROCESSOR, {**processor, "image_mean": list(spec.mean),
                                           "image_std": list(spec.std)})
