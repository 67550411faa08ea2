"""How the command line answers before a command runs: usage errors and help.

A usage error (an unknown option, a missing one, a bad value) is one line on stderr,
`error: ... (see 'goodfit finetune --help')`, exit 2, instead of click's usage block and boxed
message. Flags (`--overwrite`, `--help`) show no `<bool>` type tag in the help.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.markup import escape
from typer.core import TyperGroup

from goodfit_cli.cli.console import err

# Typer >= 0.20 carries its own copy of click (typer._click), older ones use click itself: the
# parameter and error classes are recognised by what they are, not by which module holds them.


def _kinds(e: BaseException) -> set[str]:
    return {c.__name__ for c in type(e).__mro__}


def _quiet_flags(params: list[Any]) -> list[Any]:
    """Flags take no value: show no type tag for them in the help."""
    for p in params:
        if getattr(p, "param_type_name", "") == "option" and getattr(p, "is_flag", False) \
                and p.metavar is None:
            p.metavar = ""
    return params


class Group(TyperGroup):
    """The `goodfit` group (and its sub-groups): one-line usage errors, flags without tags."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _quiet_flags(super().get_params(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and not isinstance(cmd, Group):
            _quiet_flags(cmd.get_params(ctx))
        return cmd

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None and not isinstance(cmd, Group):
            given_twice(cmd, rest)
        return name, cmd, rest

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except Exception as e:
            kinds = _kinds(e)
            if "NoArgsIsHelpError" in kinds:  # `goodfit` or `goodfit data` alone: the help
                print(e.ctx.get_help())
                sys.exit(e.exit_code)
            if "ClickException" in kinds:
                where = getattr(getattr(e, "ctx", None), "command_path", None)
                see = f" (see '{where} --help')" if "UsageError" in kinds and where else ""
                err.print(f"[bold red]error:[/] {escape(e.format_message() + see)}",
                          highlight=False, soft_wrap=True)
                sys.exit(2 if "UsageError" in kinds else e.exit_code)
            if "Abort" in kinds:
                err.print("[yellow]aborted[/]", highlight=False)
                sys.exit(1)
            raise
        sys.exit(rv if isinstance(rv, int) else 0)


def given_twice(cmd: Any, args: list[str]) -> None:
    """An option that takes one value, given more than once (`--recipe a.yaml --recipe b.yaml`):
    a usage error naming both, not click's silent "the last one wins" (a job that ran another
    recipe than the user meant). Repeatable options and flags are left alone; so is what
    follows `--`."""
    import typer  # its click (its own copy from 0.20, else click): UsageError is a base of
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

    args = args[:args.index("--")] if "--" in args else args
    for p in cmd.params:
        if getattr(p, "param_type_name", "") != "option" or p.multiple or p.is_flag \
                or getattr(p, "count", False):
            continue
        names = set(p.opts) | set(p.secondary_opts)
        values = []
        for i, a in enumerate(args):
            if a in names:  # --recipe X, -r X
                values.append(args[i + 1] if i + 1 < len(args) else "")
            elif a.startswith("--") and a.partition("=")[0] in names:  # --recipe=X
                values.append(a.partition("=")[2])
            elif not a.startswith("--") and a[:2] in names:  # -rX
                values.append(a[2:])
        if len(values) > 1:
            raise usage_error(f"{max(p.opts, key=len)} given {len(values)} times "
                             f"({', '.join(values)}): it takes one value; give it once")


def _examples(*lines: str) -> str:
    """A command's epilog: 'Examples:' then one command per paragraph (help keeps them apart)."""
    return "\n\n".join(["Examples:", *lines])


RULES_HELP = ("new: the most new-task gain (the old task breaks ties); knee: the knee of the "
              "front (the point farthest beyond the line between its two ends towards the best "
              "of both, both tasks scaled to the front's range; none beyond it: the end with the "
              "most new-task gain); weight=W (0 <= W <= 1): the most W x new + (1 - W) x old, "
              "both scaled to the candidates' range (weight=1 is new, weight=0 the best old)")

