"""Motion prediction: format, model masks, loss, metrics by hand, generator physics, shards, arms."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import runs as runner
import torch
import yaml
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.workflows.recipes import shipped_dir

RECIPES_DIR = shipped_dir()
from goodfit_cli.core.errors import UserError
from goodfit_cli.data import build_data
from goodfit_cli.data.motion.format import (
    FUTURE,
    INDEX,
    MotionLayout,
    ShardWriter,
    read_shards,
    shard_files,
)
from goodfit_cli.data.motion.scenes import DT, make_scene
from goodfit_cli.data.motion.synth import (
    CAR_A_LAT,
    CAR_ACCEL,
    CAR_BRAKE,
    CAR_V_MAX,
    PED_V_MAX,
    generate,
    simulate,
)
from goodfit_cli.models import build_model
from goodfit_cli.objectives.motion import Motion, motion_metrics, per_sample_loss
from goodfit_cli.recipe import load_recipe

SIZES = {"agents": 4, "polylines": 8, "points": 4, "lights": 2}
TINY_MODEL = {**SIZES, "token_dim": 16, "width": 32, "heads": 2, "ffn": 64, "enc_layers": 1,
              "dec_layers": 1, "head_hidden": 32, "dropout": 0.0}
TINY = ([f"{sec}.args.{k}={v}" for sec in ("model", "data") for k, v in SIZES.items()]
        + [f"model.args.{k}={v}" for k, v in TINY_MODEL.items() if k not in SIZES]
        + ["data.args.synthetic.scenes=32", "data.args.synthetic.test_scenes=16",
           "pretrain.steps=16", "pretrain.batch_size=16", "finetune.steps=8",
           "finetune.batch_size=16", "eval.every=4", "eval.batch_size=64", "device=cpu"])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the test machines are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tasks():
    args = {"old": "car", "new": "pedestrian", "synthetic": {"scenes": 32, "test_scenes": 8, "seed": 0}}
    return build_data("motion", {**args, **SIZES}, seed=0, data_dir=None)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("motion_transformer", TINY_MODEL).eval()


def test_shapes_and_packing(tasks):
    """Packed rows unpack to the documented field shapes; outputs, predictions and metrics line up."""
    lay = MotionLayout(**SIZES)
    x, y = tasks["old"].train.x, tasks["old"].train.y
    assert x.shape == (32, lay.size) and y.shape == (32, FUTURE, 3) and x.dtype == torch.float32
    assert MotionLayout().size == 7384  # the default sizes, as docs/motion-data.md states
    fields = lay.unpack(x)
    assert fields["agents_history"].shape == (32, 4, 11, 6) and fields["map_points"].shape == (32, 8, 4, 8)
    assert fields["lights_state"].shape == (32, 2, 11, 5)
    names = list(lay.input_fields())
    offset = sum(int(np.prod(lay.input_fields()[k])) for k in names[:names.index("map_points")])
    assert fields["map_points"].data_ptr() == x[:, offset:].data_ptr()  # a view into the row
    assert torch.all(fields["target_valid"] == 1) and torch.all(fields["target_type"][:, 0] == 1)
    assert torch.allclose(fields["target_history"][:, -1, :2], torch.zeros(32, 2))  # origin at t=0
    assert torch.allclose(fields["target_history"][:, -1, 4], torch.ones(32))  # heading along +x
    model = tiny_model()
    out = model(x[:5])
    assert out.shape == (5, 6, FUTURE * 2 + 1)
    obj = Motion(tasks["old"], ["ade@8s"])
    assert obj.predictions(out).shape == (5, FUTURE, 3)
    per = obj.per_sample(out, y[:5])
    assert set(per) == {"ade@3s", "fde@3s", "ade@8s", "fde@8s", "miss@8s", "mse", "loss"}
    assert all(v.shape == (5,) for v in per.values())
    with pytest.raises(UserError, match="agents/polylines/points/lights must match"):
        model(torch.zeros(2, lay.size + 1))


def test_masked_values_do_not_change_the_output(tasks):
    """Junk under a False mask (an agent, a map point, a light) leaves the output bit-identical."""
    lay = MotionLayout(**SIZES)
    model = tiny_model()
    x = tasks["old"].train.x[:6].clone()
    f = lay.unpack(x)
    f["agents_valid"][:, 1] = 0  # agent slot 1 missing, slot 0 partly seen
    f["agents_valid"][:, 0, :3] = 0
    f["map_valid"][:, 2, 1:] = 0  # points 1.. of polyline 2 missing
    f["lights_valid"][:, 1] = 0
    with torch.no_grad():
        ref = model(x)
        junk = x.clone()
        g = lay.unpack(junk)
        g["agents_history"][:, 1] = torch.randn_like(g["agents_history"][:, 1]) * 50
        g["agents_type"][:, 1] = 5.0  # a token with no valid step is left out of attention
        g["agents_history"][:, 0, :3] = 99.0
        g["map_points"][:, 2, 1:] = -7.0
        g["lights_state"][:, 1] = 3.0
        assert torch.equal(model(junk), ref)
        seen = x.clone()
        lay.unpack(seen)["agents_valid"][:, 0] = 1  # un-masking changes the prediction
        assert not torch.equal(model(seen), ref)


def test_loss_decreases_on_a_tiny_model(tasks):
    """Thirty AdamW steps on one batch of 32 car scenes cut the motion loss by more than half."""
    model = tiny_model().train()
    obj = Motion(tasks["old"], ["ade@8s"])
    x, y = tasks["old"].train.x, tasks["old"].train.y
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = obj.loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_metrics_on_hand_made_trajectories():
    """minADE / minFDE / miss / mse / loss on two hand-made samples, computed by hand."""
    t = torch.arange(1, FUTURE + 1, dtype=torch.float64)
    truth = torch.stack([t, torch.zeros_like(t)], -1)  # 1 m per step along x
    y = torch.cat([truth, torch.ones(FUTURE, 1, dtype=torch.float64)], -1).repeat(2, 1, 1)
    y[1, 50:, 2] = 0  # sample 2: steps 51..80 unobserved
    y[1, 50:, :2] = 0

    def mode(lateral: float, stretch: float) -> torch.Tensor:
        return torch.stack([stretch * t, torch.full_like(t, lateral)], -1).reshape(-1)

    a1, b = mode(1.0, 1.0), mode(0.0, 1.1)  # A: 1 m to the side; B: 10 % too fast (0.1·t m)
    a2 = mode(3.0, 1.0)
    out = torch.stack([torch.stack([torch.cat([a1, torch.tensor([2.0])]), torch.cat([b, torch.tensor([0.0])])]),
                       torch.stack([torch.cat([a2, torch.tensor([0.0])]), torch.cat([b, torch.tensor([2.0])])])])
    m = motion_metrics(out, y)
    # sample 1: A is 1 m off everywhere; B is off by 0.1·t: ADE@3s 1.55, @8s 4.05; FDE 3, 8
    # sample 2: A is 3 m off; B over the 50 observed steps: ADE@8s 2.55, FDE@8s (step 50) 5
    assert m["ade@3s"].tolist() == pytest.approx([1.0, 1.55])
    assert m["fde@3s"].tolist() == pytest.approx([1.0, 3.0])
    assert m["ade@8s"].tolist() == pytest.approx([1.0, 2.55])
    assert m["fde@8s"].tolist() == pytest.approx([1.0, 3.0])
    assert m["miss@8s"].tolist() == [0.0, 1.0]
    # most likely mode: A for sample 1 (dy = 1: mse 1/2), B for sample 2 (mean of (0.1 t)²/2, t ≤ 50)
    assert m["mse"].tolist() == pytest.approx([0.5, 0.005 * sum(k * k for k in range(1, 51)) / 50])
    # loss of sample 1: smooth-L1 of dy = 1 is 0.5 per step, / 2 coordinates; CE of logits [2, 0]
    loss = per_sample_loss(out.float(), y.float())
    assert loss[0].item() == pytest.approx(0.25 + math.log(1 + math.exp(-2)), rel=1e-5)
    pred = Motion(None, []).predictions(out)
    assert torch.equal(pred[0, :, :2], a1.reshape(FUTURE, 2)) and torch.all(pred[..., 2] == 1)


def test_a_sample_without_steps_in_a_window_is_left_out_of_that_window():
    """A sample with no valid step up to 3 s has nothing to measure at 3 s: its ade/fde@3s are
    NaN and the 3 s means are over the other samples (it once scored 0 m and pulled the mean
    down); the 8 s metrics still count it. The paired bootstrap leaves it out alike, the run
    folder's check accepts that mean, and a window no sample reaches reads NaN, never 0."""
    from goodfit_cli.core import metrics as M
    from goodfit_cli.io.rundir import check_stored_metrics
    from goodfit_cli.report.build import paired_cis
    t = torch.arange(1, FUTURE + 1, dtype=torch.float64)
    truth = torch.stack([t, torch.zeros_like(t)], -1)
    y = torch.cat([truth, torch.ones(FUTURE, 1, dtype=torch.float64)], -1).repeat(3, 1, 1)
    y[2, :30, 2] = 0  # sample 3: first seen after 3 s
    y[2, :30, :2] = 0
    lateral = torch.tensor([1.0, 3.0, 5.0])  # every step of sample i is lateral[i] m off

    def outputs(shift: float) -> torch.Tensor:
        traj = truth[None].repeat(3, 1, 1).clone()
        traj[..., 1] = (lateral + shift)[:, None]
        return torch.cat([traj.reshape(3, 1, -1), torch.zeros(3, 1, 1)], -1)  # one mode

    obj = Motion(None, ["ade@3s", "fde@3s", "ade@8s", "miss@8s"])
    per = obj.per_sample(outputs(0.0), y)
    assert math.isnan(per["ade@3s"][2]) and math.isnan(per["fde@3s"][2])
    assert per["ade@8s"].tolist() == pytest.approx([1.0, 3.0, 5.0])
    values, _ = obj.measure(outputs(0.0), y)
    assert values["ade@3s"] == pytest.approx(2.0) and values["fde@3s"] == pytest.approx(2.0)
    assert values["ade@8s"] == pytest.approx(3.0) and values["miss@8s"] == pytest.approx(2 / 3)
    # base vs arm 1 m further off everywhere: Δ ade@3s is 1 m exactly, CI [1, 1], not NaN
    b = {"per_sample": per}
    a = {"per_sample": obj.per_sample(outputs(1.0), y)}
    cis, _ = paired_cis(b, a, "regression", {"n_boot": 50, "seed": 0})
    assert cis["ade@3s"] == pytest.approx((1.0, 1.0)) and cis["ade@8s"] == pytest.approx((1.0, 1.0))
    check_stored_metrics(tmp := "run.json", {"old": values}, {"old": b})  # matches: no error
    with pytest.raises(UserError, match="ade@3s is recorded as 1.0"):
        check_stored_metrics(tmp, {"old": {**values, "ade@3s": 1.0}}, {"old": b})
    # nobody reaches 3 s: NaN (stored as null, fails every gate), never 0 m
    y[:, :30, 2] = 0
    values, per = obj.measure(outputs(0.0), y)
    assert math.isnan(values["ade@3s"]) and math.isnan(values["fde@3s"])
    assert M.delta_ci_regression(per["ade@3s"], per["ade@3s"], partial=True)["ci"] is None
    # a measured sample whose outputs are not finite scores +inf (a miss), never left out
    bad = outputs(0.0)
    bad[0, 0, :-1] = torch.nan  # every position
    per = obj.per_sample(bad, y)
    assert per["ade@8s"][0] == math.inf and per["miss@8s"][0] == 1.0


