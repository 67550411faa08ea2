"""The time around training: `goodfit finetune`'s wall time against its arms' own training.

Each case prepares its data and base outside the measurement (a short `goodfit pretrain`), then
runs `python -m goodfit_cli finetune` in a fresh process and reads the run's own
`RUN/timings.json` (goodfit_cli/core/timing.py): the phases (load, base evaluation, training,
periodic evaluations, the time the training waited for its resumable states, WiSE, report and
the report's bootstrap) and `command / training`, the
command's total wall time over its arms' training (issue 28's target: <= 1.10), from the CLI's
entry point (its start-up, the imports and the recipe, is a phase since 2026-12-05; the ratio
without it is printed beside, as the figures before were). The process's own wall time
(the interpreter's start included) is printed beside it.

Beside them, each case's PyTorch floor: what a PyTorch program that trains the case with a
torch.optim optimizer (and, for the ResNet, timm's model) runs before its first batch,
measured as `python -c` processes (the median of three) that import torch and make the case's
optimizer (torch.optim imports torch._dynamo when an optimizer is made; the timm case also
imports timm and makes its ResNet-18), ended by `os._exit` as goodfit ends a command, less
the wall time of `python -c pass` (the interpreter's own start, which `command / training`
does not count either). "training + floor" is (training + floor) / training: the ratio of
such a program that did nothing but start and train. Where it is above 1.10, no such program
meets issue 28's target on that case on that machine.

Cases:
    toy       the shipped toy recipe reduced to fit: MLP 2-128-128-1, 4 000 / 1 000 samples
              (`goodfit demo --quick`'s data), arms rmsprop + goodfit, 300 batches each,
              evaluated every 20 batches
    toy-recipe
              the shipped toy recipe's fine-tune exactly as shipped (MLP 2-500-500-1, 50 000 /
              5 000 samples, arms rmsprop + head_only + goodfit, 1 500 batches of 256 each,
              evaluated every 100 batches); its base pretrained for `--pretrain-steps` batches
              (not measured; not in `all`)
    motion    the shipped car -> pedestrian recipe (recipes/motion_car2ped.yaml) at
              benchmarks/motion_table.py's reduced sizes (a 2-layer decoder of width 64, 8
              agents, 16 polylines; 2 000 + 500 scenes per task, generated in memory by the
              command: the load phase), arms adamw + head_only + goodfit, 600 batches of 64
              each, evaluated every 300 batches; its base pretrained for 300 batches (not
              measured; not in `all`). With --shards the scenes are written once (`goodfit
              data motion-synth`'s writer, not measured) and the fine-tune reads them
              (docs/motion-data.md's advice for repeated runs)
    resnet18  issue 28's image-folder case: a timm ResNet-18 (random init, pretrained here for
              `--pretrain-steps` batches on the old classes) on generated 32x32 PNG class
              folders (4 old + 2 new classes, each a colour-and-stripe pattern under noise: random
              but learnable; 120 training and 60 test images per class), arms adamw + goodfit,
              60 batches of 16 each, evaluated every 20 batches

Run from the repository root (each case a few minutes on 2 CPU cores):
    python benchmarks/command_overhead.py --case toy
    python benchmarks/command_overhead.py --case resnet18
    python benchmarks/command_overhead.py --case motion [--shards]
    python benchmarks/command_overhead.py --case all --device cuda --out results.md
    python benchmarks/command_overhead.py --case resnet18 --steps 60 600  # the ratio against length
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
TOY_DATA = ["data.args.n_train=4000", "data.args.n_test=1000", "model.args.hidden=[128, 128]"]
TOY_BASE = TOY_DATA + ["pretrain.steps=300", "pretrain.scheduler.args.decay_epochs=100"]
TOY_RUN = TOY_DATA + ["finetune.steps=300", "finetune.scheduler.args.decay_epochs=20",
                      "eval.every=20", "finetune.arms=[rmsprop, goodfit]"]

OLD, NEW = ("a", "b", "c", "d"), ("e", "f")
RESNET = """name: resnet18_folders
seed: 0
device: {device}
data_dir: {root}
model: {{name: timm, args: {{name: resnet18, num_classes: {classes}}}}}
data:
  name: imagefolder
  args:
    size: 32
    old: {{train: old_train, test: old_test}}
    new: {{train: {new}_train, test: {new}_test}}
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
pretrain: {{optimizer: {{name: adamw, lr: 1.0e-3}}, steps: {pretrain}, batch_size: 16}}
finetune:
  optimizer: {{name: adamw, lr: 1.0e-4}}
  steps: 60
  batch_size: 16
  goodfit: {{n_ref: 1, ref_ratio: 100, projection: global}}
  arms: [adamw, goodfit]
