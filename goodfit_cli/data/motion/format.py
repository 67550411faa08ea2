"""Motion-prediction scenarios: the tensor format and sharded safetensors I/O.

One scenario = one target agent at its current time, everything in the target-centric,
heading-aligned frame (docs/motion-data.md lists every field, its shape and unit). Scenarios are
stored as shards `DIR/{train,test}/shard-NNNNN.safetensors`, one tensor per field with the scene
axis first. A Split packs a scenario's input fields into ONE float row (`MotionLayout.pack`) and
its target into `y` (N, 80, 3) = (x, y, valid) per future step; the model unpacks with views.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from goodfit_cli.core.errors import UserError
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import write_json

HZ = 10
HISTORY = 11  # 1.1 s: steps t = -1.0 … 0.0 s; index 10 is the current step
FUTURE = 80  # 8 s: steps t = 0.1 … 8.0 s
AGENT_FEATURES = ("x", "y", "vx", "vy", "cos_heading", "sin_heading")  # m, m/s, unit vector
AGENT_TYPES = ("car", "pedestrian", "cyclist")
MAP_TYPES = ("lane", "sidewalk", "crosswalk", "stop_line")
MAP_FEATURES = ("x", "y", "dir_x", "dir_y", *(f"is_{t}" for t in MAP_TYPES))
LIGHT_STATES = ("red", "yellow", "green")
LIGHT_FEATURES = ("stop_x", "stop_y", *LIGHT_STATES)
SHARD_FORMAT = "goodfit-motion/1"  # metadata["motion_format"] of every shard
TARGET_FIELDS = {"target_future": (FUTURE, 2), "target_future_valid": (FUTURE,)}
SPLITS = ("train", "test")
INDEX = "shards.json"  # written last, when a ShardWriter closes: the split's set is complete


@dataclass(frozen=True)
class MotionLayout:
    """How many nearby agents, map polylines (of `points` points) and traffic lights a scenario holds."""

    agents: int = 16
    polylines: int = 64
    points: int = 10
    lights: int = 4

    def input_fields(self) -> dict[str, tuple[int, ...]]:
        """Input fields in packing order, each with its per-scenario shape."""
        h, a, p, l, k = HISTORY, self.agents, self.polylines, self.points, self.lights
        return {
            "target_history": (h, len(AGENT_FEATURES)), "target_valid": (h,),
            "target_type": (len(AGENT_TYPES),),
            "agents_history": (a, h, len(AGENT_FEATURES)), "agents_valid": (a, h),
            "agents_type": (a, len(AGENT_TYPES)),
            "map_points": (p, l, len(MAP_FEATURES)), "map_valid": (p, l),
            "lights_state": (k, h, len(LIGHT_FEATURES)), "lights_valid": (k, h),
        }

    def fields(self) -> dict[str, tuple[int, ...]]:
        """Every stored field (inputs, then the target's future)."""
        return {**self.input_fields(), **TARGET_FIELDS}

    @property
    def size(self) -> int:
        """Floats per packed input row."""
        return sum(int(np.prod(s)) for s in self.input_fields().values())

    def pack(self, fields: Mapping[str, Tensor]) -> Tensor:
        """Input fields (N, *shape) → (N, size) float32; masked-out values are zeroed first."""
        f = zero_masked(fields)
        n = len(f["target_history"])
        return torch.cat([f[k].reshape(n, -1).float() for k in self.input_fields()], dim=1)

    def unpack(self, x: Tensor) -> dict[str, Tensor]:
        """(B, size) → {field: (B, *shape)} views into x (masks as 0/1 floats)."""
        if x.ndim != 2 or x.shape[1] != self.size:
            raise UserError(f"motion input has shape {tuple(x.shape)}, expected (B, {self.size}) for "
                            f"{self}; the model's and the data's agents/polylines/points/lights must match")
        out, i = {}, 0
        for name, shape in self.input_fields().items():
            n = int(np.prod(shape))
            out[name] = x[:, i:i + n].view(x.shape[0], *shape)
            i += n
        return out

    def target(self, fields: Mapping[str, Tensor]) -> Tensor:
        """(N, 80, 3): future (x, y) of the target and its validity (0/1), invalid steps zeroed."""
        f = zero_masked({k: fields[k] for k in TARGET_FIELDS})
        valid = f["target_future_valid"]
        return torch.cat([f["target_future"], valid[..., None]], dim=-1)


MASKED = (("target_history", "target_valid"), ("agents_history", "agents_valid"),
          ("map_points", "map_valid"), ("lights_state", "lights_valid"),
          ("target_future", "target_future_valid"))


def zero_masked(fields: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy with every value under a False mask set to 0 (masks become 0/1 floats); a NaN or
    Inf there becomes 0 too (a product with the mask would keep it). Finite values come out
    bit for bit as value × mask (−0.0 included), so data hashes of earlier runs still match."""
    f = dict(fields)
    for feat, mask in MASKED:
        if feat in f:
            m = f[mask].float()
            f[mask] = m
            v = f[feat].float()
            f[feat] = torch.where(m[..., None] > 0, v, v.nan_to_num(0.0, 0.0, 0.0) * 0)
    return f


def layout_of(fields: Mapping[str, Any]) -> MotionLayout:
    """The layout a set of stored fields was written with (from the field shapes)."""
    mp = fields["map_points"]
    return MotionLayout(agents=fields["agents_history"].shape[1], polylines=mp.shape[1],
                        points=mp.shape[2], lights=fields["lights_state"].shape[1])


def fit_layout(fields: Mapping[str, Tensor], layout: MotionLayout) -> dict[str, Tensor]:
    """Crop or zero-pad stored fields (N, …) to `layout`: the first agents / polylines / points /
    lights are kept (writers store them nearest to the target first); padding is masked out."""
    want = layout.fields()
    out = {}
    for name, shape in want.items():
        t = fields[name]
        n = len(t)
        for axis, size in enumerate(shape, start=1):
            have = t.shape[axis]
            if have > size:
                t = t.narrow(axis, 0, size)
            elif have < size:
                pad_shape = list(t.shape)
                pad_shape[axis] = size - have
                t = torch.cat([t, torch.zeros(pad_shape, dtype=t.dtype)], dim=axis)
        assert t.shape == (n, *shape), (name, t.shape, shape)
        out[name] = t
    return out


# ---------------------------------------------------------------------------------------------
# shards: the converter interface


def check_fields(fields: Mapping[str, Any], where: str, first: int = 0,
                 shard_size: int | None = None) -> int:
    """Validate a batch of scenario fields (N, …): names, shapes and dtypes; return N. A scene
    is named by its index in the split (`first` + its index here); with `shard_size` (a writer)
    also the shard it goes to, without (a shard read back) its index in the shard."""
    missing = [k for k in MotionLayout().fields() if k not in fields]
    if missing:
        raise UserError(f"{where}: missing field {missing[0]!r} (see docs/motion-data.md)")
    symbolic = MotionLayout("A", "P", "L", "K").fields()  # type: ignore[arg-type]
    for name, shape in symbolic.items():
        have = tuple(np.shape(fields[name]))
        if len(have) != 1 + len(shape):
            want = ", ".join(map(str, ("N", *shape)))
            raise UserError(f"{where}: field {name!r} has shape {have}, expected ({want}): N "
                            f"scenes first (see docs/motion-data.md)")
    layout = layout_of(fields)
    n = len(fields["target_history"])
    for name, shape in layout.fields().items():
        t = fields[name]
        if tuple(t.shape) != (n, *shape):
            raise UserError(f"{where}: field {name!r} has shape {tuple(t.shape)}, expected "
                            f"{(n, *shape)} (N scenes first; see docs/motion-data.md)")
        is_mask = name.endswith("_valid")
        dt = str(t.dtype)
        if is_mask and "bool" not in dt:
            raise UserError(f"{where}: mask {name!r} must be bool, got {dt}")
        if not is_mask and "float" not in dt:
            raise UserError(f"{where}: field {name!r} must be floating point, got {dt}")
    at = lambda i: _scene_at(i, first, shard_size)  # noqa: E731
    _check_finite(fields, where, at)
    now = ~torch.as_tensor(fields["target_valid"])[:, HISTORY - 1]
    if bool(now.any()):
        raise UserError(f"{where}: field 'target_valid' is false at the current step (index "
                        f"{HISTORY - 1}, t = 0) in {int(now.sum())} scene(s), the first at "
                        f"{at(int(now.nonzero()[0, 0]))}; the frame is the target's pose "
                        f"observed then (see docs/motion-data.md)")
    none = ~torch.as_tensor(fields["target_future_valid"]).reshape(n, -1).any(1)
    if bool(none.any()):
        raise UserError(f"{where}: field 'target_future_valid' has no true step in "
                        f"{int(none.sum())} scene(s), the first at {at(int(none.nonzero()[0, 0]))}"
                        f"; a target without a future to score would count as a perfect "
                        f"prediction: leave such scenes out")
    return n


def _scene_at(i: int, first: int, shard_size: int | None) -> str:
    """'scene 7 of the split (shard-00002.safetensors)' or '… (scene 1 of this shard)'."""
    g = first + i
    return f"scene {g} of the split " + (f"(for {shard_name(g // shard_size)})" if shard_size
                                         else f"(scene {i} of this shard)")


def _check_finite(fields: Mapping[str, Any], where: str, at) -> None:
    """A NaN or Inf where a value counts (under a True mask, or in a field without one) is a
    UserError naming the field and the scene; under a False mask it is ignored (zeroed)."""
    masks = dict(MASKED)
    for name in MotionLayout().fields():
        if name.endswith("_valid"):
            continue
        bad = ~torch.isfinite(torch.as_tensor(fields[name]))
        if name in masks:
            bad &= torch.as_tensor(fields[masks[name]]).bool()[..., None]
        if bool(bad.any()):
            scenes = bad.reshape(len(bad), -1).any(1).nonzero()[:, 0]
            raise UserError(f"{where}: field {name!r} has a NaN or Inf in {len(scenes)} "
                            f"scene(s), the first at {at(int(scenes[0]))}"
                            + (f" (under a true {masks[name]!r})" if name in masks else "")
                            + "; values must be finite (see docs/motion-data.md)")


class ShardWriter:
    """Write scenarios as `OUT/<split>/shard-00000.safetensors`, … atomically, `shard_size` each.

    The converter interface: turn each scene of your logs into the documented fields (numpy
    arrays without the scene axis), then

        with ShardWriter("data/motion/mycity", "train", metadata={"source": "my logs"}) as w:
            for scene in my_scenes():
                w.add(scene_fields(scene))

    `add_batch` takes fields that already have the scene axis first.
    """

    def __init__(self, out_dir: str | os.PathLike, split: str, shard_size: int = 1000,
                 metadata: Mapping[str, Any] | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.dir = Path(out_dir) / split
        self.split, self.shard_size, self.metadata = split, shard_size, dict(metadata or {})
        self.buffer: list[dict[str, np.ndarray]] = []
        self.pending = 0
        self.written: list[Path] = []
        self.counts: list[int] = []
        self.scenes = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {self.dir}: {e.strerror or e}") from None
        existing = shard_files(self.dir) + [p for p in [self.dir / INDEX] if p.exists()]
        if existing:  # overwritten, and any past ours read as data
            raise UserError(f"{self.dir}: already holds {len(existing)} shard file(s) "
                            f"({existing[0].name}); write into an empty directory, or remove "
                            f"them first")

    def add(self, scene: Mapping[str, Any]) -> None:
        self.add_batch({k: np.asarray(v)[None] for k, v in scene.items()})

    def add_batch(self, fields: Mapping[str, Any]) -> None:
        batch = {k: np.asarray(v) for k, v in fields.items()}
        n = check_fields(batch, str(self.dir), self.scenes + self.pending, self.shard_size)
        self.buffer.append(batch)
        self.pending += n
        while self.pending >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        merged = {k: np.concatenate([b[k] for b in self.buffer]) for k in self.buffer[0]}
        shard = {k: torch.from_numpy(np.ascontiguousarray(v[:n])) for k, v in merged.items()}
        rest = {k: v[n:] for k, v in merged.items()}
        self.buffer = [rest] if len(rest["target_history"]) else []
        self.pending -= n
        path = self.dir / shard_name(len(self.written))
        meta = {**self.metadata, "motion_format": SHARD_FORMAT, "split": self.split,
                "first_scene": self.scenes, "scenes": n}
        ckpt.save_model(path, shard, meta)
        self.written.append(path)
        self.counts.append(n)
        self.scenes += n

    def close(self) -> list[Path]:
        """Write what is left, then the index that marks the set complete (a converter that
        raised never gets here: its shards are refused by `read_shards`)."""
        if self.pending:
            self._flush(self.pending)
        firsts = np.cumsum([0, *self.counts[:-1]]).tolist()
        write_json(self.dir / INDEX, {
            "motion_format": SHARD_FORMAT, "split": self.split, "scenes": self.scenes,
            "shards": [{"file": p.name, "first_scene": f, "scenes": n, "bytes": p.stat().st_size,
                        "sha256": file_sha256(p)}
                       for p, f, n in zip(self.written, firsts, self.counts)]})
        return self.written

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.close()


def file_sha256(path: Path) -> str:
    """The file's contents hashed (the index's check that a shard is the one converted: about
    half the time reading the shard takes, measured in docs/motion-data.md)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def shard_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("shard-*.safetensors"))


