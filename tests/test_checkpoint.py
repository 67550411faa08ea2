"""Tests for goodfit_cli.io.checkpoint: safetensors I/O, atomic writes, validation, resume state."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.io import atomic
from goodfit_cli.io import checkpoint as ck
from goodfit_cli.io.states import StateWriter


def _assert_clean(err: UserError, path) -> None:
    message = str(err)
    assert os.path.basename(str(path)) in message
    assert "\n" not in message and "Traceback" not in message and "File \"" not in message


def _raw(header: dict, data: bytes = b"") -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


class Net(nn.Module):
    def __init__(self, classes: int = 10, width: int = 8):
        super().__init__()
        self.body = nn.Linear(4, width)
        self.bn = nn.BatchNorm1d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.body(x))))


def test_sha256_file_matches_hashlib(tmp_path):
    """sha256_file returns the hex digest of the whole file."""
    p = tmp_path / "blob"
    data = os.urandom(3 << 20)
    p.write_bytes(data)
    assert atomic.sha256_file(p) == hashlib.sha256(data).hexdigest()


def test_round_trip_with_metadata(tmp_path):
    """save_model/load_model keep names, dtypes, shapes, bits and JSON metadata values."""
    tensors = {
        "w": torch.randn(3, 4), "h": torch.randn(2).to(torch.bfloat16),
        "mask": torch.tensor([True, False]), "n": torch.tensor(7), "e": torch.empty(0, 3),
        "t": torch.randn(4, 3).t(),  # non-contiguous
    }
    meta = {"recipe": "cifar", "epochs": 3, "lr": 0.1, "classes": ["a", "b"], "seed": None}
    p = tmp_path / "m.safetensors"
    ck.save_model(p, tensors, meta)
    loaded, got = ck.load_model(p)
    assert set(loaded) == set(tensors)
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and loaded[k].shape == t.shape
        assert torch.equal(loaded[k], t)
    assert got == {**meta, "format": "goodfit/1"}


def test_foreign_metadata_kept_as_string(tmp_path):
    """Metadata values that are not JSON (other tools' files) come back as plain strings."""
    p = tmp_path / "hf.safetensors"
    p.write_bytes(st_save({"a": torch.ones(2)}, metadata={"format": "pt", "n": "3"}))
    _, meta = ck.load_model(p)
    assert meta == {"format": "pt", "n": 3}


def test_tied_weights_save(tmp_path):
    """Tensors sharing storage (tied weights, views) are saved as independent copies."""
    w = torch.randn(5, 3)
    p = tmp_path / "tied.safetensors"
    ck.save_model(p, {"emb.weight": w, "out.weight": w, "row": w[1]}, {})
    loaded, _ = ck.load_model(p)
    assert torch.equal(loaded["emb.weight"], w) and torch.equal(loaded["out.weight"], w)
    assert torch.equal(loaded["row"], w[1])


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_write_leaves_target_untouched(tmp_path, monkeypatch, failure):
    """A failure mid-write keeps the old file byte-identical and leaves no temp file behind."""
    p = tmp_path / "m.safetensors"
    ck.save_model(p, {"a": torch.ones(3)}, {"v": 1})
    before = p.read_bytes()

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise failure

    monkeypatch.setattr(ck, "save_file", half_write)
    with pytest.raises(type(failure)):
        ck.save_model(p, {"a": torch.zeros(3)}, {"v": 2})
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_enospc_becomes_user_error(tmp_path, monkeypatch):
    """ENOSPC while writing becomes a one-line UserError; the target is not overwritten."""
    p = tmp_path / "m.safetensors"
    p.write_bytes(b"old")

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"par")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(UserError) as info:
        ck.save_model(p, {"a": torch.ones(3)}, {})
    assert str(info.value) == f"cannot write {p}: No space left on device (nothing was overwritten)"
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.safetensors"]


def test_atomic_write_enospc_on_fsync(tmp_path, monkeypatch):
    """atomic_write writes normally, and an fsync ENOSPC becomes a UserError."""
    p = tmp_path / "out.bin"
    atomic.atomic_write(p, b"first")
    assert p.read_bytes() == b"first"

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(UserError, match="No space left on device"):
        atomic.atomic_write(p, b"second")
    assert p.read_bytes() == b"first" and os.listdir(tmp_path) == ["out.bin"]