def test_generator_is_deterministic_per_seed():
    """Same seed → identical scenarios, whatever the batch; another seed → other scenarios."""
    a = generate("car", 6, seed=3, layout=MotionLayout(**SIZES))
    b = generate("car", 6, seed=3, layout=MotionLayout(**SIZES), batch=4)
    tail = generate("car", 2, seed=3, layout=MotionLayout(**SIZES), start=4)
    c = generate("car", 6, seed=4, layout=MotionLayout(**SIZES))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert all(np.array_equal(a[k][4:], tail[k]) for k in a)
    assert not np.array_equal(a["target_future"], c["target_future"])
    assert not np.array_equal(a["map_points"], generate("pedestrian", 6, seed=3, layout=MotionLayout(**SIZES))["map_points"])


def test_generator_physics():
    """Speed, acceleration and lateral limits per agent type; nobody crosses a stop line at red."""
    scenes = [make_scene(np.random.default_rng(np.random.SeedSequence([11, i]))) for i in range(40)]
    sim = simulate(scenes)
    car, ped = sim.kind == 0, sim.kind == 1
    v = np.linalg.norm(np.diff(sim.pos, axis=2), axis=-1) / DT  # (S, n, T-1) from positions
    acc = np.diff(v, axis=2) / DT
    assert v[car].max() <= CAR_V_MAX + 1e-6 and v[ped].max() <= PED_V_MAX + 1e-6
    assert v[ped].mean() < 0.3 * v[car].mean() and v[ped].max() > 1.0
    assert acc[car].max() <= CAR_ACCEL + 0.1 and acc[car].min() >= -CAR_BRAKE - 0.2
    assert np.abs(acc[ped]).max() <= 2.0
    # lateral acceleration v²κ, κ from the circle through positions 0.5 s apart
    p0, p1, p2 = sim.pos[:, :, :-10], sim.pos[:, :, 5:-5], sim.pos[:, :, 10:]
    a, b, c = (np.linalg.norm(u, axis=-1) for u in (p1 - p0, p2 - p1, p2 - p0))
    cross = np.abs((p1 - p0)[..., 0] * (p2 - p0)[..., 1] - (p1 - p0)[..., 1] * (p2 - p0)[..., 0])
    moving = car[..., None] & (a > 0.5) & (b > 0.5)
    lat = sim.speed[:, :, 5:-5] ** 2 * 2 * cross / np.maximum(a * b * c, 1e-9)
    assert lat[moving].max() <= CAR_A_LAT * 1.2
    crossings = waits = 0
    for i, j in zip(*np.nonzero(car & np.isfinite(sim.stop_s))):
        state = sim.light_state[i, sim.light[i, j]]
        s, stop = sim.s[i, j], sim.stop_s[i, j]
        cross_now = (s[:-1] < stop) & (s[1:] >= stop)
        assert not np.any(cross_now & (state[:-1] == 0)), f"scene {i} car {j} ran a red light"
        crossings += cross_now.sum()
        waits += np.any((sim.speed[i, j] < 0.1) & (state == 0) & (s < stop))
    assert crossings > 20 and waits > 5  # cars do drive through, and do wait at red