def read_shards(directory: str | os.PathLike) -> dict[str, Tensor]:
    """All shards of one split directory, concatenated in file-name order."""
    d = Path(directory)
    files = shard_files(d) if d.is_dir() else []
    if not files:
        raise UserError(f"{d}: no shard-*.safetensors files; write some with "
                        f"`goodfit data motion-synth --out DIR` or a ShardWriter")
    parts, layout, first = [], None, 0
    for f, entry in zip(files, read_index(d, files)):
        if entry["sha256"] is not None and file_sha256(f) != entry["sha256"]:
            raise UserError(f"{f}: its contents are not those {INDEX} records (sha256 "
                            f"{entry['sha256'][:12]}…): the file changed after the conversion "
                            "finished; convert the split again")
        tensors, meta = ckpt.load_model(f)
        if meta.get("motion_format") != SHARD_FORMAT:
            raise UserError(f"{f}: not a motion shard (metadata motion_format is "
                            f"{meta.get('motion_format')!r}, expected {SHARD_FORMAT!r})")
        n = check_fields(tensors, str(f), first)
        said = (meta.get("first_scene"), meta.get("scenes"), n)
        if said != (first, entry["scenes"], entry["scenes"]):
            raise UserError(f"{f}: holds {n} scenes, first_scene {said[0]}, scenes {said[1]} in "
                            f"its metadata; {d / INDEX} says {entry['scenes']} from scene "
                            f"{first}: convert the split again")
        first += n
        if layout is None:
            layout = layout_of(tensors)
        elif layout_of(tensors) != layout:
            raise UserError(f"{f}: sizes {layout_of(tensors)} differ from the first shard's {layout}")
        parts.append(tensors)
    return {k: torch.cat([p[k] for p in parts]) for k in layout.fields()}


