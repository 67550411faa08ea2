"""Checkpoints: safetensors in and out, JSON metadata, atomic writes, exact training-state resume.

Weights are read only from safetensors files, never with torch.load or pickle (a pickle runs
code when it is loaded). Every header is checked here before safetensors sees the file, so a
damaged or hostile file ends in one UserError line naming the file, never in a traceback.

A safetensors file is: an 8-byte little-endian header length N; N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}; then the
data section, which the tensors tile exactly (offsets are relative to its start).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.atomic import atomic_path
from goodfit_cli.io.into_model import HeadChange, load_into_model  # noqa: F401  (re-exported)

FORMAT = "goodfit/1"  # metadata["format"] of model files written by save_model
STATE_FORMAT = "goodfit-state/1"  # metadata["format"] of training-state files (save_state)
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"}
_DTYPE_BYTES = {  # the safetensors dtypes that safetensors.torch can load
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


# ---------------------------------------------------------------- writing
def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, each owning its storage (tied weights are cloned)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors must map str to Tensor; got {name!r}: {type(t).__name__}")
        t = t.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.nbytes:
            t = t.clone()  # shares memory with another entry, or is a view into a larger one
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                  metadata: dict[str, str]) -> None:
    prepared = _prepare(tensors)
    data_bytes = sum(t.nbytes for t in prepared.values())
    with atomic_path(path) as tmp:
        try:
            save_file(prepared, tmp, metadata=metadata)
        except SafetensorError as e:  # the Rust writer reports I/O failures this way
            raise OSError(f"safetensors could not write the file ({_one_line(e)})") from e
        _sort_metadata(tmp)
        with open(tmp, "rb") as f:  # a short write must not be renamed into place
            head = f.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -8
        if os.path.getsize(tmp) != 8 + header_len + data_bytes:
            raise OSError("the written file is shorter than expected (disk full?)")


def _sort_metadata(path: Path) -> None:
    """The header's metadata in sorted key order, in place: safetensors writes it in its hash
    map's order, another at every write, so the same tensors and metadata gave files (and
    sha256s in summary.json) that differed run to run. The same JSON reordered keeps its length,
    so the data section stays where it is; a header that would not fit is left as written."""
    with open(path, "r+b") as f:
        head = f.read(8)
        if len(head) != 8:
            return
        n = struct.unpack("<Q", head)[0]
        header = json.loads(f.read(n))
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        if not isinstance(meta, dict):
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(raw) <= n:
            f.seek(8)
            f.write(raw + b" " * (n - len(raw)))  # safetensors pads the header with spaces


def save_model(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
               metadata: Mapping[str, Any]) -> None:
    """Write `tensors` and JSON-encoded `metadata` (plus format=goodfit/1) atomically.

    Metadata keys must be str and values JSON-serialisable. "format" is reserved: it is always
    written as the plain string "goodfit/1" (passing that same value back is allowed).
    """
    if metadata.get("format", FORMAT) != FORMAT:
        raise ValueError(f"metadata key 'format' is reserved for {FORMAT!r}")
    encoded = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys must be str, got {key!r}")
        if key != "format":
            encoded[key] = json.dumps(value)
    encoded["format"] = FORMAT
    _save_tensors(path, tensors, encoded)


# ---------------------------------------------------------------- reading
def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _pickle_hint(name: str) -> str:
    """The refusal and the command that converts the file; the name is a shell-quoted argument
    (never code, never unquoted), so pasting the command cannot run what a name smuggles in."""
    return (f"{name} is a pickle/torch file; goodfit loads only safetensors. Convert it once "
            f"(weights only, nothing unpickled): goodfit convert {shlex.quote(name)} "
            "model.safetensors")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _parse_header(name: str, raw: bytes, data_len: int) -> dict[str, str]:
    """Validate the JSON header against the data section; return the raw str→str metadata."""
    damaged = "the file is damaged or not a safetensors file"
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise UserError(f"{name}: header is not valid JSON; {damaged}") from None
    if not isinstance(header, dict):
        raise UserError(f"{name}: header is not a JSON object; {damaged}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UserError(f"{name}: header '__metadata__' is not a map of strings; {damaged}")
    spans = []
    for key, info in header.items():
        where = f"{name}: tensor '{key}'"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise UserError(f"{where} lacks dtype/shape/data_offsets in the header; {damaged}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
            raise UserError(f"{where} has unsupported dtype {dtype!r}; {damaged}")
        if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d < 2**63 for d in shape):
            raise UserError(f"{where} has an invalid shape {shape!r}; {damaged}")
        if math.prod(max(d, 1) for d in shape) * _DTYPE_BYTES[dtype] >= 2**62:  # strides overflow
            raise UserError(f"{where} has shape {shape!r}, too large to address even when "
                            f"empty; {damaged}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets))
                or not 0 <= offsets[0] <= offsets[1]):
            raise UserError(f"{where} has invalid data_offsets {offsets!r}; {damaged}")
        begin, end = offsets
        if end > data_len:
            raise UserError(f"{where} ends at data byte {end} but the file holds only {data_len} "
                            f"data bytes; the file is truncated or damaged")
        nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
        if nbytes != end - begin:
            raise UserError(f"{where} is {dtype} {tuple(shape)} ({nbytes} bytes) but its data "
                            f"offsets span {end - begin} bytes; {damaged}")
        spans.append((begin, end, key))
    position, previous = 0, None
    for begin, end, key in sorted(spans):  # the tensors must tile the data section exactly
        if begin < position:
            raise UserError(f"{name}: tensors '{previous}' and '{key}' overlap; {damaged}")
        if begin > position:
            raise UserError(f"{name}: unused bytes before tensor '{key}'; {damaged}")
        position, previous = end, key
    if position != data_len:
        raise UserError(f"{name}: {data_len - position} stray bytes after the last tensor; "
                        f"{damaged}")
    return metadata


def check_safetensors(path: str | os.PathLike) -> None:
    """One UserError line when `path` is not a safetensors file a command can read (missing, a
    folder, empty, a torch pickle, truncated, a bad header), reading its header alone: what a
    command checks before it reads its data."""
    _header(path)


def _read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Validate `path` as safetensors, then load it; return (tensors, raw str→str metadata)."""
    metadata = _header(path)
    try:
        tensors = load_file(Path(path), device="cpu")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # includes pyo3's PanicException, a BaseException
        raise UserError(f"{path}: safetensors could not read it ({_one_line(e)}); the file is "
                        f"damaged or not a safetensors file") from None
    return tensors, metadata


