"""Workflows: what each command does, from a validated recipe to the files it writes.

Each module owns one command's run folder and report: pretrain, finetune, evaluate, compare,
validate, datasets, demo. `session` sets up data, model and objectives; `stage` runs one
training run (an arm); `reporting` turns results into reports and gates. The CLI calls one
workflow per command and draws what it returns.
"""
