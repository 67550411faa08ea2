"""What trains and how: arms (which parameters, which optimizer), optimizers and schedulers."""

from goodfit_cli.training.arms import (
    Arm,
    arm_dirname,
    arm_names,
    arm_training,
    build_optimizer,
    check_arms_on,
    describe_optimizer,
    finish_arm,
    parse_arm,
    stage_for_arm,
    train_mode,
)
from goodfit_cli.training.cycles import at_anchor, cycle_length, finish_cycle, whole_cycles
from goodfit_cli.training.schedules import Schedule, build_scheduler

__all__ = ["Schedule", "Arm", "arm_dirname", "arm_names", "arm_training", "build_optimizer",
           "check_arms_on", "build_scheduler", "describe_optimizer", "finish_arm", "parse_arm",
           "stage_for_arm",
           "train_mode", "at_anchor", "cycle_length", "finish_cycle", "whole_cycles"]
