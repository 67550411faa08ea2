"""The one atomic writer: every file goodfit writes goes through `atomic_path` or `atomic_write`.

The guarantees, the same for a checkpoint, a report, a JUnit file or a line of JSON:
- a reader never sees a half-written file: the data goes to a temp file beside the target,
  is fsynced, renamed over the target, and the folder is fsynced (the rename survives a crash);
- an existing file is replaced only once the new one is complete: on any failure (disk full,
  an interrupt) the temp file is removed and the target is untouched;
- nothing follows a link it did not make: the temp file is created exclusively with an
  unpredictable name (O_CREAT | O_EXCL | O_NOFOLLOW), and a target that is a symbolic link is
  refused;
- files are created with the process umask (0666 & ~umask), so a teammate or a CI runner with
  another uid can read what a container wrote; a library writer that replaces the temp file
  with its own (safetensors writes 0600) gets that mode back before the rename;
- an OSError becomes one UserError line naming the file ("nothing was overwritten").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from goodfit_cli.core.errors import UserError

_NAME_MAX = 255  # bytes in one file name on the usual Linux file systems


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def pid_space() -> str:
    """8 hex digits naming where this process's pid means something: the host and its pid
    namespace. A folder shared between machines (NFS) or containers (a volume: each container
    has its own pids) holds files named by pids of other spaces, which a check of the pid here
    would wrongly find dead (before: a live worker's temp file deleted under it)."""
    global _SPACE
    if _SPACE is None:
        try:
            ns = os.readlink("/proc/self/ns/pid")
        except OSError:  # no /proc (macOS): the host alone
            ns = ""
        _SPACE = hashlib.sha256(f"{socket.gethostname()}|{ns}".encode()).hexdigest()[:8]
    return _SPACE


_SPACE: str | None = None


def owner_tag() -> str:
    """`PID-SPACE-RANDOM`: what a temp file, write probe or staging folder is named by, so that
    `dead_leftovers` knows whose it is (and a name is never reused)."""
    return f"{os.getpid()}-{pid_space()}-{secrets.token_hex(8)}"


def _temp_name(target: Path) -> Path:
    """`.NAME.tmp-PID-SPACE-RANDOM` beside the target; NAME shortened so the whole stays legal."""
    suffix = f".tmp-{owner_tag()}"
    stem = target.name
    room = _NAME_MAX - len(suffix.encode()) - 1
    while len(stem.encode("utf-8", "surrogateescape")) > room:
        stem = stem[:-1]
    return target.with_name(f".{stem}{suffix}")


def refuse_symlink(target: Path) -> None:
    """A final name that is a symbolic link is a user error: replacing it would write elsewhere."""
    if target.is_symlink():
        raise UserError(f"refusing to write {target}: it is a symbolic link (remove it, or "
                        "choose another output path)")


def create_exclusive(path: Path) -> None:
    """Create an empty regular file that did not exist, never through a link; umask applies."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp file next to `path`; on success fsync it and rename it onto `path`.

    The caller writes the temp file by name (a library's own writer may reopen it). On any
    exception (KeyboardInterrupt included) the temp file is removed and the exception re-raised,
    so `path` is never half-written and an existing file is left untouched.
    """
    target = Path(path)
    refuse_symlink(target)
    tmp = _temp_name(target)
    prefix = tmp.name.rsplit(".tmp-", 1)[0] + ".tmp-"  # this target's temp files: a killed
    for left in dead_leftovers(target.parent, prefix):  # process's are removed (a JUnit
        left.unlink(missing_ok=True)  # file's too, in a folder no resume tidies)
    try:
        create_exclusive(tmp)
        mode = os.stat(tmp).st_mode & 0o777  # 0666 & ~umask
        yield tmp
        with open(tmp, "rb+") as f:
            if os.fstat(f.fileno()).st_mode & 0o777 != mode:  # a library's writer replaced the
                os.fchmod(f.fileno(), mode)  # file with its own 0600 temp file (safetensors)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            reason = e.strerror or str(e)
            raise UserError(f"cannot write {target}: {reason} (nothing was overwritten)") from e
        raise
    fsync_dir(target.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable; some platforms and filesystems cannot fsync a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (text is UTF-8) to `path` atomically (see atomic_path)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp, open(tmp, "r+b") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))


PROBE = ".goodfit-write-test-"


def probe_writable(directory: Path) -> None:
    """Check that files can be created in `directory` (exclusively, with a random name that
    holds the pid and its pid space, so that one a killed process left is known for its:
    `dead_leftovers`)."""
    probe = directory / f"{PROBE}{owner_tag()}"
    create_exclusive(probe)
    probe.unlink()


def _owner_gone(tag: str) -> bool:
    """Whether the process a leftover's `PID-SPACE-RANDOM` (older: `PID-RANDOM`) names is gone:
    only a pid of this pid space is checked (signal 0: no /proc needed, as on macOS); one of
    another host or container is never judged here."""
    parts = tag.split("-")
    if len(parts) >= 3 and parts[1] != pid_space():
        return False
    pid = parts[0]
    if not pid.isdigit() or int(pid) in (0, os.getpid()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it runs, as another user
        return False
    return False


def dead_leftovers(folder: Path, prefix: str = ".") -> list[Path]:
    """What a process killed mid-write (SIGKILL, power loss) left in `folder`, whose process is
    gone: temp files of atomic writes (`.NAME.tmp-PID-SPACE-HEX`), write probes
    (`.goodfit-write-test-PID-SPACE-HEX`) and staging folders of sets of files (io/staging.py:
    `.staging-PID-SPACE-HEX`, which `staging.settle` finishes or removes); only names that start
    with `prefix` (an atomic write: its own target's), judged by name before any stat."""
    found = []
    for p in folder.iterdir() if folder.is_dir() else []:
        name = p.name
        if not name.startswith(prefix):
            continue
        if name.startswith(PROBE):
            tag, kind = name[len(PROBE):], "file"
        elif name.startswith(".staging-"):
            tag, kind = name[len(".staging-"):], "dir"
        elif name.startswith(".") and ".tmp-" in name:
            tag, kind = name.rsplit(".tmp-", 1)[1], "file"
        else:
            continue
        if p.is_symlink() or not (p.is_dir() if kind == "dir" else p.is_file()):
            continue
        if _owner_gone(tag):
            found.append(p)
    return found
