"""A run folder belongs to one process at a time, and `--overwrite` never reads what was there.

`open_run(out, ...)` is how pretrain, finetune, compare and wise take their `--out`:
- an exclusive `fcntl.flock` on `OUT/.goodfit.lock` (the kernel drops it when the process ends,
  even on SIGKILL), holding the owner's pid; a second run gets "OUT is in use by process N";
- with `--overwrite`, a folder that holds anything is renamed aside, whole and atomically, to
  `OUT.prev-<time>` and kept there (never deleted; remove it yourself once the new run is
  good), and the run starts in a fresh, empty `OUT`;
- otherwise the folder must be empty, or be resumed (the caller checks what it resumes), or
  hold the unfinished output of the same command (`rerun`: compare and wise write
  `OUT/.goodfit.incomplete`, naming the command, before any output and remove it when they
  end; killed in between, the same command runs again over its own files; another command,
  or a file it does not write, is one line saying what to do).

The lock file is the one file goodfit writes in place rather than through io.atomic: a lock
lives on its inode, so replacing it would break the lock. It is opened with O_NOFOLLOW, so a
planted symbolic link is refused rather than followed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.atomic import atomic_write, dead_leftovers, fsync_dir, probe_writable
from goodfit_cli.io.staging import settle

LOCK = ".goodfit.lock"
MARK = ".goodfit.incomplete"  # a command's own unfinished output: what it is, written first


def command_digest(*parts: object) -> str:
    """A command's identity for `Rerun`: its name, inputs (resolved paths) and flags, hashed."""
    blob = json.dumps([str(p) if isinstance(p, Path) else p for p in parts], sort_keys=True,
                      default=repr).encode()
    return f"{parts[0]} {hashlib.sha256(blob).hexdigest()}"


@dataclass(frozen=True)
class Rerun:
    """A command that may run again over its own unfinished output: `command` names it (a
    digest of its inputs and flags), `writes` the names of the files it writes into OUT."""
    command: str
    writes: frozenset[str]


def has_content(out: Path) -> bool:
    """Whether a run folder holds anything besides its lock file and what a killed process
    left mid-write (`dead_leftovers`: never read; before, a SIGKILL at start-up left a folder
    the same command then refused as "not empty")."""
    dead = {p for p in dead_leftovers(out) if not (p / ".old").is_dir()}  # a swap begun: not
    return out.is_dir() and any(p.name not in (LOCK, MARK) and p not in dead
                                for p in out.iterdir())


def was_interrupted(out: Path) -> bool:
    """Whether `out` holds a run a signal cut short (its timings.json ended "Interrupted")."""
    try:
        return json.loads((out / "timings.json").read_text()).get("ended") == "Interrupted"
    except (OSError, ValueError, AttributeError):
        return False


class RunLock:
    """An exclusive lock on one run folder; `release()` (or process exit) lets it go."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        path = folder / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as e:
            raise UserError(f"cannot lock {folder}: {e.strerror} ({path})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{folder} is in use by process {owner} (another goodfit run writes "
                            "there; wait for it to end or choose another --out)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd
        self.made = False  # whether open_run made the folder (a failed command removes it)
        self.parents: list[Path] = []  # the folders above it made too, innermost first
        self.aside: Path | None = None  # where --overwrite moved the old run (put back then)
        self.marked = False  # whether open_run wrote MARK (held removes it when the run ends)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def aside_path(out: Path) -> Path:
    """Where `out` (a folder) is kept aside: `<out>.prev-<time>`, `-N` added when that is taken;
    the one name every command moves or copies an older folder to."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = out.with_name(f"{out.name}.prev-{stamp}"), 1
    while aside.exists() or aside.is_symlink():
        aside, n = out.with_name(f"{out.name}.prev-{stamp}-{n}"), n + 1
    return aside


