"""The loop's batch sources (data/sources.py, data/replay.py) and dict batches (data/batch.py):
a model with two inputs (input_ids + attention_mask) trains through the engine and the real
cross_entropy objective exactly as a hand-written loop over the same batches does, with
accumulation and with replay mixed in; a source restarted from its state_dict() yields the
rest of the uninterrupted sequence; a loop state saved before sources owned their position
still resumes; the engine names no kind of source."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from torch import nn

from goodfit_cli.data import batch as B
from goodfit_cli.data.base import Split, Task
from goodfit_cli.data.replay import Mixed
from goodfit_cli.data.sources import DeviceSource, Order, Plan
from goodfit_cli.engine import LoopConfig, LoopState, train
from goodfit_cli.objectives.runtime import TaskRunner
from goodfit_cli.recipe import TaskSpec

VOCAB, T, CLASSES = 11, 6, 3


class TwoInputs(nn.Module):
    """Mean of the token embeddings where attention_mask is 1, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        pooled = (self.embed(input_ids) * m).sum(1) / m.sum(1).clamp_min(1)  # (B, 8)
        return self.head(pooled)  # (B, CLASSES)


def tokens(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, T), generator=g)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    mask = (torch.arange(T) < lengths[:, None]).long()  # (n, T) 1 on the first `length` tokens
    return Split({"input_ids": ids, "attention_mask": mask}, ids[:, 0] % CLASSES)


def runner(split: Split) -> TaskRunner:
    task = Task("new", "classification", split, split, CLASSES, list(range(CLASSES)))
    return TaskRunner("new", TaskSpec("cross_entropy", ["accuracy"]), task, torch.device("cpu"))


def by_hand(model, split: Split, pool: Split | None, steps: int, batch: int, k: int, old: int):
    """The loop written out: the Order's batches, each cut into k micro-batches, the pool's
    samples (seed + 1's permutations) appended, cross-entropy weighted by each part's share."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    order = Order(len(split), Plan(seed=4, step=batch * k - old * k, batches=steps), None)
    if pool is not None:  # successive passes over the pool, each a permutation of one generator
        g = torch.Generator().manual_seed(5)
        pool_order = torch.cat([torch.randperm(len(pool), generator=g) for _ in range(3)])
    used = 0
    for _ in range(steps):
        idx = order.next()
        x, y = B.rows(split.x, idx), split.y[idx]
        if pool is not None:
            pidx = pool_order[used:used + old * k]
            used += old * k
            x, y = B.cat([x, B.rows(pool.x, pidx)]), torch.cat([y, pool.y[pidx]])
        opt.zero_grad()
        for xa, ya in zip(B.chunks(x, k), y.tensor_split(k)):
            (nn.functional.cross_entropy(model(**xa), ya) * (len(ya) / len(y))).backward()
        opt.step()
    return model.state_dict()


def test_a_two_input_model_trains_through_the_engine_as_by_hand():
    """input_ids + attention_mask: 7 steps of 2 micro-batches of 4 (epochs end mid-batch), with
    and without 1 replayed sample per micro-batch: bit-identical weights to the hand-written loop;
    the objective's evaluation feeds the dict too (accuracy = the hand-computed one)."""
    split, pool = tokens(30, 0), tokens(9, 1)
    for source, extra, old in ((DeviceSource(split), None, 0), (Mixed(split, pool, 1), pool, 1)):
        torch.manual_seed(2)
        model = TwoInputs()
        want = by_hand(_copy(model), split, extra, 7, 4, 2, old)
        run = runner(split)
        st = train(model, torch.optim.SGD(model.parameters(), lr=0.5), None, source, run.loss,
                   LoopConfig(7, 4, eval_every=7, seed=4, accumulate=2))
        got = model.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert st.batch == 7 and st.records[0]["train_loss"] > 0
        metrics, _, _ = run.evaluate(model, split, batch_size=7)  # 30 rows in slices of 7
        with torch.no_grad():
            acc = float((model(**split.x).argmax(1) == split.y).double().mean())
        assert metrics["accuracy"] == acc


def _copy(model: nn.Module) -> nn.Module:
    twin = TwoInputs()
    twin.load_state_dict(model.state_dict())
    return twin


def _draw(source, plan: Plan, state, count: int) -> list[torch.Tensor]:
    source.start(plan, state)
    return [source.next()[1] for _ in range(count)]


def test_a_source_restarted_from_its_state_continues_the_sequence():
    """On the device and mixed with replay: 5 batches, state_dict(), a fresh source started
    there draws batches 6..11 of the uninterrupted 11 (targets compared; epochs of 30 samples
    and passes of 9 pool samples end mid-batch)."""
    split, pool = tokens(30, 0), tokens(9, 1)
    plan = Plan(seed=3, step=8, batches=11, accumulate=2)
    for make in (lambda: DeviceSource(split), lambda: Mixed(split, pool, 1)):
        whole = _draw(make(), plan, None, 11)
        first = make()
        head = _draw(first, plan, None, 5)
        rest = _draw(make(), plan, first.state_dict(), 6)
        assert all(torch.equal(a, b) for a, b in zip(head + rest, whole))