def _header(path: str | os.PathLike) -> dict[str, str]:
    """`path` validated as safetensors up to its header; its raw str→str metadata."""
    p, name = Path(path), str(path)
    try:
        if p.is_dir():
            raise UserError(f"{name} is a directory; pass the .safetensors file inside it")
        if not p.exists():
            raise UserError(f"checkpoint not found: {name}")
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(9)
            header_len = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else None
            looks_safetensors = (header_len is not None and header_len <= size - 8
                                 and head[8:9] == b"{")
            if size == 0:
                raise UserError(f"{name} is empty (0 bytes); it was not saved completely, "
                                f"save or copy it again")
            if not looks_safetensors and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"
                                          or p.suffix.lower() in _PICKLE_SUFFIXES):
                raise UserError(_pickle_hint(name))
            if header_len is None:
                raise UserError(f"{name} is only {size} bytes; it is truncated or not a "
                                f"safetensors file")
            if header_len > size - 8:
                raise UserError(f"{name}: header length field says {header_len} bytes but the "
                                f"file has {size}; it is truncated or not a safetensors file")
            if header_len > _MAX_HEADER:
                raise UserError(f"{name}: header of {header_len} bytes is larger than "
                                f"safetensors allows; the file is damaged")
            f.seek(8)
            raw = f.read(header_len)
    except OSError as e:
        raise UserError(f"cannot read {name}: {e.strerror or e}") from None
    return _parse_header(name, raw, size - 8 - header_len)