eval: {{every: 20, batch_size: 256}}
"""


def image_folders(root: Path, n_train: int, n_test: int) -> None:
    """32x32 PNGs per class: a class colour and stripe period, plus per-image noise and shift."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for task, names in (("old", OLD), ("new", NEW)):
        for split, n in (("train", n_train), ("test", n_test)):
            for c in names:
                k = (OLD + NEW).index(c)
                colour = np.array([(60 * k) % 256, (110 + 37 * k) % 256, (200 - 29 * k) % 256])
                folder = root / f"{task}_{split}" / c
                folder.mkdir(parents=True, exist_ok=True)
                cols = np.arange(32)
                for i in range(n):
                    stripes = ((cols + rng.integers(0, 8)) // (2 + k) % 2)[None, :, None]
                    img = colour * (0.6 + 0.4 * stripes) + rng.normal(0, 40, (32, 32, 3))
                    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                        folder / f"{i:04d}.png")


def goodfit(*args: str, timeout: float, env: dict[str, str]) -> float:
    """Run `python -m goodfit_cli ARGS` in a fresh process; its wall seconds (exit 0 asserted)."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "goodfit_cli", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"goodfit {' '.join(args)} exited {res.returncode}:\n{res.stdout[-3000:]}"
                 f"\n{res.stderr[-3000:]}")
    return wall


FLOOR = {  # each case's start before its first batch in a torch.optim program (the docstring)
    "toy": "import torch; torch.optim.RMSprop(torch.nn.Linear(2, 1).parameters())",
    "resnet18": "import timm, torch; torch.optim.AdamW(timm.create_model('resnet18').parameters())",
    "motion": "import torch; torch.optim.AdamW(torch.nn.Linear(2, 1).parameters())",
}


FLOORS: dict[str, float] = {}  # measured once per FLOOR key (not again for each --steps value)


def pytorch_floor(case: str, env: dict[str, str], n: int = 3) -> float:
    """The median wall seconds of `python -c FLOOR[case]` less that of `python -c pass`."""
    def wall(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        return time.perf_counter() - t0

    key = "toy" if case.startswith("toy") else case
    if key not in FLOORS:  # os._exit: no interpreter teardown (about a second once torch is
        code = FLOOR[key] + "; import os; os._exit(0)"  # loaded; goodfit skips it too)
        FLOORS[key] = (statistics.median(wall(code) for _ in range(n))
                       - statistics.median(wall("pass") for _ in range(n)))
    return FLOORS[key]


def run_case(case: str, tmp: Path, device: str, timeout: float, env: dict[str, str],
             pretrain_steps: int, steps: int | None = None, shards: bool = False) -> dict:
    """Prepare the case (not measured), run its finetune; the run's timings plus the wall time."""
    if case == "motion":  # motion_table's reduced sizes; the scenes made by each command
        from motion_table import SCALE

        over = ["device=" + device, "checkpoint.every=0", *SCALE]
        goodfit("pretrain", "--recipe", "motion_car2ped", "--out", str(tmp / "base"), *over,
                "pretrain.steps=300", timeout=timeout, env=env)
        if shards:  # the same scenes, written once (benchmarks/search_table.py --shards)
            from search_table import shards as written

            over += written("motion_car2ped", tmp, over)
        args = ["finetune", "--recipe", "motion_car2ped", "--base",
                str(tmp / "base" / "model.safetensors"), "--out", str(tmp / "run"), *over,
                "finetune.steps=600", "eval.every=300"]
    elif case in ("toy", "toy-recipe"):  # toy-recipe: the fine-tune as shipped, a short pretraining
        base, run = ((TOY_BASE, TOY_RUN) if case == "toy"
                     else ([f"pretrain.steps={pretrain_steps}"], []))
        goodfit("pretrain", "--recipe", "toy", "--out", str(tmp / "base"), "--device", device,
                *base, timeout=timeout, env=env)
        args = ["finetune", "--recipe", "toy", "--base", str(tmp / "base" / "model.safetensors"),
                "--out", str(tmp / "run"), "--device", device, *run]
    else:
        image_folders(tmp, n_train=120, n_test=60)
        for name, classes, new in (("base", len(OLD), "old"), ("update", len(OLD + NEW), "new")):
            (tmp / f"{name}.yaml").write_text(RESNET.format(
                device=device, root=tmp, classes=classes, new=new, pretrain=pretrain_steps))
        goodfit("pretrain", "--recipe", str(tmp / "base.yaml"), "--out", str(tmp / "base"),
                timeout=timeout, env=env)
        args = ["finetune", "--recipe", str(tmp / "update.yaml"),
                "--base", str(tmp / "base" / "model.safetensors"), "--out", str(tmp / "run")]
    if steps:  # a longer (or shorter) fine-tune, the evaluation cadence unchanged
        args.append(f"finetune.steps={steps}")
    wall = goodfit(*args, timeout=timeout, env=env)
    rec = json.loads((tmp / "run" / "timings.json").read_text())
    name = (f"{case}, from shards" if shards else case) + (f", {steps} batches" if steps else "")
    return {"case": name, "process_s": wall, "floor_s": pytorch_floor(case, env), **rec}


