"""Replace a set of files in a folder by a complete new set, never leaving neither.

`staged(out)` yields a hidden folder beside the files (`OUT/.staging-<pid>-<space>-<random>`,
io/atomic.py `owner_tag`) for the new files; only once the caller's block has finished do they
replace the old ones: the old files are moved into the staging folder, the new ones moved into place, with SIGINT and SIGTERM held
back for those few renames, and the staging folder (now holding the old files) is removed. If
the block fails or is interrupted, the staging folder goes and the old files stay as they were;
if a rename fails halfway through the swap, the old files are moved back first. A process killed
(SIGKILL, power loss) during the swap leaves the staging folder with its `.old` folder: `settle`
(run when a command takes the folder again) then finishes the swap, since the new set in it
was complete before the first rename (before: the staging folder was deleted, old files and
the new ones not yet moved with it, so a report set could be left part old, part missing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.atomic import atomic_write, dead_leftovers, fsync_dir, owner_tag

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def staged(out: Path, old_files: Callable[[], list[Path]]) -> Iterator[Path]:
    """Yield a staging folder mirroring `out`; on success, every file under it replaces the file
    at the same place under `out`, and the files `old_files()` lists (under `out`) that the new
    set does not replace are removed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = out / f".staging-{owner_tag()}"
        stage.mkdir()
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror or e}") from None
    try:
        yield stage
        new = sorted(p for p in stage.rglob("*") if p.is_file())
        old = old_files()
        trash = stage / ".old"
        trash.mkdir()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        moved: list[tuple[Path, Path]] = []  # (an old file, where it waits in the trash)
        placed: list[Path] = []  # new files already in place
        try:  # only renames in here: nothing slow, nothing that can be half done
            for f in old:
                moved.append((f, trash / f"{len(moved)}"))
                os.replace(*moved[-1])
            for f in new:
                dest = out / f.relative_to(stage)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if os.path.lexists(dest):  # replaced: kept until the whole set is in place
                    moved.append((dest, trash / f"{len(moved)}"))
                    os.replace(*moved[-1])
                os.replace(f, dest)
                placed.append(dest)
            for d in {(out / f.relative_to(stage)).parent for f in new}:
                fsync_dir(d)
        except OSError as e:  # a rename refused halfway: every old file back where it was
            for dest in placed:
                with contextlib.suppress(OSError):
                    os.unlink(dest)
            for was, kept in reversed(moved):
                with contextlib.suppress(OSError):
                    os.replace(kept, was)
            raise UserError(f"cannot replace the files in {out}: {e.strerror or e} (the old "
                            "files were kept)") from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_together(out: Path, texts: dict[str, str]) -> None:
    """Files `out/NAME` replaced by `texts` ({NAME: text}) as one set (a report's json, md and
    html): all written in full first, so a failure or an interrupt while writing leaves every
    old one as it was, never a mix of new and old."""
    with staged(out, lambda: []) as stage:
        for name, text in texts.items():
            atomic_write(stage / name, text)


def settle(out: Path) -> None:
    """`out` without what a killed process left mid-write: its temp files and write probes are
    removed, a staging folder whose swap had begun (it holds `.old`) is swapped in to the end,
    any other (a set not yet complete) is removed."""
    for left in dead_leftovers(out):
        if not left.is_dir():
            left.unlink(missing_ok=True)
            continue
        if (left / ".old").is_dir():
            for f in sorted(p for p in left.rglob("*") if p.is_file()):
                rel = f.relative_to(left)
                if rel.parts[0] != ".old" and ".tmp-" not in f.name:
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    with contextlib.suppress(FileNotFoundError):  # another settled it first
                        os.replace(f, out / rel)
            fsync_dir(out)
        shutil.rmtree(left, ignore_errors=True)


def settle_tree(folder: Path) -> None:
    """`settle` for `folder` and every folder under it (links not followed): a run a killed
    process left and no command takes again (a search's dead trial, whose retry runs in a
    folder of its own) keeps no temp file or staging folder of that process."""
    if folder.is_symlink() or not folder.is_dir():
        return
    settle(folder)
    for sub in sorted(folder.iterdir()):
        if sub.is_dir() and not sub.is_symlink():
            settle_tree(sub)