def test_shard_round_trip_through_the_cli(tmp_path):
    """`goodfit data motion-synth` shards read back by the dataset equal in-memory generation."""
    cli = CliRunner()
    out = tmp_path / "ped"
    sizes = ["--max-agents", "4", "--polylines", "8", "--points", "4", "--lights", "2"]
    args = ["data", "motion-synth", "--out", str(out), "--agents", "pedestrian", "--scenes", "12",
            "--test-scenes", "4", "--seed", "5", "--shard-size", "5", *sizes]
    res = cli.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert [p.name for p in sorted((out / "train").iterdir())] == [
        "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors",
        "shards.json"]  # the index, written last
    _, meta = ckpt.load_model(out / "train" / "shard-00001.safetensors")
    assert meta["motion_format"] == "goodfit-motion/1" and meta["first_scene"] == 5 and meta["scenes"] == 5
    assert len(read_shards(out / "test")["target_future"]) == 4
    from_dir = build_data("motion", {"old": "ped", "new": "ped", **SIZES}, seed=0, data_dir=str(tmp_path))
    synth = build_data("motion", {"old": "pedestrian", "new": "car", **SIZES,
                                  "synthetic": {"scenes": 12, "test_scenes": 4, "seed": 5}},
                       seed=0, data_dir=None)
    for split in ("train", "test"):
        a, b = getattr(from_dir["old"], split), getattr(synth["old"], split)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    res = cli.invoke(app, args)  # the shards are there: refused without --overwrite
    assert res.exit_code == 2 and "--overwrite" in res.output
    with pytest.raises(UserError, match="directory not found"):
        build_data("motion", {"old": "nope", "new": "ped", **SIZES}, seed=0, data_dir=str(tmp_path))