COLUMNS = ("start_up", "load", "base_evaluation", "evaluations", "state_saves", "wise",
           "bootstrap", "report")


def table(rows: list[dict]) -> str:
    """The cases' timings; "command / training" counts the command's start-up (its imports and
    recipe, a phase since 2026-12-05), the next column leaves it out (the figures before)."""
    head = ("| case | process s | total s | training s | command / training | "
            "without start-up | PyTorch floor s | training + floor | "
            + " | ".join(c.replace("_", " ") for c in COLUMNS) + " | other |")
    lines = [head, "|---" + "|---:" * (len(COLUMNS) + 8) + "|"]
    for r in rows:
        ph = r["phases_s"]
        cells = [f"{ph.get(c, 0.0):.2f}" for c in COLUMNS]
        training = ph.get("training", 0.0)
        bare = (r["total_s"] - ph.get("start_up", 0.0)) / training if training else float("nan")
        least = (training + r["floor_s"]) / training if training else float("nan")
        lines.append(f"| {r['case']} | {r['process_s']:.2f} | {r['total_s']:.2f} | "
                     f"{training:.2f} | {r['command_over_training']:.3f} | {bare:.3f} | "
                     f"{r['floor_s']:.2f} | {least:.3f} | "
                     + " | ".join(cells) + f" | {r['other_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=("toy", "toy-recipe", "resnet18", "motion", "all"),
                   default="all")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--pretrain-steps", type=int, default=40,
                   help="the base's pretraining batches for resnet18 and toy-recipe (not "
                        "measured)")
    p.add_argument("--steps", type=int, nargs="+", default=[0],
                   help="each arm's batches (0: the case's own, 300 toy / 60 resnet18 / 600 "
                        "motion); several "
                        "values run the case once each (how the ratio moves with the length)")
    p.add_argument("--shards", action="store_true",
                   help="motion: the fine-tune reads its scenes from shards written once")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per goodfit command")
    p.add_argument("--threads", type=int,
                   help="OMP_NUM_THREADS for the commands (on shared cores 1 avoids spinning)")
    p.add_argument("--out", type=Path, help="also append the table to this file")
    a = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    cases = ("toy", "resnet18") if a.case == "all" else (a.case,)
    rows = []
    for case, steps in itertools.product(cases, a.steps):
        with tempfile.TemporaryDirectory(prefix=f"goodfit-overhead-{case}-") as tmp:
            rows.append(run_case(case, Path(tmp), a.device, a.timeout, env, a.pretrain_steps,
                                 steps or None, a.shards))
        r = rows[-1]
        print(f"{r['case']}: command / training {r['command_over_training']:.3f} "
              f"(total {r['total_s']:.2f} s, training {r['phases_s'].get('training', 0):.2f} s)",
              flush=True)
    import torch

    threads = a.threads or torch.get_num_threads()
    header = (f"{datetime.date.today()}, {cpu_model()}, torch {torch.__version__}, "
              f"{a.device}, {threads} threads")
    text = header + "\n\n" + table(rows) + "\n"
    print("\n" + text)
    if a.out is not None:
        with a.out.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