def test_a_loop_state_saved_before_sources_resumes_its_position():
    """The flat layout (perm, pos, epoch, gen_state and replay_* beside batch) becomes the
    source's state; the new layout round-trips."""
    old = {"batch": 6, "epoch": 2, "pos": 8, "perm": torch.arange(5), "gen_state": None,
           "loss_sum": 1.5, "loss_count": 2, "wall_s": 0.1, "skipped": 0, "replay_pos": 3,
           "replay_perm": None, "replay_gen_state": None}
    st = LoopState.from_dict(old)
    assert (st.batch, st.loss_sum, st.loss_count) == (6, 1.5, 2)
    assert st.source["pos"] == 8 and st.source["epoch"] == 2 and st.source["replay_pos"] == 3
    assert "batch" not in st.source
    again = LoopState.from_dict(st.to_dict())
    assert again.source is st.source and again.batch == 6


def test_the_engine_names_no_kind_of_source():
    """engine.py imports nothing of replay or streaming and names no source class."""
    path = Path(__file__).resolve().parent.parent / "goodfit_cli" / "engine.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {"goodfit_cli.data.replay", "goodfit_cli.data.stream"} & imported
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not {"Mixed", "Streamed", "DeviceSource", "Split"} & names


def test_an_epoch_never_ends_on_a_batch_of_one_sample():
    """129 samples in batches of 32: 32, 32, 32 and 33 (the last sample joins the batch before:
    BatchNorm cannot train on one), every sample once per epoch; then the next epoch; the
    epoch's batch count says 4. 130 samples: 32, 32, 32, 32, 2 as before."""
    from goodfit_cli.engine import batches_per_epoch

    order = Order(129, Plan(seed=0, step=32, batches=10), None)
    epoch = [order.next() for _ in range(4)]
    assert [len(b) for b in epoch] == [32, 32, 32, 33]
    assert sorted(torch.cat(epoch).tolist()) == list(range(129))
    assert len(order.next()) == 32 and order.at.epoch == 2
    assert batches_per_epoch(129, 32) == 4 and batches_per_epoch(130, 32) == 5
    order = Order(130, Plan(seed=0, step=32, batches=10), None)
    assert [len(order.next()) for _ in range(5)] == [32, 32, 32, 32, 2]
    # split over 2 ranks: a last batch of 3 would give a rank one, so it joins the one before;
    # 4 gives two each and stays; micro-batches (accumulate) leave the order alone
    for plan, n, sizes in ((Plan(seed=0, step=70, batches=9, accumulate=2), 72, [70, 2]),
                           (Plan(seed=0, step=35, batches=9, world=2), 73, [35, 38]),
                           (Plan(seed=0, step=35, batches=9, world=2), 74, [35, 35, 4])):
        order = Order(n, plan, None)  # rank 0's share: the first of tensor_split's pieces
        assert [len(order.next()) for _ in sizes] == [-(-s // plan.world) for s in sizes]
        assert order.steps_per_epoch() == len(sizes) == batches_per_epoch(
            n, plan.step, plan.world)


def test_a_short_batch_is_split_into_fewer_micro_batches_never_one_of_one_sample():
    """Micro-batches of 8: accumulate 2 with a batch of 3 (an epoch's short last one): one
    micro-batch of 3; accumulate 4 with 5: two, of 3 and 2; with 8: four of 2. The mean loss's
    gradient is the same however it is split (each part weighted by its size). Micro-batches of
    one that the recipe asks for (batch_size 1) stay as asked."""
    from goodfit_cli.engine import LoopConfig, backward

    model = torch.nn.Linear(2, 1)
    for k, n, want in ((2, 3, [3]), (4, 5, [3, 2]), (4, 8, [2, 2, 2, 2]), (1, 1, [1])):
        seen = []

        def loss(m, x, y):
            seen.append(len(y))
            return ((m(x).squeeze(1) - y) ** 2).mean()

        x, y = torch.randn(n, 2), torch.randn(n)
        model.zero_grad()
        backward(model, x, y, loss, LoopConfig(1, 8, 1, 0, accumulate=k))  # micro-batches of 8
        split = model.weight.grad.clone()
        model.zero_grad()
        backward(model, x, y, loss, LoopConfig(1, n, 1, 0))
        assert seen[:len(want)] == want and torch.allclose(split, model.weight.grad, atol=1e-6)
    # micro-batches of one asked for (batch_size 1, accumulate 4: memory): kept as asked
    seen = []
    backward(model, torch.randn(4, 2), torch.randn(4), loss, LoopConfig(1, 1, 1, 0, accumulate=4))
    assert seen == [1, 1, 1, 1]
