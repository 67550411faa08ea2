"""Which code ran: goodfit's own source, hashed.

`goodfit_version` is one string across every commit; a run's identity, a checkpoint's metadata,
a report and a search study also record `goodfit_source_sha256`, the sha256 of every .py file of
the installed goodfit_cli package (sorted by path relative to it; each file's path and bytes,
length-prefixed, are hashed). It is computed once per process, the first time it is asked for
(the package as this process found it), and then kept: a resume or a continued study checks it
against what the run recorded, so a run never mixes two codes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent  # goodfit_cli/, as installed
KEY = "goodfit_source_sha256"  # the key every record uses

_cached: str | None = None  # this process's hash of PACKAGE, once computed


def hash_source(root: Path) -> str:
    """The sha256 of every .py file under `root` (sorted by relative POSIX path; for each, the
    path and the file's bytes, each preceded by its length), outside __pycache__ folders."""
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*.py")
                   if p.is_file() and "__pycache__" not in p.relative_to(root).parts)
    h = hashlib.sha256()
    for rel, path in files:
        name, data = rel.encode(), path.read_bytes()
        h.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def source_sha256() -> str:
    """goodfit's own source as this process runs it, hashed (`hash_source` of the installed
    package), computed once and cached."""
    global _cached
    if _cached is None:
        _cached = hash_source(PACKAGE)
    return _cached
