"""The trainer a command drives: the session (a recipe's device, data, objectives and model),
the stage (one training run: an arm folder) with its callbacks' states, tracking, the run's
identity checks, and the pre-run check that the data fits the model. Below workflows/, above
the engine."""