def _json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def load_model(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file: (CPU tensors, metadata with JSON values decoded).

    Metadata values that are not JSON (e.g. "format": "goodfit/1", or "pt" from other tools)
    come back as strings. Any defect in the file is a UserError naming it.
    """
    tensors, raw = _read_safetensors(path)
    return tensors, {key: _json_or_str(value) for key, value in raw.items()}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A safetensors file's metadata alone (JSON values decoded), its tensors left unread; {}
    for a file that cannot be read as one (its reader says why, when it reads it)."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > _MAX_HEADER:
                return {}
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return {}
    raw = header.get("__metadata__") if isinstance(header, dict) else None
    return {k: _json_or_str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def check_finite(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """UserError naming the first floating tensor that holds NaN or Inf, with the count."""
    for name, t in tensors.items():
        if not (t.is_floating_point() or t.is_complex()):
            continue
        values = t.float() if t.element_size() == 1 else t  # float8: isfinite needs a wider type
        bad = t.numel() - int(torch.isfinite(values).sum())
        if bad:
            raise UserError(f"{path}: tensor '{name}' has {bad} NaN/Inf values out of "
                            f"{t.numel()}; the run that wrote it diverged, use an earlier checkpoint")


# ---------------------------------------------------------------- training state
#
# The skeleton is JSON in which every object is a one-key tag, so no user string can be
# mistaken for one: {"tensor": "t3"}, {"tuple": [...]}, {"dict": [[key, value], ...]} (keys
# keep their str/int type), {"float": "nan" | "inf" | "-inf"}. Lists, None, bools, ints, str
# and finite floats are plain JSON (Python writes floats with repr, which round-trips exactly).


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"float": repr(obj)}
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {"tensor": key}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"tuple": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"save_state: key {k!r} in {where} must be str or int")
            items.append([k, _encode(v, tensors, f"{where}[{k!r}]")])
        return {"dict": items}
    raise TypeError(f"save_state: {where} is a {type(obj).__name__}; only dicts, lists, tuples, "
                    f"tensors, numbers, bools, str and None can be stored")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    ((tag, value),) = node.items()
    if tag == "tensor":
        return tensors[value]
    if tag == "tuple":
        return tuple(_decode(v, tensors) for v in value)
    if tag == "dict":
        return {k: _decode(v, tensors) for k, v in value}
    if tag == "float" and value in ("nan", "inf", "-inf"):
        return float(value)
    raise ValueError(f"unknown tag {tag!r}")


def save_state(path: str | os.PathLike, state: Any) -> None:
    """Save a nested training state (dicts, lists, tuples, tensors, scalars) to one file.

    Tensors are stored as safetensors (detached, on CPU), the structure as tagged JSON in the
    metadata; the write is atomic. A tensor that appears twice is stored twice.
    """
    tensors, metadata = _state_parts(state)
    _save_tensors(path, tensors, metadata)


def _state_parts(state: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(the state's tensors by key, the file's metadata: its tagged-JSON skeleton)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(state, tensors, "state"), allow_nan=False)
    return tensors, {"format": STATE_FORMAT, "state": skeleton}


def load_state(path: str | os.PathLike) -> Any:
    """Load what save_state wrote, exactly: dict keys keep their str/int type, tuples come back
    as tuples, tensors keep dtype, shape (0-dim included) and bits, and are on the CPU."""
    tensors, raw = _read_safetensors(path)
    if raw.get("format") != STATE_FORMAT or "state" not in raw:
        raise UserError(f"{path} is not a goodfit training-state file (format "
                        f"{raw.get('format')!r}); pass the file written when the run was saved")
    try:
        return _decode(json.loads(raw["state"]), tensors)
    except (ValueError, TypeError, KeyError, RecursionError):
        raise UserError(f"{path}: the training state in it is damaged; resume from an earlier "
                        f"state file") from None
