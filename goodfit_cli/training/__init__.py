"""What trains and how: arms (which parameters, which optimizer), optimizers and schedulers."""

from goodfit_cli.training.arms import (
    OPTIMIZER_CLASSES,
    PENALTY_KINDS,
    Arm,
    arm_dirname,
    arm_names,
    build_optimizer,
    build_scheduler,
    describe_optimizer,
    parse_arm,
    stage_for_arm,
    train_mode,
)
from goodfit_cli.training.cycles import at_anchor, cycle_length, finish_cycle, whole_cycles

__all__ = ["OPTIMIZER_CLASSES", "PENALTY_KINDS", "Arm", "arm_dirname", "arm_names", "build_optimizer", "build_scheduler",
           "describe_optimizer", "parse_arm", "stage_for_arm", "train_mode", "at_anchor",
           "cycle_length", "finish_cycle", "whole_cycles"]
