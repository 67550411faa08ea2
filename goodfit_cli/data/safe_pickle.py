"""A restricted unpickler for data files: plain containers and numpy arrays, nothing else.

The CIFAR "python version" files are pickles. A pickle can name any importable callable (for
example `os.system`) and have it called while loading; `SafeUnpickler` resolves only the few
globals that rebuild numpy arrays and refuses every other one with a UserError before anything
is called. Plain containers (dict, list, tuple, bytes, str, numbers) need no globals at all.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

import numpy as np

from goodfit_cli.core.errors import UserError


def _reconstruct() -> Any:
    try:  # numpy >= 2 keeps it in numpy._core; numpy.core is a shim that warns on import
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


def _frombuffer() -> Any:
    try:
        from numpy._core.numeric import _frombuffer as fn
    except ImportError:
        from numpy.core.numeric import _frombuffer as fn
    return fn


def _latin1_encode() -> Any:
    def encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise UserError(f"refused to unpickle: _codecs.encode with encoding {encoding!r}")
        return text.encode("latin1", errors)
    return encode


# (module, name) → the object it stands for. Pickles written by numpy 1.x name numpy.core,
# those written by numpy 2.x name numpy._core; both map to the same functions.
# `_frombuffer` is what numpy uses for arrays pickled with protocol 5 (it only builds an array);
# `_codecs.encode(text, "latin1")` is how Python 3 writes bytes into protocol-2 pickles (only
# that encoding is accepted).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class SafeUnpickler(pickle.Unpickler):
    """Resolves only numpy array reconstruction; any other global is a UserError.

    `source` names the file in the error message.
    """

    def __init__(self, file: BinaryIO, *, source: str = "<pickle>", encoding: str = "bytes") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        get = _ALLOWED.get((module, name))
        if get is None:
            raise UserError(f"{self.source}: refused to unpickle: it asks for {module}.{name}, "
                            "and only plain containers and numpy arrays are accepted")
        return get()

    def persistent_load(self, pid: Any) -> Any:
        raise UserError(f"{self.source}: refused to unpickle: it uses persistent ids")


def safe_load(file: BinaryIO, *, source: str = "<pickle>") -> Any:
    """The unpickled object, loaded with `SafeUnpickler` (bytes keys stay bytes, as CIFAR's)."""
    try:
        return SafeUnpickler(file, source=source).load()  # safe: find_class allows numpy arrays only
    except UserError:
        raise
    except Exception as e:  # truncated or corrupt: one line, no traceback
        raise UserError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None


def safe_loads(data: bytes, *, source: str = "<pickle>") -> Any:
    return safe_load(io.BytesIO(data), source=source)