SEARCH_HELP = (
    "Search arms and knobs for the best update the gate allows (Optuna, multi-objective).\n\n"
    "Space: the arm (plain, head_only, goodfit, lp_ft, l2sp, lwf, focal, ewc; also lora where "
    "PEFT is installed, the lora extra, and a plugin's arms; the trial's recipe.yaml names the "
    "arm it ran in finetune.arms), lr from lr/10 "
    "to 10 lr, each arm's knobs around the recipe's values, the replay fraction from 0 to 0.5 "
    "(--no-replay: none); for a cross_entropy new task, its class balance (new_task.args.balance) "
    "and batch sampling (finetune.sampling: uniform, balanced, sqrt). Each trial then evaluates "
    "its arm's WiSE-FT curve (alpha 0.1 to 1.0) "
    "on validation and keeps the best alpha the gate allows.\n\n"
    "Fisher-weighted point: each finished trial also tries base + alpha (arm - base) / (1 + "
    "beta F), F the base's diagonal Fisher on the old task (EWC's, over every weight: 16 "
    "old-task training batches, read, never trained on; scaled to mean 1) for beta 0.3, 1 and "
    "3, each beta's line walked from alpha 1 down the WiSE-FT grid to its first point that "
    "passes the gate on validation: a weight the old task leans on stays nearer the base. The "
    "best of those on the new task replaces the alpha chosen alone where it is better on "
    "validation (one validation pass per point walked, no training; none without old-task "
    "training data; --no-fisher: off, and off with --offset-with-alpha). The trial's knobs "
    "show beta as fisher_beta (0: the alpha chosen alone).\n\n"
    "New-class offset: when the new task trains classes the old one does not (a shared "
    "classification head), each trial's chosen point may add an offset tau (-3 to 3 in "
    "steps of 0.25) to those classes' logits, written into the head's bias: the tau with the "
    "best new-task metric on validation among those whose old-task metric there is no worse "
    "than at tau = 0 and that pass the gate (no training; --no-new-offset: off). With "
    "--offset-with-alpha, alpha and tau are chosen together: of every alpha of the curve and "
    "tau, the best new-task point on validation no worse on the old task than the alpha chosen "
    "alone and passing the gate (one validation pass per alpha). The trial's knobs show them as "
    "wise_alpha and new_offset.\n\n"
    "Pruning: at a rung (batch total/9 and total/3 with --rungs 2) a trial's WiSE-FT curve "
    "is measured on validation (alpha 1, 0.8, ... down to the first point within the gate, then "
    "its neighbour at +0.1) and the trial goes on only if its best point is among the best "
    "third of the trials that reached the rung (fewer gate violations first, then the "
    "new-task metric, then the new task's validation loss; the first trial is never pruned); "
    "a pruned trial counts toward --trials, the report shows its point at its last rung and "
    "the sampler learns from it (--rungs 0: no pruning). A trial that goes on keeps "
    "a copy of the weights of its best rung so far, and ends with them where their best point "
    "beats the best point of its end weights' curve, judged the same way (the batch chosen on "
    "validation like the alpha; the arm's report names the batch; --end-weights: always the "
    "end's).\n\n"
    "Default arms: with --defaults (the default) the recipe's arms (finetune.arms, at the "
    "recipe's lr and knobs, no replay, no class balance) are the study's first trials: they "
    "count toward --trials and the budget, the sampler learns from them, and they are the "
    "report's reference points (the first is never pruned; a later one may be, and is "
    "reported with its point at the rung). Where the search draws replay and the recipe "
    "replays nothing, the replay reference follows them: the first arm with replay 0.5, "
    "named '<arm>+replay', never pruned (--no-replay-reference: not run; where the search finds "
    "replay by itself it costs a fine-tune of the budget, docs/results.md).\n\n"
    "Budget: --budget N (default 10; 0 or none: unlimited) caps the study's training at N "
    "fine-tunes of the recipe's finetune.steps batches, counted from the batches each trial "
    "trains (evaluations and WiSE-FT points are not counted). A trial starts only if the "
    "budget left covers it whole; promoted past its first rung it claims the rest of itself, "
    "and is pruned there when the budget left cannot cover that. The study never trains more "
    "than N fine-tunes (also with workers sharing it: claims go through the study's storage); "
    "it stops short of --trials when the budget is spent, and the report states the budget and "
    "what was spent. With --reruns, the budget left after --trials (pruning makes most trials "
    "cheap) goes to re-running pruned trials whole, one whole fine-tune at a time, the latest "
    "rung reached and the best value there first (their knobs and the study's seed: the same "
    "training up to the rung, then on to the end); a re-run does not count toward --trials and "
    "is never pruned. Off by default: on 18 digits studies it changed no recommendation with "
    "replay and 3 without, for 0.8-1.4 more fine-tunes a study on average (docs/results.md).\n\n"
    "Margin: a choice on validation is optimistic, so the gate is judged there --val-margin "
    "standard errors inside each limit on an accuracy or flip rate (sqrt(p(1-p)/n) at the "
    "limit, n the validation samples; default 0.5; 0: exactly at the limit).\n\n"
    "Rule: every choice is made on the validation splits. The candidates are the finished "
    "trials that pass the gate on validation and gain on the new task over the base (no trial "
    "is recommended on the base's own point); --rule picks one: " + RULES_HELP + ". Test "
    "numbers are reported beside it, never used to choose. A re-run with another gate or rule "
    "re-judges every finished trial from the stored results. The report names the close calls: "
    "the other candidates within one standard error of the recommendation's new-task "
    "validation accuracy, which the validation split cannot rank against it.\n\n"
    "Names: a knob has one name everywhere (the trial log, the study, the report, the trial's "
    "recipe.yaml): its recipe key, e.g. finetune.penalty.ewc, finetune.optimizer.lr; the arm, "
    "arm (the study's) and finetune.arms (the recipe's). wise_alpha, fisher_beta and new_offset "
    "are chosen after the training, not recipe keys: the trial's wise/ folder holds that point "
    "(its summary.json: alpha, fisher, new_offset).")

