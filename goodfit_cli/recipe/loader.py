"""The recipe's `data.loader` section: how training splits reach the training loop.

    data:
      name: imagefolder
      args: {...}
      loader: {mode: auto, workers: 2, pin_memory: true, persistent_workers: true,
               prefetch: 2, max_device_bytes: 2147483648}

mode: `device` loads every training split onto the device (the fast path); `stream` reads them
through torch's DataLoader with `workers` processes; `auto` (the default) streams a split larger
than `max_device_bytes` or one that augments, and loads the others. Both paths draw the same
batches (data/stream.py).
"""

from __future__ import annotations

from goodfit_cli.data.stream import MODES, LoaderSettings
from goodfit_cli.recipe.yamlcheck import boolean, integer, optional, section_for, string

# the defaults are LoaderSettings' own (data/stream.py)
LOADER = section_for(LoaderSettings, mode=string(MODES), workers=integer(0, 64),
                     pin_memory=optional(boolean), persistent_workers=boolean,
                     prefetch=integer(1), max_device_bytes=integer(0))