def make_out(out: Path) -> None:
    """`out` made and checked writable, or one line why not; what a killed process left there
    settled (staging.settle: only the leftovers of processes that are gone, so a search's
    workers sharing `out` may call it; before, a search left them for good)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe_writable(out)
        settle(out)
    except OSError as e:
        raise UserError(f"cannot write to output directory {out}: {e.strerror}") from None


def unfinished_by(out: Path, rerun: Rerun) -> bool:
    """Whether `out` holds the unfinished output of `rerun`'s command (its mark, and only files
    it writes); a mark of another command, or a file it does not write, is one UserError line."""
    try:
        mark = (out / MARK).read_text().strip()
    except OSError:
        return False
    how = "rerun that command to finish it, or pass --overwrite (its files are moved aside, kept)"
    if mark != rerun.command:
        raise UserError(f"output directory {out} holds the unfinished output of another goodfit "
                        f"command (other inputs or flags; {out / MARK}): {how}")
    dead = set(dead_leftovers(out))
    other = sorted(p.name for p in out.iterdir() if p.name not in (LOCK, MARK) and p not in dead
                   and not (p.name in rerun.writes and p.is_file() and not p.is_symlink()))
    if other:
        raise UserError(f"output directory {out} holds this command's unfinished output and "
                        f"{other[0]!r}, which it does not write: move that away and run the "
                        "command again, or pass --overwrite (the folder is moved aside, kept)")
    return True


def open_run(out: Path, *, overwrite: bool, resume: bool,
             resume_hint: str = ", or --resume to continue it",
             rerun: Rerun | None = None) -> tuple[RunLock, Path | None]:
    """Check, lock and (with `overwrite`) empty `out` by moving its content aside; with
    `rerun`, mark it as that command's until `held` ends (over its own unfinished output).

    Returns the held lock and the folder the old content went to (None when nothing moved)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"output path exists and is not a directory: {out}")
    again = rerun is not None and not overwrite and out.is_dir() and unfinished_by(out, rerun)
    if has_content(out) and not (overwrite or resume or again):
        if resume_hint and was_interrupted(out):
            raise UserError(f"output directory {out} holds a run that was interrupted: "
                            f"continue it with --resume {out} (or pass --overwrite to start "
                            "afresh)")
        raise UserError(f"output directory {out} already exists and is not empty "
                        f"(pass --overwrite to start afresh{resume_hint})")
    existed = out.is_dir()
    parents = [p for p in out.absolute().parents if not p.exists()]  # made by make_out too
    make_out(out)
    lock = RunLock(out)
    lock.made, lock.parents = not existed, parents
    moved = None
    if overwrite and has_content(out):
        moved = aside_path(out)
        try:
            os.rename(out, moved)  # one atomic step: OUT is whole, or whole aside
        except OSError as e:
            lock.release()
            raise UserError(f"cannot move {out} aside to {moved}: {e.strerror} "
                            "(nothing was changed)") from None
        fsync_dir(out.parent)
        lock.release()
        make_out(out)
        lock = RunLock(out)
        lock.made, lock.aside = True, moved
    if rerun is not None:  # before any output: what the folder's files are, until held ends
        try:
            atomic_write(out / MARK, rerun.command + "\n")
        except BaseException:
            lock.release()
            raise
        lock.marked = True
    return lock, moved


@contextlib.contextmanager
def held(lock: RunLock | None, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Release `lock` when the block ends, however it ends. A command that fails before it
    wrote anything leaves no trace: its lock file goes, the folder when it made it (and the
    folders above it that it made: `--out a/b/run` with no `a`), and a run
    that --overwrite moved aside comes back to its place (`say` tells, when given: the command
    said where it went)."""
    try:
        yield
        if lock is not None and lock.marked:  # finished: its output is whole
            (lock.folder / MARK).unlink(missing_ok=True)
            fsync_dir(lock.folder)
    except BaseException:
        if lock is not None and lock.fd is not None and not has_content(lock.folder):
            try:  # still held: no other run can be using the file
                (lock.folder / MARK).unlink(missing_ok=True)
                (lock.folder / LOCK).unlink()
                if lock.made:
                    lock.folder.rmdir()
                    for parent in lock.parents:  # --out a/b/run with no a: a goes too
                        parent.rmdir()
                    if lock.aside is not None:
                        os.rename(lock.aside, lock.folder)
                        (lock.folder / LOCK).unlink(missing_ok=True)  # ours, taken to move it
                        if say is not None:
                            say(f"--overwrite: nothing was written; the previous content of "
                                f"{lock.folder} was moved back from {lock.aside}")
            except OSError:
                pass
        raise
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def turns(folder: Path) -> Iterator[None]:
    """The block as one turn of the processes sharing `folder` (a search's workers, which write
    the same run folder): a blocking exclusive flock on the folder itself, no file made."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
