"""Streaming loader: images/s against a bare DataLoader loop, and peak memory at 5 000 vs 20 000 images.

The script first makes its data: class-per-folder trees of 32×32 RGB PNGs of random pixels
(10 classes), one of `--images` images and one of `--small` images, under `--dir` (kept and
reused; each tree is written under a temporary name and renamed into place when complete).

Throughput, both over the big tree, with the same timm training transform (random resized crop
to 32×32 + horizontal flip, `create_transform(is_training=True, normalize=False)`), the same
batch size and the same number of workers:

    goodfit  data.stream.Streamed over data.imagestream.ImageSamples, driven exactly as the
             engine drives it: `start()` at the loop's plan, `next()` returns each batch (the
             sampler replaying the order, per-sample seeded augmentation, the batch check)
    bare     torch.utils.data.DataLoader over timm's ImageDataset with that transform, a seeded
             RandomSampler, default collate

Each block reads `--batches` batches from a fresh iterator (so worker start-up is in both);
blocks alternate goodfit/bare (order reversed every other round; round 0 is warm-up and
discarded). Reported: the median images/s of each, their ratio, and the median of the per-round
ratios. Target: goodfit / bare >= 0.95.

Peak memory: for each tree, a fresh child process streams one full epoch through goodfit's path
and reports its peak RSS (ru_maxrss) and its workers' peak; then loads the whole tree in memory
(`ImageSamples.load()`, what the device path does) for contrast. Target: the streaming peaks at
`--small` and `--images` within 10 %.

Run from the repository root:
    python benchmarks/stream_throughput.py --workers 2 --batch 256 --batches 20 --reps 3
    python benchmarks/stream_throughput.py --quick                    # smoke run (2 000 / 500)
    ... --out docs/benchmarks.md                                      # append the tables there
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from PIL import Image

from goodfit_cli.data.imagestream import ImageSamples, train_transform
from goodfit_cli.data.sources import Plan
from goodfit_cli.data.stream import LoaderSettings, Streamed

SIZE = (32, 32)
AUGMENT = {"scale": [0.08, 1.0], "hflip": 0.5}  # timm's random resized crop + flip
CLASSES = 10


def make_tree(root: Path, n: int) -> Path:
    """root/img{n}/train/c{k}/{i}.png: n random 32×32 PNGs; made once, then reused."""
    tree = root / f"img{n}"
    if (tree / "train").is_dir():
        return tree
    tmp = root / f".img{n}.tmp-{os.getpid()}"
    rng = np.random.default_rng(n)
    for i in range(n):
        d = tmp / "train" / f"c{i % CLASSES}"
        if i < CLASSES:
            d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(d / f"{i:06d}.png")
    os.replace(tmp, tree)  # the tree appears whole or not at all
    return tree


def dataset(tree: Path, transform=None):
    from timm.data import create_dataset

    ds = create_dataset("", root=str(tree / "train"), split="train", search_split=False)
    ds.transform = transform
    return ds


def goodfit_source(tree: Path, workers: int) -> Streamed:
    from timm.data import create_transform

    ds = dataset(tree, create_transform((3, *SIZE), is_training=False, crop_pct=1.0,
                                        interpolation="bilinear", normalize=False))
    samples = ImageSamples(ds, {k: k for k in range(CLASSES)}, "train", SIZE,
                           train_transform(AUGMENT, SIZE, "bilinear"))
    return Streamed(samples, torch.device("cpu"), LoaderSettings("stream", workers), seed=0)


def goodfit_block(src: Streamed, batch: int, batches: int, seed: int) -> float:
    """images/s of `batches` batches drawn as the engine draws them."""
    t0 = time.perf_counter()
    src.start(Plan(seed, batch, batches), None)
    for _ in range(batches):
        x, y = src.next()
    src.stop(finished=True)
    return batches * batch / (time.perf_counter() - t0)


def bare_loader(tree: Path, workers: int, batch: int):
    ds = dataset(tree, train_transform(AUGMENT, SIZE, "bilinear"))
    gen = torch.Generator().manual_seed(0)
    sampler = torch.utils.data.RandomSampler(ds, generator=gen)
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                       prefetch_factor=2 if workers else None)


def bare_block(loader, batches: int) -> float:
    t0 = time.perf_counter()
    it = iter(loader)
    for _ in range(batches):
        x, y = next(it)
    del it
    return batches * loader.batch_size / (time.perf_counter() - t0)


def throughput(tree: Path, args) -> dict:
    src, loader = goodfit_source(tree, args.workers), bare_loader(tree, args.workers, args.batch)
    rates: dict[str, list[float]] = {"goodfit": [], "bare": []}
    ratios = []
    for r in range(args.reps + 1):
        order = ["goodfit", "bare"] if r % 2 == 0 else ["bare", "goodfit"]
        got = {}
        for name in order:
            got[name] = (goodfit_block(src, args.batch, args.batches, r) if name == "goodfit"
                         else bare_block(loader, args.batches))
        print(f"round {r}{' (warm-up)' if r == 0 else ''}: goodfit {got['goodfit']:.0f} "
              f"bare {got['bare']:.0f} images/s", flush=True)
        if r:
            for k, v in got.items():
                rates[k].append(v)
            ratios.append(got["goodfit"] / got["bare"])
    g, b = statistics.median(rates["goodfit"]), statistics.median(rates["bare"])
    return {"goodfit": g, "bare": b, "ratio": g / b, "paired": statistics.median(ratios)}


def rss_child(tree: Path, workers: int, batch: int, load: bool) -> None:
    """Stream one epoch (or load the whole tree) and print the peak RSS (MiB) as JSON."""
    src = goodfit_source(tree, workers)
    t0 = time.perf_counter()
    if load:
        src.samples.load()
    else:
        n = len(src)
        goodfit_block(src, batch, -(-n // batch), 0)
        del src  # ends the workers, so their peak is counted as reaped children's
    mib = lambda who: resource.getrusage(who).ru_maxrss / 1024  # noqa: E731  (kB on Linux)
    print(json.dumps({"main_mib": mib(resource.RUSAGE_SELF),
                      "workers_mib": mib(resource.RUSAGE_CHILDREN),
                      "s": time.perf_counter() - t0}))


def peak(tree: Path, args, load: bool) -> dict:
    cmd = [sys.executable, __file__, "--rss-child", str(tree), "--workers", str(args.workers),
           "--batch", str(args.batch)] + (["--load"] if load else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="/tmp/goodfit-stream-bench")
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--small", type=int, default=5_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="append the tables to this Markdown file")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        return rss_child(Path(args.rss_child), args.workers, args.batch, args.load)
    if args.quick:
        args.images, args.small, args.batches, args.reps = 2_000, 500, 4, 1
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    big, small = make_tree(root, args.images), make_tree(root, args.small)
    print(f"trees ready in {time.perf_counter() - t0:.1f}s: {big}, {small}", flush=True)
    tp = throughput(big, args)
    mem = {(n, load): peak(tree, args, load) for n, tree in ((args.small, small), (args.images, big))
           for load in (False, True)}
    date = datetime.date.today().isoformat()
    cmdline = "python benchmarks/stream_throughput.py " + " ".join(sys.argv[1:])
    lines = [
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs seen, torch {torch.__version__}; {date}; "
        f"`{cmdline}`", "",
        "| images | workers | batch | goodfit images/s | bare images/s | goodfit / bare | paired ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {args.images:,} | {args.workers} | {args.batch} | {tp['goodfit']:,.0f} | "
        f"{tp['bare']:,.0f} | {tp['ratio']:.3f} | {tp['paired']:.3f} |", "",
        "| images | streaming: main peak MiB | workers' peak MiB | whole set loaded: peak MiB |",
        "|---:|---:|---:|---:|"]
    for n in (args.small, args.images):
        s, ld = mem[(n, False)], mem[(n, True)]
        lines.append(f"| {n:,} | {s['main_mib']:.0f} | {s['workers_mib']:.0f} | "
                     f"{ld['main_mib']:.0f} |")
    a, b = mem[(args.small, False)], mem[(args.images, False)]
    lines += ["", f"Streaming peak at {args.images:,} / at {args.small:,}: main "
              f"{b['main_mib'] / a['main_mib']:.3f}, workers {b['workers_mib'] / a['workers_mib']:.3f}."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        from goodfit_cli.io.atomic import atomic_write

        old = Path(args.out).read_text() if Path(args.out).exists() else ""
        atomic_write(args.out, old.rstrip("\n") + "\n\n" + text + "\n")


if __name__ == "__main__":
    main()
