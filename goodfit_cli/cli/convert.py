"""`goodfit convert`: a torch pickle (.pt, .pth, .bin, Lightning .ckpt) to safetensors, once."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from goodfit_cli.cli.base import EXAMPLES, app, handled
from goodfit_cli.cli.console import out


@app.command(epilog=EXAMPLES["convert"])
@handled
def convert(
    source: Path = typer.Argument(..., help="A torch file: .pt, .pth, .bin or a Lightning .ckpt."),
    dest: Path = typer.Argument(..., help="The .safetensors file to write (with --arch: a new folder)."),
    key: Optional[str] = typer.Option(None, "--key", "-k", help="Where the weights are in a nested file, e.g. model, state_dict, a.b (default: the only dict of tensors in it)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="A timm architecture: write a model folder (model.safetensors + config.json) that --base reads, after checking every tensor against it."),
    strip: bool = typer.Option(True, "--strip-prefixes/--keep-prefixes", help="Strip module. / _orig_mod. / model. when every key has it."),
) -> None:
    """Read a torch pickle with torch's weights-only loader and write its tensors as safetensors."""
    from goodfit_cli.workflows.convert import ConvertJob
    from goodfit_cli.workflows.convert import convert as run_convert

    done = run_convert(ConvertJob(source, dest, key, strip, arch))
    where = f" from {done['key']!r}" if done["key"] else ""
    stripped = f", stripped {' '.join(done['stripped'])}" if done["stripped"] else ""
    out.print(escape(f"wrote {done['weights']}: {done['tensors']} tensors, "
                     f"{done['parameters']:,} values{where}{stripped}"), highlight=False, soft_wrap=True)
    if done["config"]:
        cfg = done["config"]
        out.print(escape(f"wrote {Path(done['dest']) / 'config.json'}: timm {cfg['architecture']}, "
                         f"{cfg['num_classes']} classes"), highlight=False, soft_wrap=True)