def test_non_finite_values_one_line_and_masked_ones_zeroed(tmp_path):
    """A NaN or Inf where a value counts is refused, by the writer and the reader, in one line
    naming the file, the field and the scene; one under a False mask is zeroed as documented
    (not kept by a product with the mask), in the inputs and in the target."""
    layout = MotionLayout(**SIZES)
    clean = generate("pedestrian", 6, 0, "train", layout)
    bad = {k: v.copy() for k, v in clean.items()}
    bad["target_future"][4, 7, 1] = np.nan  # target_future_valid is True there
    with pytest.raises(UserError, match=r"field 'target_future' has a NaN or Inf in 1 scene\(s\), "
                                        r"the first at scene 4 of the split \(for "
                                        r"shard-00000.safetensors\) "
                                        r"\(under a true 'target_future_valid'\)"):
        ShardWriter(tmp_path / "w", "train").add_batch(bad)
    path = tmp_path / "r" / "train" / "shard-00000.safetensors"
    path.parent.mkdir(parents=True)
    meta = {"motion_format": "goodfit-motion/1", "split": "train", "first_scene": 0, "scenes": 6}
    ckpt.save_model(path, {k: torch.from_numpy(v) for k, v in bad.items()}, meta)
    mark_complete(path.parent)
    with pytest.raises(UserError, match=rf"^{path}: field 'target_future' has a NaN or Inf"):
        read_shards(path.parent)
    hidden = {k: v.copy() for k, v in clean.items()}
    hidden["agents_valid"][1, 2] = False
    hidden["agents_history"][1, 2] = np.inf
    hidden["target_future_valid"][2, 5] = False
    hidden["target_future"][2, 5] = np.nan
    with ShardWriter(tmp_path / "h", "train") as w:
        w.add_batch(hidden)
    f = read_shards(tmp_path / "h" / "train")
    x, y = layout.pack(f), layout.target(f)
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())
    assert float(layout.unpack(x)["agents_history"][1, 2].abs().sum()) == 0
    assert y[2, 5].tolist() == [0.0, 0.0, 0.0]
    # finite values under a False mask come out bit for bit as value × mask (−0.0 for a negative
    # one), so the data hash of a run made before NaNs were zeroed still matches
    signed = {k: v.copy() for k, v in clean.items()}
    signed["agents_valid"][1, 2] = False
    signed["agents_history"][1, 2] = -3.0
    got = layout.unpack(layout.pack({k: torch.from_numpy(v) for k, v in signed.items()}))
    assert bool(torch.signbit(got["agents_history"][1, 2]).all())