def read_index(d: Path, files: list[Path]) -> list[dict[str, Any]]:
    """The entries of `d`'s index, one per shard file present, checked against them (names,
    sizes, scene counts); a split without its index did not finish converting: refused."""
    path = d / INDEX
    if not path.is_file():
        raise UserError(f"{d}: no {INDEX} beside its {len(files)} shard file(s): the conversion "
                        f"that wrote them did not finish (or ran before goodfit wrote an index); "
                        f"convert the split again into an empty directory (`goodfit data "
                        f"motion-synth --overwrite`, or your ShardWriter)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        entries = index["shards"]
        listed = [str(e["file"]) for e in entries]
        counts = [int(e["scenes"]) for e in entries]
        sizes = [int(e["bytes"]) for e in entries]
        firsts = [int(e["first_scene"]) for e in entries]
        hashes = [e.get("sha256") for e in entries]  # None: an index of an older goodfit
        ok = (index.get("motion_format") == SHARD_FORMAT and index["scenes"] == sum(counts)
              and firsts == np.cumsum([0, *counts[:-1]]).tolist()
              and len(set(listed)) == len(listed)
              and all(h is None or isinstance(h, str) for h in hashes))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a shard index ({type(e).__name__}: {e})") from None
    if not ok:
        raise UserError(f"{path}: not a {SHARD_FORMAT} shard index (motion_format "
                        f"{index.get('motion_format')!r}, scenes {index['scenes']!r}, its "
                        f"shards {listed} of {counts} scenes from {firsts})")
    present = [f.name for f in files]
    if missing := [n for n in listed if n not in present]:
        raise UserError(f"{d}: {missing[0]} is listed in {INDEX} but missing ({len(missing)} "
                        f"of {len(listed)} shards): the set is incomplete")
    if extra := [n for n in present if n not in listed]:
        raise UserError(f"{d / extra[0]}: not listed in {INDEX} (left by another conversion?): "
                        f"remove it, or convert the split again")
    for f, size in zip(files, [sizes[listed.index(n)] for n in present]):
        if f.stat().st_size != size:
            raise UserError(f"{f}: {f.stat().st_size} bytes, {INDEX} says {size}: the file "
                            f"changed after the conversion finished; convert the split again")
    return [{"scenes": counts[listed.index(n)], "sha256": hashes[listed.index(n)]}
            for n in present]


def iter_scenes(fields: Mapping[str, Tensor]) -> Iterator[dict[str, Tensor]]:
    """One dict per scene (for inspection and converters' tests)."""
    for i in range(len(fields["target_history"])):
        yield {k: v[i] for k, v in fields.items()}