def test_atomic_path_temp_name(tmp_path):
    """atomic_path yields a hidden temp file in the target's directory."""
    with atomic.atomic_path(tmp_path / "x.json") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(
            f".x.json.tmp-{os.getpid()}-{atomic.pid_space()}-")
        tmp.write_text("{}")
    assert (tmp_path / "x.json").read_text() == "{}"


def test_leftovers_of_another_host_or_container_are_never_judged_dead(tmp_path):
    """A folder shared between machines or containers (each with its own pids) holds temp files
    of live writers elsewhere, named by pids that do not exist here: only a leftover of this
    pid space whose pid is gone is dead (before: judged by the pid alone, so a worker's temp
    file on a shared volume was deleted under it); the older `PID-RANDOM` names stay judged."""
    gone = 2 ** 22 + 12345  # above pid_max's usual 4 194 304: no such process
    other = "0" * 8 if atomic.pid_space() != "0" * 8 else "1" * 8
    names = {"mine": f".r.json.tmp-{gone}-{atomic.pid_space()}-{'a' * 16}",
             "other": f".r.json.tmp-{gone}-{other}-{'b' * 16}",
             "older": f".r.json.tmp-{gone}-{'c' * 16}",
             "alive": f".r.json.tmp-{os.getpid()}-{atomic.pid_space()}-{'d' * 16}",
             "probe": f"{atomic.PROBE}{gone}-{other}-{'e' * 16}"}
    for name in names.values():
        (tmp_path / name).write_text("x")
    (tmp_path / f".staging-{gone}-{other}-{'f' * 16}").mkdir()
    (tmp_path / f".staging-{gone}-{atomic.pid_space()}-{'f' * 16}").mkdir()
    dead = sorted(p.name for p in atomic.dead_leftovers(tmp_path))
    assert dead == sorted([names["mine"], names["older"],
                           f".staging-{gone}-{atomic.pid_space()}-{'f' * 16}"])
    atomic.atomic_write(tmp_path / "r.json", "{}")  # tidies its own target's dead ones only
    assert sorted(p.name for p in tmp_path.glob(".r.json.tmp-*")) == sorted(
        [names["other"], names["alive"]])


def test_missing_file_and_directory(tmp_path):
    """A missing path and a directory give clear UserErrors."""
    with pytest.raises(UserError, match="checkpoint not found: .*nope.safetensors"):
        ck.load_model(tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match="is a directory") as info:
        ck.load_model(tmp_path)
    _assert_clean(info.value, tmp_path)


def _valid_bytes() -> bytes:
    return st_save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                    "b": torch.tensor([1, 2], dtype=torch.int64)}, metadata={"k": "1"})


