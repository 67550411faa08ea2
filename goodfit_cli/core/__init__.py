"""The bottom layer: errors, registries, argument checking, metrics and process ranks.

Everything else may import from here; nothing here imports from the rest of goodfit_cli.
"""