def test_a_target_not_observed_at_t0_is_one_line(tmp_path):
    """The frame is the target's pose at t = 0, so target_valid must be true there (the doc's
    table says so): a scene without it is refused, naming the field, step and scene; so is a
    target with no valid future step (it would score 0 m, a perfect prediction)."""
    fields = generate("car", 5, 0, "train", MotionLayout(**SIZES))
    fields["target_valid"][3, 10] = False
    with pytest.raises(UserError, match=r"^\S+/train: field 'target_valid' is false at the "
                                        r"current step \(index 10, t = 0\) in 1 scene\(s\), the "
                                        r"first at scene 3 of the split \(for shard-00000"):
        ShardWriter(tmp_path / "w", "train").add_batch(fields)
    fields["target_valid"][3, 10] = True
    fields["target_future_valid"][1] = False  # nothing to score: it would read as 0 m
    with pytest.raises(UserError, match=r"field 'target_future_valid' has no true step in 1 "
                                        r"scene\(s\), the first at scene 1 of the split"):
        ShardWriter(tmp_path / "w", "train").add_batch(fields)
    fields["target_future_valid"][1, 40:] = True  # lost for the first 4 s: fine
    fields["target_valid"][3, 0] = False  # an earlier step may be missing
    with ShardWriter(tmp_path / "w", "train") as w:
        w.add_batch(fields)
    assert len(read_shards(tmp_path / "w" / "train")["target_valid"]) == 5


def test_a_bad_scene_is_named_by_its_index_in_the_split_and_its_shard(tmp_path):
    """The scene a message names was counted within the batch or the shard (scene 1 of the
    third shard, read as "scene 1"): it is the scene's index in the split, with the shard it
    goes to (writer) or its shard file and index there (reader)."""
    fields = generate("car", 9, 0, "train", MotionLayout(**SIZES))
    fields["target_valid"][7, 10] = False
    with pytest.raises(UserError, match=r"^\S+/w/train: field 'target_valid' is false at the "
                                        r"current step .* the first at scene 7 of the split "
                                        r"\(for shard-00002.safetensors\);"):
        with ShardWriter(tmp_path / "w", "train", shard_size=3) as w:
            for i in range(0, 9, 3):
                w.add_batch({k: v[i:i + 3] for k, v in fields.items()})
    d = tmp_path / "r" / "train"
    d.mkdir(parents=True)
    for i in range(3):
        meta = {"motion_format": "goodfit-motion/1", "split": "train", "first_scene": 3 * i,
                "scenes": 3}
        ckpt.save_model(d / f"shard-{i:05d}.safetensors",
                        {k: torch.from_numpy(v[3 * i:3 * i + 3]) for k, v in fields.items()}, meta)
    mark_complete(d)
    with pytest.raises(UserError, match=rf"^{d}/shard-00002.safetensors: field 'target_valid' "
                                        r"is false .* the first at scene 7 of the split \(scene "
                                        r"1 of this shard\);"):
        read_shards(d)


def test_a_field_with_the_wrong_number_of_dimensions_is_one_line(tmp_path):
    """A field missing an axis (or a scene written without the scene axis) is named with the
    documented shape, by the writer and the reader, not an IndexError from the size read-out."""
    fields = generate("car", 3, 0, "train", MotionLayout(**SIZES))
    one = {k: v[0] for k, v in fields.items()}
    with pytest.raises(UserError, match=r"field 'target_history' has shape \(11, 6\), "
                                        r"expected \(N, 11, 6\): N scenes first"):
        ShardWriter(tmp_path / "w", "train").add_batch(one)
    path = tmp_path / "r" / "train" / "shard-00000.safetensors"
    path.parent.mkdir(parents=True)
    meta = {"motion_format": "goodfit-motion/1", "split": "train", "first_scene": 0, "scenes": 3}
    flat = {k: torch.from_numpy(v) for k, v in fields.items()}
    flat["map_points"] = flat["map_points"][:, 0, 0].contiguous()
    ckpt.save_model(path, flat, meta)
    mark_complete(path.parent)
    with pytest.raises(UserError, match=rf"^{path}: field 'map_points' has shape \(3, 8\), "
                                        r"expected \(N, P, L, 8\): N scenes first"):
        read_shards(path.parent)


def test_data_sizes_other_than_the_models_name_the_recipe(tmp_path):
    """data.args.agents 8 against model.args.agents 4: `validate --data` says which recipe and
    sections, and the model's own reason, in one line (it said only the reason)."""
    from goodfit_cli.workflows.validate import validate

    path = RECIPES_DIR / "motion_car2ped.yaml"
    with pytest.raises(UserError, match=rf"^{path}: data and {path}: model: the old task's train "
                                        r"data does not fit the model 'motion_transformer': "
                                        r"motion input has shape \(2, \d+\)"):
        validate(path, [*TINY, "data.args.agents=8"], data=True)


@pytest.mark.parametrize("extra", [{"standardize": True}, {"normalize": {"mean": [0.0],
                                                                     "std": [1.0]}}])