MALFORMED = {
    "empty": (b"", "is empty"),
    "short": (b"\x05\x00\x00", "only 3 bytes"),
    "truncated": (_valid_bytes()[:-5], "truncated"),
    "huge_header_length": (struct.pack("<Q", 2**60) + b"{}", "header length field"),
    "bad_json": (struct.pack("<Q", 5) + b"{nope", "not valid JSON"),
    "not_object": (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    "offsets_out_of_range": (_raw({"a": {"dtype": "F32", "shape": [2],
                                         "data_offsets": [0, 800]}}, b"\0" * 8), "truncated"),
    "overlap": (_raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
                "overlap"),
    "shape_vs_bytes": (_raw({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                            b"\0" * 8), "offsets span 8 bytes"),
    "bad_dtype": (_raw({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
                  "unsupported dtype"),
    "trailing": (_valid_bytes() + b"xx", "stray bytes"),
    "bit_flipped_header": (_valid_bytes().replace(b'"shape":[2,3]', b'"shape":[2,2]'),
                           "offsets span"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_give_user_error(tmp_path, case):
    """Each kind of damaged file gives a one-line UserError naming the file."""
    data, expected = MALFORMED[case]
    p = tmp_path / f"{case}.safetensors"
    p.write_bytes(data)
    with pytest.raises(UserError, match=expected) as info:
        ck.load_model(p)
    _assert_clean(info.value, p)


def _forbid_pickle(monkeypatch):
    """Make every unpickling entry point raise, so a call to one fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle / torch.load must never be called")

    for owner, attr in [(pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(owner, attr, forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)


@pytest.mark.parametrize("name,zipped", [("x.pt", True), ("x.pth", False),
                                          ("disguised.safetensors", True),
                                          ("legacy.safetensors", False)])
def test_pickle_files_refused(tmp_path, monkeypatch, name, zipped):
    """torch.save files (zip or legacy pickle, any extension) are refused with the hint."""
    p = tmp_path / name
    torch.save(Net().state_dict(), p, _use_new_zipfile_serialization=zipped)
    _forbid_pickle(monkeypatch)
    with pytest.raises(UserError) as info:
        ck.load_model(p)
    message = str(info.value)
    assert message.startswith(f"{p} is a pickle/torch file; goodfit loads only safetensors.")
    assert message.endswith(f"goodfit convert {p} model.safetensors")  # the name: an argument
    _assert_clean(info.value, p)


def test_valid_load_never_uses_pickle(tmp_path, monkeypatch):
    """Loading a valid checkpoint and a training state goes through no pickle entry point."""
    _forbid_pickle(monkeypatch)
    p = tmp_path / "m.safetensors"
    ck.save_model(p, Net().state_dict(), {"a": 1})
    ck.load_model(p)
    ck.save_state(tmp_path / "s.safetensors", {"x": torch.ones(1)})
    assert torch.equal(ck.load_state(tmp_path / "s.safetensors")["x"], torch.ones(1))


def test_check_finite_reports_tensor_and_count():
    """check_finite names the tensor with NaN/Inf and how many values are bad."""
    ck.check_finite({"a": torch.ones(3), "i": torch.tensor([1, 2])}, "m.safetensors")
    bad = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")]).to(torch.bfloat16)
    with pytest.raises(UserError, match=r"m.safetensors: tensor 'b' has 3 NaN/Inf values out of 4"):
        ck.check_finite({"a": torch.ones(3), "b": bad}, "m.safetensors")


def test_load_into_model_exact(tmp_path):
    """All parameters and buffers (BatchNorm stats) are loaded exactly; no messages."""
    src = Net()
    src.bn.running_mean.normal_()
    src.bn.num_batches_tracked.fill_(5)
    p = tmp_path / "m.safetensors"
    ck.save_model(p, src.state_dict(), {})
    dst = Net()
    tensors, _ = ck.load_model(p)
    assert ck.load_into_model(dst, tensors, p, ["fc."]) == []
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_load_into_model_casts_dtype():
    """Checkpoint tensors are cast to the model's dtype."""
    src = {k: v.double() if v.is_floating_point() else v for k, v in Net().state_dict().items()}
    dst = Net()
    ck.load_into_model(dst, src, "m.safetensors", [])
    assert dst.body.weight.dtype == torch.float32
    assert torch.equal(dst.body.weight, src["body.weight"].float())


def test_load_into_model_missing_tensor():
    """A non-head tensor missing from the file is a UserError naming file and tensor."""
    tensors = Net().state_dict()
    del tensors["body.weight"], tensors["bn.running_var"]
    with pytest.raises(UserError) as info:
        ck.load_into_model(Net(), tensors, "m.safetensors", ["fc."])
    assert str(info.value) == ("m.safetensors: 2 tensors of the recipe's model are missing from "
                               "the checkpoint: body.weight, bn.running_var")


def test_load_into_model_misshaped_tensor():
    """A non-head tensor with another shape is a UserError giving both shapes."""
    with pytest.raises(UserError) as info:
        ck.load_into_model(Net(width=16), Net(width=8).state_dict(), "m.safetensors", ["fc."])
    assert str(info.value) == ("m.safetensors: tensor 'body.weight' has shape (8, 4) in the "
                               "checkpoint but (16, 4) in the recipe's model")


def test_load_into_model_unexpected_tensors():
    """Tensors in the file but not in the model are listed, at most five, then a count."""
    tensors = dict(Net().state_dict())
    tensors.update({f"extra.{i}": torch.zeros(1) for i in range(7)})
    with pytest.raises(UserError) as info:
        ck.load_into_model(Net(), tensors, "m.safetensors", ["fc."])
    assert str(info.value) == ("m.safetensors: 7 tensors in the checkpoint are not in the recipe's "
                               "model: extra.0, extra.1, extra.2, extra.3, extra.4 and 2 more; "
                               "check the recipe's model")


def test_load_into_model_head_reinitialised():
    """A head of another size keeps its fresh values, the rest loads, and messages say so."""
    torch.manual_seed(0)
    src, dst = Net(classes=10), Net(classes=100)
    fresh_w, fresh_b = dst.fc.weight.detach().clone(), dst.fc.bias.detach().clone()
    messages = [str(c) for c in ck.load_into_model(dst, src.state_dict(), "m.safetensors", ["fc."])]
    assert messages == ["head tensor fc.weight re-initialised: checkpoint (10, 8) vs model (100, 8)",
                        "head tensor fc.bias re-initialised: checkpoint (10,) vs model (100,)"]
    assert torch.equal(dst.fc.weight, fresh_w) and torch.equal(dst.fc.bias, fresh_b)
    assert torch.equal(dst.body.weight, src.body.weight)


def test_state_round_trip_exact(tmp_path):
    """save_state/load_state keep key types, tuples, dtypes, 0-dim tensors, floats and bits."""
    state = {
        "step": 12, 3: "int key", "f": [0.1, -0.0, 1e-310, float("inf"), -float("inf")],
        "pair": (1, (2.5, None)), "flags": [True, False],
        "t": {"bool": torch.tensor([True, False]), "u8": torch.randint(0, 255, (4,), dtype=torch.uint8),
              "i64": torch.tensor(2**62), "bf16": torch.randn(3).bfloat16(), "zero_dim": torch.tensor(1.5)},
        "rng": {"torch": torch.get_rng_state()}, "tricky": {"tensor": "t0", "dict": []},
    }
    p = tmp_path / "s.safetensors"
    ck.save_state(p, state)
    got = ck.load_state(p)
    assert got["step"] == 12 and got[3] == "int key" and got["tricky"] == {"tensor": "t0", "dict": []}
    assert got["pair"] == (1, (2.5, None)) and isinstance(got["pair"][1], tuple)
    assert [struct.pack("<d", x) for x in got["f"]] == [struct.pack("<d", x) for x in state["f"]]
    for k, t in state["t"].items():
        assert got["t"][k].dtype == t.dtype and got["t"][k].shape == t.shape and torch.equal(got["t"][k], t)
    assert got["t"]["zero_dim"].dim() == 0
    assert torch.equal(got["rng"]["torch"], state["rng"]["torch"])
    ck.save_state(p, {"x": float("nan")})
    assert ck.load_state(p)["x"] != ck.load_state(p)["x"]


def test_load_state_rejects_model_file(tmp_path):
    """load_state on a model checkpoint says it is not a training-state file."""
    p = tmp_path / "m.safetensors"
    ck.save_model(p, {"a": torch.ones(1)}, {})
    with pytest.raises(UserError, match="not a goodfit training-state file") as info:
        ck.load_state(p)
    _assert_clean(info.value, p)


def _train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_adamw_resume_is_bit_identical(tmp_path):
    """AdamW state saved after 3 steps resumes in a fresh optimizer bit-identically."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    _train(model, opt, 3, seed=1)
    p = tmp_path / "state.safetensors"
    ck.save_state(p, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3})

    loaded = ck.load_state(p)
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.95)
    assert sorted(loaded["optimizer"]["state"]) == sorted(opt.state_dict()["state"])
    resumed = Net()
    resumed.load_state_dict(loaded["model"])
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    resumed_opt.load_state_dict(loaded["optimizer"])

    _train(model, opt, 3, seed=2)
    _train(resumed, resumed_opt, 3, seed=2)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(opt.state_dict()["state"].values(), resumed_opt.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_load_model_only_user_errors(tmp_path, data):
    """Random bytes and mutated valid files either load or raise UserError, nothing else."""
    valid = _valid_bytes()
    kind = data.draw(st.sampled_from(["random", "flip", "truncate", "splice", "header"]))
    if kind == "random":
        blob = data.draw(st.binary(max_size=200))
    elif kind == "flip":
        blob = bytearray(valid)
        for i in data.draw(st.lists(st.integers(0, len(valid) - 1), min_size=1, max_size=4)):
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
        blob = bytes(blob)
    elif kind == "truncate":
        blob = valid[: data.draw(st.integers(0, len(valid)))]
    elif kind == "splice":
        i = data.draw(st.integers(0, len(valid)))
        blob = valid[:i] + data.draw(st.binary(min_size=1, max_size=8)) + valid[i:]
    else:  # a structurally plausible header with random values
        header = data.draw(st.dictionaries(st.text(max_size=3), st.fixed_dictionaries({
            "dtype": st.sampled_from(["F32", "BF16", "BOOL", "I64", "X"]),
            "shape": st.lists(st.integers(-1, 4), max_size=3),
            "data_offsets": st.lists(st.integers(-1, 40), min_size=2, max_size=2)}), max_size=3))
        blob = _raw(header, data.draw(st.binary(max_size=40)))
    p = tmp_path / "fuzz.safetensors"
    p.write_bytes(blob)
    try:
        tensors, _ = ck.load_model(p)
    except UserError as e:
        _assert_clean(e, p)
    else:
        assert all(isinstance(t, torch.Tensor) for t in tensors.values())


def test_state_writer_writes_the_state_as_it_was_when_saved_and_prunes_around_it(tmp_path):
    """The training goes on while a state is written: the file holds the values at `save`
    (the tensors were copied), and `prune` (the removal of older states) runs before the
    write and once it is on disk, so no kill finds more than one state beyond those kept."""
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    state = {"model": {"w": w}, "optimizer": {"state": {0: {"step": torch.tensor(4.0)}}},
             "loop": {"batch": 3}}
    seen: list[bool] = []
    p = tmp_path / "state-00000003.safetensors"
    writer = StateWriter()
    writer.save(p, state, prune=lambda: seen.append(p.exists()))
    w.mul_(-1.0)  # the next optimizer step, before the write is done
    state["optimizer"]["state"][0]["step"] += 1
    writer.close()
    back = ck.load_state(p)
    assert torch.equal(back["model"]["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert back["optimizer"]["state"][0]["step"].item() == 4.0 and back["loop"] == {"batch": 3}
    assert seen == [False, True]
    assert ck.load_state(p).keys() == {"model", "optimizer", "loop"}


def test_state_writer_raises_a_failed_write_at_close_unless_the_training_failed(tmp_path):
    writer = StateWriter()
    writer.save(tmp_path / "missing" / "state.safetensors", {"x": torch.ones(2)})
    with pytest.raises(UserError, match="missing"):  # the one line naming the file, as before
        writer.close()
    quiet = StateWriter()
    quiet.save(tmp_path / "missing" / "state.safetensors", {"x": torch.ones(2)})
    quiet.close(quiet=True)  # the training's own error is the one the user sees
    again = StateWriter()  # the next save raises the previous write's error
    again.save(tmp_path / "missing" / "a.safetensors", {"x": torch.ones(2)})
    with pytest.raises(UserError, match="a.safetensors"):
        again.save(tmp_path / "b.safetensors", {"x": torch.ones(2)})
    again.close(quiet=True)
    assert not (tmp_path / "b.safetensors").exists()


def test_state_writer_reuses_its_cpu_copies_and_each_file_keeps_its_own_state(tmp_path):
    """A CPU state's tensors are copied into the copies kept from the previous state (no fresh
    memory per state): the same memory for the same key, shape and dtype, new memory when the
    shape changes; and every file holds the values of its own state, not the next one's."""
    w = torch.zeros(3, 4)
    writer = StateWriter()
    ptrs: list[list[torch.Tensor]] = []
    for i in range(3):
        w.fill_(float(i))
        writer.save(tmp_path / f"s{i}.safetensors", {"w": w, "step": torch.tensor(i)})
        ptrs.append([t for t in writer._staging._cpu.values() if t.shape == (3, 4)])
    writer.wait()
    grown = torch.zeros(5, 4)
    writer.save(tmp_path / "s3.safetensors", {"w": grown, "step": torch.tensor(3)})
    writer.close()
    for i in range(3):
        back = ck.load_state(tmp_path / f"s{i}.safetensors")
        assert torch.equal(back["w"], torch.full((3, 4), float(i))) and back["step"].item() == i
    assert ck.load_state(tmp_path / "s3.safetensors")["w"].shape == (5, 4)
    assert len(ptrs[0]) == 1 and ptrs[0][0] is ptrs[1][0] is ptrs[2][0]  # the one kept copy


def test_the_same_tensors_and_metadata_make_the_same_bytes(tmp_path):
    """Two writes of the same model and metadata are byte-identical, so a run repeated with the
    same seed records the same sha256 (before: safetensors wrote the metadata in its hash map's
    order, another at each write); the metadata reads back unchanged, keys sorted on disk."""

    meta = {k: {"v": i, "s": "é\n\x01"} for i, k in enumerate("hgfedcbaij")}
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    digests = set()
    for i in range(6):
        path = tmp_path / f"m{i}.safetensors"
        ck.save_model(path, tensors, meta)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    loaded, read = ck.load_model(tmp_path / "m0.safetensors")
    assert read == {**meta, "format": ck.FORMAT}
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"])
    n = int.from_bytes((tmp_path / "m0.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "m0.safetensors").read_bytes()[8:8 + n])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])


def test_one_missing_or_unexpected_tensor_is_said_in_the_singular():
    """'1 tensors ... are missing' read as a typo in the one line a user reads; now '1 tensor
    ... is missing' and '1 tensor in the checkpoint is not in the recipe's model'."""
    tensors = dict(Net().state_dict())
    del tensors["body.weight"]
    with pytest.raises(UserError) as info:
        ck.load_into_model(Net(), tensors, "m.safetensors", ["fc."])
    assert str(info.value).startswith("m.safetensors: 1 tensor of the recipe's model is missing "
                                      "from the checkpoint: body.weight")
    tensors = {**Net().state_dict(), "extra.w": torch.zeros(1)}
    with pytest.raises(UserError) as info:
        ck.load_into_model(Net(), tensors, "m.safetensors", ["fc."])
    assert str(info.value) == ("m.safetensors: 1 tensor in the checkpoint is not in the recipe's "
                               "model: extra.w; check the recipe's model")


def test_in_place_out_with_only_dead_leftovers_is_taken_as_open_run_takes_it(tmp_path):
    """`wise` in place (a search's trial folder, rejudge) opens its folder with prepare_out: one
    holding only what a killed process left mid-write (a temp file, a staging folder) is not
    "not empty", as open_run judges it, and those leftovers are removed (before: refused);
    a live writer's temp file, or any other file, still makes it not empty."""
    from goodfit_cli.io.rundir import prepare_out

    gone = 2 ** 22 + 12345  # above pid_max's usual 4 194 304: no such process
    out = tmp_path / "wise"
    out.mkdir()
    temp = out / f".metrics.json.tmp-{gone}-{atomic.pid_space()}-{'a' * 16}"
    temp.write_text("x")
    (out / f".staging-{gone}-{atomic.pid_space()}-{'b' * 16}").mkdir()
    prepare_out(out, overwrite=False, resume=False, resume_hint="")
    assert sorted(p.name for p in out.iterdir()) == []
    live = out / f".metrics.json.tmp-{os.getpid()}-{atomic.pid_space()}-{'c' * 16}"
    live.write_text("x")
    with pytest.raises(UserError, match="already exists and is not empty"):
        prepare_out(out, overwrite=False, resume=False, resume_hint="")
    assert live.exists()
