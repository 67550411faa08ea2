"""Do the recipe's data and model fit together? Checked once per built model, before training.

Each task's train and test splits must be non-empty, and the model must take their inputs and
its loss their targets: one training loss is computed (no gradient, eval mode) on the first
sample and on the sample with the largest target of each split, so a label at or above the
model's outputs, a feature width the model does not take, or uint8 images fed to an MLP is one
UserError naming the recipe's data and model, instead of an internal error or a "diverged" run.
A transformers model must take the tokenizer's padding id as its own (config.json
`pad_token_id`): a GPT-2-style classifier reads each text's last token that is not it; one that
fails on texts longer than its `max_position_embeddings`, or without a pad_token_id, is told so.
"""

from __future__ import annotations

import torch
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.data import batch as B
from goodfit_cli.data.base import Split
from goodfit_cli.models.hf import SOURCE, is_transformers


def _probe(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """The first sample and the one with the largest target (labels: the highest class id)."""
    y = split.y
    flat = y.reshape(len(y), -1)
    top = int(flat.float().amax(dim=1).argmax()) if flat.numel() else 0
    idx = torch.tensor([0, top], device=y.device)
    return B.rows(split.x, idx), y[idx]


def check_fits(model: nn.Module, session) -> None:
    """Raise one UserError line when the session's data and `model` do not fit."""
    recipe = session.recipe
    where = f"{recipe.at('data')} and {recipe.at('model')}"
    _check_text(model, session)
    was_training = model.training
    model.train(False)
    try:
        for name, task in session.tasks.items():
            for split_name in ("train", "test"):
                split = getattr(task, split_name)
                if len(split) == 0:
                    raise UserError(f"{recipe.at('data')}: the {name} task's {split_name} split "
                                    "is empty")
                x, y = _probe(split)
                try:
                    with torch.no_grad():
                        loss = session.runners[name].loss(model, x, y)
                except UserError as e:  # the model's own words (motion: the sizes differ)
                    raise UserError(f"{where}: the {name} task's {split_name} data does not "
                                    f"fit the model {recipe.model.name!r}: {e}") from None
                except (RuntimeError, IndexError, ValueError, TypeError) as e:
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                    if (cause := _text_cause(model, session, name)) is not None:
                        raise UserError(f"{cause} ({type(e).__name__}: {first})") from None
                    raise UserError(
                        f"{where}: the {name} task's {split_name} data (inputs "
                        f"{B.describe(split.x)}, "
                        f"targets up to {y.max().item()}) does not fit the model "
                        f"{recipe.model.name!r} ({type(e).__name__}: {first})"
                        + _outputs_hint(session, name, int(y.max().item()),
                                        _outputs(model, x))) from None
                if loss.dim() != 0:
                    raise UserError(f"{where}: the {name} task's loss is not a scalar")
    finally:
        model.train(was_training)


def _check_text(model: nn.Module, session) -> None:
    """The texts are no longer than the transformers model's positions and padded with the id
    it takes for padding."""
    if not is_transformers(model):
        return
    pad = getattr(model.config, "pad_token_id", None)
    for task in session.tasks.values():
        fed = (task.preprocessing or {}).get("pad_token_id")
        if isinstance(fed, int) and pad is not None and fed != pad:
            arch = type(model).__name__
            raise UserError(f"{getattr(model, SOURCE)}/config.json: pad_token_id is {pad} but "
                            f"the tokenizer {task.preprocessing.get('tokenizer')} pads the "
                            f"texts with id {fed}: {arch} takes id {pad} for padding (a "
                            "GPT-2-style classifier reads each text's last token that is not "
                            f"it), so it would read padding as text; set \"pad_token_id\": "
                            f"{fed} in config.json, or give the tokenizer that padding token")


def _text_cause(model: nn.Module, session, task: str) -> str | None:
    """Why a transformers model failed on a task's texts, when the folder's config.json says:
    texts longer than its `max_position_embeddings` (relative positions may read longer: only
    then), or no `pad_token_id` (a GPT-2-style classifier needs it to find each text's end)."""
    if not is_transformers(model):
        return None
    most, pad = (getattr(model.config, k, None) for k in ("max_position_embeddings",
                                                           "pad_token_id"))
    done = session.tasks[task].preprocessing or {}
    length, fed = done.get("length"), done.get("pad_token_id")
    if isinstance(most, int) and isinstance(length, int) and length > most:
        return (f"{session.recipe.at('data.args.max_length')}: the texts are {length} tokens "
                f"but {getattr(model, SOURCE)}/config.json max_position_embeddings is {most}, "
                f"and the model fails on them; set data.args.max_length to {most} or less")
    if pad is None and isinstance(fed, int):
        return (f"{getattr(model, SOURCE)}/config.json: no pad_token_id, and "
                f"{type(model).__name__} fails on padded texts without it; set \"pad_token_id\": "
                f"{fed} (the tokenizer's padding id) in config.json")
    return None


def _outputs(model: nn.Module, x) -> int | None:
    """The number of outputs per sample the model gives for `x`; None when it cannot take `x`
    (then the inputs are what does not fit, not the labels)."""
    try:
        with torch.no_grad():
            out = B.forward(model, x)
    except (RuntimeError, IndexError, ValueError, TypeError):
        return None
    return out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() >= 1 else None


def _outputs_hint(session, task: str, top: int, outputs: int | None) -> str:
    """For a classification task whose labels the model's outputs (`outputs` per sample) do
    not reach: how many it needs, and how a base for an update that adds classes is pretrained.
    Nothing when the model cannot take the inputs or its outputs reach every label."""
    if session.kinds.get(task) != "classification" or outputs is None or outputs > top:
        return ""
    hint = (f"; its labels need at least {top + 1} outputs (the model's num_classes or "
            "out_features)")
    if task == "new":
        hint += (": a base for the old classes alone is pretrained with a recipe whose new task "
                 "reads the old task's data, or with the new classes' outputs already in it")
    return hint