EXAMPLES = {
    "goodfit": _examples("goodfit demo --quick", "goodfit finetune --help"),
    "pretrain": _examples(
        "goodfit pretrain --recipe toy --out runs/toy-base",
        "goodfit pretrain -r toy -o runs/toy-base pretrain.steps=2000 --log-format json"),
    "finetune": _examples(
        "goodfit finetune --base runs/toy-base/model.safetensors --recipe toy --out runs/toy-ft "
        "--optimizer rmsprop --optimizer goodfit",
        "goodfit finetune -b base.safetensors -r toy --max-old-drop 0.05 "
        "finetune.early_stop.patience=3",
        "goodfit finetune --resume runs/toy-ft"),
    "compare": _examples(
        "goodfit compare runs/toy-base/model.safetensors runs/toy-ft --recipe toy",
        "goodfit compare base.safetensors ft/goodfit/model.safetensors -r toy --gate gate.yaml "
        "--junit gate.xml"),
    "eval": _examples(
        "goodfit eval --checkpoint runs/toy-ft/goodfit/model.safetensors --recipe toy",
        "goodfit eval -c model.safetensors -r toy -o metrics.json eval.batch_size=256"),
    "validate": _examples(
        "goodfit validate recipes/*.yaml",
        "goodfit validate recipes/toy.yaml finetune.optimizer.name=adan finetune.accumulate=4",
        "goodfit validate my.yaml --data --data-dir /data   # also: does the data fit the model?",
        "goodfit validate text.yaml --data --base bert   # the model is the --base folder's"),
    "wise": _examples(
        "goodfit wise runs/toy-ft/goodfit --alpha 0.3 --out runs/toy-wise",
        "goodfit wise runs/toy-ft/rmsprop --alpha 0.5 --out runs/w --max-old-drop 0.05"),
    "search": _examples(
        "goodfit search --base runs/toy-base/model.safetensors --recipe toy --trials 24 "
        "--out runs/toy-search --max-old-drop 0.05",
        "goodfit search -b base.safetensors -r toy --trials 100 --out runs/s "
        "--storage postgresql://user@db/goodfit"),
    "list": _examples("goodfit list", "goodfit list optimizers"),
    "optimizers": _examples("goodfit optimizers"),
    "recipes": _examples("goodfit recipes"),
    "data": _examples("goodfit data summary --recipe toy",
                      "goodfit data motion-synth --out data/motion --scenes 200"),
    "data summary": _examples("goodfit data summary --recipe toy",
                              "goodfit data summary -r toy --json data.args.n_train=1000",
                              "goodfit data summary -r text.yaml --base bert   # its tokenizer"),
    "data motion-synth": _examples(
        "goodfit data motion-synth --out data/motion --scenes 200",
        "goodfit data motion-synth -o data/peds --agents pedestrian --scenes 1000 --seed 1"),
    "convert": _examples(
        "goodfit convert model.pth model.safetensors",
        "goodfit convert last.ckpt base.safetensors --key state_dict",
        "goodfit convert pytorch_model.bin bases/resnet18 --arch resnet18   # a folder for --base"),
    "demo": _examples("goodfit demo --quick", "goodfit demo --out runs/demo --device cpu"),
}
