"""Motion prediction data: the format (format.py), scene physics (scenes.py), the scenario
generator (synth.py) and the `motion` dataset builder (dataset.py). Imports run one way:
format <- scenes <- synth <- dataset."""