def test_motion_inputs_are_never_normalised(extra):
    """standardize: true would standardise the packed row, masks included (a True mask that is
    always 1 became 0, a missing step): refused in one line naming the key."""
    key = next(iter(extra))
    args = {"old": "car", "new": "pedestrian", "synthetic": {"scenes": 4, "test_scenes": 2}}
    with pytest.raises(UserError, match=rf"^r.yaml: data.args.{key}: the motion dataset's rows "
                                        r"pack metres, m/s, unit vectors and 0/1 masks"):
        build_data("motion", {**args, **SIZES, **extra}, seed=0, data_dir=None,
                   where="r.yaml: data")
    assert build_data("motion", {**args, **SIZES, "standardize": False}, seed=0,
                      data_dir=None)["old"].input is None


def test_a_writer_never_writes_over_shards_already_there(tmp_path):
    """A converter run twice into one directory overwrote the first run's shards and, writing
    fewer, left the rest to be read with its own (two runs' scenes mixed): refused, nothing
    touched."""
    layout = MotionLayout(**SIZES)
    with ShardWriter(tmp_path, "train", shard_size=3) as w:
        w.add_batch(generate("car", 7, 0, "train", layout))
    before = {p.name: p.read_bytes() for p in (tmp_path / "train").iterdir()}
    assert len(before) == 4  # 3 shards and their index
    with pytest.raises(UserError, match=r"train: already holds 4 shard file\(s\) "
                                        r"\(shard-00000.safetensors\); write into an empty"):
        ShardWriter(tmp_path, "train", shard_size=3)
    assert {p.name: p.read_bytes() for p in (tmp_path / "train").iterdir()} == before
    with ShardWriter(tmp_path, "test") as w:  # the other split's directory is its own
        w.add_batch(generate("car", 2, 0, "test", layout))
    assert len(read_shards(tmp_path / "train")["target_type"]) == 7


def mark_complete(d):
    """The index a finished ShardWriter writes last, for shards written by hand."""
    entries = [{"file": f.name, **ckpt.load_model(f)[1], "bytes": f.stat().st_size}
               for f in shard_files(d)]
    (d / INDEX).write_text(json.dumps({
        "motion_format": "goodfit-motion/1", "split": d.name,
        "scenes": sum(e["scenes"] for e in entries),
        "shards": [{k: e[k] for k in ("file", "first_scene", "scenes", "bytes")}
                   for e in entries]}))


def test_a_converter_that_raised_midway_leaves_a_set_the_reader_refuses(tmp_path):
    """A converter that raised after two of its shards were written left them looking like a
    whole split (read as 6 scenes): a split is complete only with the index the writer writes
    last, checked against the shards present (names, sizes, scene counts); without it, or
    against it, one line naming the folder or file."""
    layout = MotionLayout(**SIZES)
    scenes = generate("car", 8, 0, "train", layout)
    with pytest.raises(RuntimeError, match="log file truncated"):
        with ShardWriter(tmp_path / "p", "train", shard_size=3) as w:
            w.add_batch({k: v[:7] for k, v in scenes.items()})
            raise RuntimeError("log file truncated")
    d = tmp_path / "p" / "train"
    assert len(shard_files(d)) == 2 and not (d / INDEX).exists()
    with pytest.raises(UserError, match=rf"^{d}: no shards.json beside its 2 shard file\(s\): "
                                        r"the conversion that wrote them did not finish"):
        read_shards(d)
    with pytest.raises(UserError, match="did not finish"):  # the dataset reads it the same way
        build_data("motion", {"old": "p", "new": "p", **SIZES}, seed=0, data_dir=str(tmp_path))
    with ShardWriter(tmp_path / "c", "train", shard_size=3) as w:
        w.add_batch(scenes)
    d = tmp_path / "c" / "train"
    index = json.loads((d / INDEX).read_text())
    assert index["scenes"] == 8 and [(e["file"], e["first_scene"], e["scenes"])
                                     for e in index["shards"]] == [
        ("shard-00000.safetensors", 0, 3), ("shard-00001.safetensors", 3, 3),
        ("shard-00002.safetensors", 6, 2)]
    assert torch.equal(read_shards(d)["target_history"], torch.from_numpy(scenes["target_history"]))
    with pytest.raises(UserError, match=r"train: already holds 4 shard file"):
        ShardWriter(tmp_path / "c", "train")  # its index counts too
    last = d / "shard-00002.safetensors"
    kept = last.read_bytes()
    last.unlink()
    with pytest.raises(UserError, match=rf"^{d}: shard-00002.safetensors is listed in "
                                        r"shards.json but missing \(1 of 3 shards\)"):
        read_shards(d)
    last.write_bytes(kept + b" ")
    with pytest.raises(UserError, match=rf"^{last}: {len(kept) + 1} bytes, shards.json says "
                                        rf"{len(kept)}: the file changed"):
        read_shards(d)
    last.write_bytes(kept)
    (d / "shard-00003.safetensors").write_bytes(kept)
    with pytest.raises(UserError, match=rf"^{d}/shard-00003.safetensors: not listed in "
                                        r"shards.json \(left by another conversion\?\)"):
        read_shards(d)
    (d / "shard-00003.safetensors").unlink()
    index["shards"].append({**index["shards"][-1], "first_scene": 8})  # listed twice
    index["scenes"] += 2
    (d / INDEX).write_text(json.dumps(index))
    with pytest.raises(UserError, match=rf"^{d / INDEX}: not a goodfit-motion/1 shard index"):
        read_shards(d)
    (d / INDEX).write_text("{")
    with pytest.raises(UserError, match=rf"^{d / INDEX}: not a shard index \(JSONDecodeError"):
        read_shards(d)


