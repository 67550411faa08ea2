"""Reading an image folder into memory: `ImageSamples.load()` with its threads against one thread.

Every test and validation split, and a training split that fits on the device, is read whole
by `load()` before the first batch (the run's `load` phase). Its images are read by threads
where the first image has at least `THREADED_PIXELS` pixels (data/imagestream.py); this script
writes folders of generated noisy images at a few sizes, reads each with one thread and with
what `reading_threads()` picks, and with 2 threads whatever it picks (the evidence for the
threshold), alternating, and prints the medians and their ratios against one thread (the
tensors are checked equal). Run from the repository root:

    python benchmarks/image_load.py                  # ~1 min on 2 cores
    python benchmarks/image_load.py --rounds 5 --out results.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from goodfit_cli.data.imagefolder import _open  # noqa: E402
from goodfit_cli.data.imagestream import ImageSamples  # noqa: E402

# (name, images, source width x height, format, size read at)
CASES = [("32x32 PNG", 960, (32, 32), "png", 32),
         ("128x128 JPEG", 1000, (128, 128), "jpg", 112),
         ("256x256 JPEG to 224", 1000, (256, 256), "jpg", 224),
         ("400x300 JPEG to 224", 1000, (400, 300), "jpg", 224)]


def folder(root: Path, n: int, wh: tuple[int, int], fmt: str) -> Path:
    """n noisy images in two class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / f"c{i % 2}" / f"{i:05d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8)).save(path)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per case")
    p.add_argument("--out", type=Path, help="also append the table to this file")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, n, wh, fmt, size in CASES:
            root = folder(Path(tmp) / name.replace(" ", "_"), n, wh, fmt)
            s = ImageSamples(_open(str(root), "x", (size, size), "bilinear"), {0: 0, 1: 1}, "x",
                             (size, size))
            threads = s.reading_threads()
            times: dict[int | None, list[float]] = {1: [], None: [], 2: []}
            for _ in range(a.rounds):
                x1 = None
                for k, ts in times.items():
                    t = time.perf_counter()
                    x = s.load(threads=k).x
                    ts.append(time.perf_counter() - t)
                    x1 = x if x1 is None else x1
                    assert torch.equal(x, x1), name
            rows.append((name, n, threads, *(statistics.median(ts) for ts in times.values())))
            print(f"{name}: {rows[-1][3]:.3f} s one thread, {rows[-1][4]:.3f} s load() with "
                  f"{threads}, {rows[-1][5]:.3f} s two", flush=True)
    head = (f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"median of {a.rounds}")
    lines = [head, "", "| images | count | load() threads | one thread s | load() s | ratio | "
             "2 threads s | ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[4] / r[3]:.2f} | "
              f"{r[5]:.3f} | {r[5] / r[3]:.2f} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if a.out:
        with a.out.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