def test_joint_puts_both_tasks_scenes_in_the_old_training_split(tasks):
    """joint: the old task's training split is its car scenes then the pedestrian scenes (the
    joint-training reference, docs/results.md), no scene of either test split among them; every
    other split is unchanged; not a bool: one line."""
    args = {"old": "car", "new": "pedestrian", "synthetic": {"scenes": 32, "test_scenes": 8, "seed": 0}}
    joint = build_data("motion", {**args, **SIZES, "joint": True}, seed=0, data_dir=None)
    old, new = tasks["old"].train, tasks["new"].train
    assert len(joint["old"].train) == 64
    assert torch.equal(joint["old"].train.x, torch.cat([old.x, new.x]))
    assert torch.equal(joint["old"].train.y, torch.cat([old.y, new.y]))
    for name in ("old", "new"):  # the test splits, and the new task, exactly as without joint
        assert torch.equal(joint[name].test.x, tasks[name].test.x)
        assert torch.equal(joint[name].test.y, tasks[name].test.y)
    assert torch.equal(joint["new"].train.x, new.x)
    train = {tuple(r.tolist()) for r in joint["old"].train.x}
    assert len(train) == 64  # 32 distinct scenes of each kind
    assert not train & {tuple(r.tolist()) for t in ("old", "new") for r in tasks[t].test.x}
    with pytest.raises(UserError, match=r"^r.yaml: data.args.joint: expected true or false, got 1$"):
        build_data("motion", {**args, **SIZES, "joint": 1}, seed=0, data_dir=None,
                   where="r.yaml: data")


def test_shipped_recipes_share_the_base_and_follow_the_seed():
    """motion_base/car2car/car2ped: one model, old data and pretrain; the seed's settings."""
    raw = {n: yaml.safe_load((RECIPES_DIR / f"motion_{n}.yaml").read_text()) for n in ("base", "car2car", "car2ped")}
    for n in ("car2car", "car2ped"):
        assert raw[n]["model"] == raw["base"]["model"] and raw[n]["pretrain"] == raw["base"]["pretrain"]
        assert raw[n]["data"]["args"]["old"] == "car"
        assert {k: v for k, v in raw[n]["data"]["args"].items() if k != "new"} == \
            {k: v for k, v in raw["base"]["data"]["args"].items() if k != "new"}
    r = {n: load_recipe(RECIPES_DIR / f"motion_{n}.yaml") for n in raw}
    base = r["base"].pretrain
    assert (base.optimizer.name, base.optimizer.lr, base.batch_size) == ("adamw", 1e-3, 256)
    assert base.optimizer.kwargs == {"betas": (0.9, 0.999), "weight_decay": 1e-2}
    assert r["car2car"].data.args["new"] == "car" and r["car2ped"].data.args["new"] == "pedestrian"
    assert r["car2car"].finetune.steps == 1500 and r["car2ped"].finetune.steps == base.steps
    for n in ("car2car", "car2ped"):
        ft = r[n].finetune
        assert ft.optimizer.lr == pytest.approx(base.optimizer.lr / 100)
        assert (ft.goodfit.n_ref, ft.goodfit.ref_ratio) == (3, 10.0)
        assert ft.arms == ["adamw", "head_only", "goodfit"]


def test_car_to_pedestrian_finetune_every_arm(tmp_path):
    """A tiny car→ped run: every arm reports ade/fde on both tasks; head_only moves only the head."""
    recipe = load_recipe(RECIPES_DIR / "motion_car2ped.yaml", TINY)
    base = runner.pretrain(recipe, tmp_path / "base", log=lambda m: None)
    assert base.metrics["old"]["ade@8s"] > 0
    report = runner.finetune(recipe, tmp_path / "base" / "model.safetensors", tmp_path / "ft",
                             log=lambda m: None, wise=False)
    assert [a["name"] for a in report["arms"]] == ["adamw", "head_only", "goodfit"]
    for arm in report["arms"]:
        for task in ("old", "new"):
            for metric in ("ade@3s", "fde@3s", "ade@8s", "fde@8s", "miss@8s"):
                assert math.isfinite(arm["metrics"][task][metric])
            assert arm["delta"][task]["ade@8s"]["ci"] is not None
    assert {k: v for k, v in report["tasks"]["new"].items() if k != "units"} == {
        "kind": "regression", "primary": "ade@8s"}
    assert report["tasks"]["new"]["units"]["ade@8s"] == "m"  # metadata; the numbers stay floats
    summary = json.loads((tmp_path / "ft" / "goodfit" / "summary.json").read_text())
    assert summary["main_updates"] == 2  # n_ref 3: four batches per main update
    base_t, _ = ckpt.load_model(tmp_path / "base" / "model.safetensors")
    head_t, _ = ckpt.load_model(tmp_path / "ft" / "head_only" / "model.safetensors")
    body = [k for k in base_t if not k.startswith("head.")]
    assert body and all(torch.equal(base_t[k], head_t[k]) for k in body)
    assert not torch.equal(base_t["head.2.weight"], head_t["head.2.weight"])
    full_t, _ = ckpt.load_model(tmp_path / "ft" / "adamw" / "model.safetensors")
    assert not torch.equal(base_t["encoder.0.linear1.weight"], full_t["encoder.0.linear1.weight"])


def test_a_motion_run_shows_metres_and_says_better_or_worse_without_colour(tmp_path):
    """Every value of a motion metric reads in its unit: the pretrain/finetune log lines, the
    terminal's table (whose Δ says better/worse in words), the verdict line, the gate's
    message and top line, report.md and report.html; a rate reads in % on the terminal as in
    report.md; report.json keeps plain floats. A floor on an error gets a note, a ceiling
    below 0 m one line and exit 2."""
    cli = CliRunner()
    base, ft = tmp_path / "base", tmp_path / "ft"
    res = cli.invoke(app, ["pretrain", "--recipe", "motion_car2ped", "--out", str(base),
                           "--progress-every", "0", *TINY, "old_task.metrics=[miss@8s,ade@8s]"])
    assert res.exit_code == 0, res.output
    shown = " ".join(res.output.split())  # a rate in %, as report.md shows it; metres in m
    assert re.search(r"val old miss@8s \d{1,3}\.\d\d % val new ade@8s \d+\.?\d* m", shown), shown
    assert re.search(r"│ base │ \d{1,3}\.\d\d % │ \d+\.?\d* m │|base: old miss@8s \d{1,3}\.\d\d "
                     r"%, new ade@8s \d+\.?\d* m", shown), shown
    args = ["finetune", "--base", str(base), "--recipe", "motion_car2ped", "--no-wise",
            "--progress-every", "100", *TINY, "finetune.arms=[adamw,head_only]"]
    res = cli.invoke(app, [*args, "--out", str(ft), "--max-old", "ade@8s=-1"])
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        "error: --max-old 'ade@8s=-1': ade@8s is never below 0 m, so max -1 always fails"]
    assert not ft.exists()
    res = cli.invoke(app, [*args, "--out", str(ft), "--min-old", "ade@8s=3",
                           "--max-old-drop", "0.00001"])
    assert res.exit_code == 3, res.output  # an arm fails the tight drop: the gate's exit
    out = " ".join(res.output.split())
    assert ("note: --min-old ade@8s=3 is a floor on a lower-is-better metric: an arm passes "
            "only with old ade@8s at least 3 m; for the other side use --max-old ade@8s=3") in out
    assert "gate: old ade@8s max_drop 1e-05 m; old ade@8s min 3 m (from command-line flags)" in out
    report = json.loads((ft / "report.json").read_text())
    assert isinstance(report["arms"][0]["metrics"]["old"]["ade@8s"], float)
    assert report["tasks"]["old"]["units"]["ade@8s"] == "m"
    for arm in report["arms"]:
        d = arm["delta"]["old"]["ade@8s"]
        word = "better" if d["better"] else "worse"
        assert f"Δ {d['value']:+.4g} m {'▼' if d['value'] < 0 else '▲'} {word}" in out
        assert f"old ade@8s {arm['metrics']['old']['ade@8s']:.4g} m" in out
    ship = report["verdict"]["ship"]
    if ship is not None:
        assert f"validation: old ade@8s {ship['val']['old']:.5g} m" in out
    failed = [v for a in report["arms"] for v in a["gate"]["violations"]]
    assert failed and all(v.endswith(" m (limit 1e-05 m)") for v in failed), failed
    md = (ft / "report.md").read_text()
    base_old = report["base_metrics"]["old"]["ade@8s"]
    assert f"| base | {base_old:.4g} m |" in md
    assert f"{report['base_metrics']['old']['mse']:.4g} m²" in md
    assert f"<td>{base_old:.4g} m</td>" in (ft / "report.html").read_text()
    if ship is not None:
        assert f"Ship {ship['name']}: validation old ade@8s {ship['val']['old']:.4g} m" in md
