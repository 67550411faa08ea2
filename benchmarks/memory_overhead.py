"""Peak memory of `goodfit finetune` in model sizes, against a bare PyTorch loop of the same
training, measured in the same run on the same machine.

A timm model (random init; default resnet50, ~94 MB of float32 weights) on tiny generated images
(16x16, 5 old + 5 new classes, 96 training and 48 test images per class set), its base made by a
`goodfit pretrain` of one batch (not measured). Then, each in a fresh process that first imports
torch, timm and goodfit's CLI (so the imports are in the baseline of both):

    goodfit   `goodfit finetune` with the given arms (default adamw), `--steps` batches of
              `--batch`, its WiSE-FT grid (report.wise_grid [0.3, 0.6]) and report
    bare      the same model loaded from the same base, AdamW for the same batches, then one
              evaluation of the test images under no_grad: what any fine-tune must hold
              (the weights, their gradients, AdamW's two moments)

and prints, for each, peak RSS / model bytes and (peak RSS - RSS after the imports) / model
bytes, the copies of the weights the process held at its peak (plus activations), and the ratio
of goodfit's extra to the bare loop's. Ratios, not absolutes: they hold across machines. The
interpreter's allocator keeps some freed memory (glibc's dynamic mmap threshold); pass
`--mmap-threshold 65536` to return large frees to the system at once, for a tighter reading.

    python benchmarks/memory_overhead.py                       # resnet50, adamw, 4 batches
    python benchmarks/memory_overhead.py --model vit_small_patch16_224 --arms adamw goodfit
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

PRELUDE = """
import json, os, resource, sys
import torch, timm  # noqa: F401
import goodfit_cli.cli.app, goodfit_cli.workflows.finetune  # noqa: F401
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
after_imports = rss()
"""

GOODFIT = PRELUDE + """
from goodfit_cli.cli.app import main
sys.argv = ["goodfit", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as e:
    if e.code:
        raise
print(json.dumps({"after_imports": after_imports,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

BARE = PRELUDE + """
import numpy as np
from safetensors.torch import load_file
a = json.loads(sys.argv[1])
torch.manual_seed(0)
model = timm.create_model(a["model"], pretrained=False, num_classes=10)
model.load_state_dict(load_file(a["base"]))
def images(path):
    f = np.load(path)
    x = torch.from_numpy(f["x"]).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    return x, torch.from_numpy(f["y"])
x, y = images(a["train"])
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
model.train()
for i in range(a["steps"]):
    idx = torch.randint(0, len(y), (a["batch"],))
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
    opt.step()
model.eval()
tx, ty = images(a["test"])
with torch.no_grad():
    acc = (model(tx).argmax(1) == ty).float().mean().item()
print(json.dumps({"after_imports": after_imports,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def model_bytes(path: Path) -> int:
    """The tensors' bytes of a safetensors file (its data section)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
    return path.stat().st_size - 8 - n


def run(code: str, arg: object, env: dict, cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", code, json.dumps(arg)], env=env, cwd=cwd,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--arms", nargs="+", default=["adamw"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mmap-threshold", type=int, default=None)
    a = p.parse_args()
    import numpy as np

    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    if a.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(a.mmap_threshold)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        rng = np.random.default_rng(0)
        for task, classes in (("old", range(5)), ("new", range(5, 10))):
            for split, n in (("train", 96), ("test", 48)):
                np.savez(d / f"{task}_{split}.npz",
                         x=rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
                         y=rng.choice(list(classes), n).astype(np.int64))
        (d / "r.yaml").write_text(f"""name: memory
seed: 0
device: cpu
model: {{name: timm, args: {{name: {a.model}, num_classes: 10}}}}
data:
  name: npz
  args: {{old: {{train: old_train.npz, test: old_test.npz}},
         new: {{train: new_train.npz, test: new_test.npz}}, num_classes: 10}}
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
pretrain: {{optimizer: {{name: sgd, lr: 1.0e-3}}, steps: 1, batch_size: {a.batch}}}
finetune:
  optimizer: {{name: adamw, lr: 1.0e-4}}
  steps: {a.steps}
  batch_size: {a.batch}
  arms: [adamw]
eval: {{every: {a.steps}, batch_size: 64}}
report: {{wise_grid: [0.3, 0.6]}}
""")
        made = subprocess.run([sys.executable, "-m", "goodfit_cli", "pretrain", "--recipe",
                               "r.yaml", "--out", "base"], cwd=d, env=env,
                              capture_output=True, text=True)
        if made.returncode:
            sys.exit(f"pretrain failed:\n{made.stderr[-3000:]}")
        base = d / "base" / "model.safetensors"
        size = model_bytes(base)
        arms = [x for arm in a.arms for x in ("--optimizer", arm)]
        got = {"goodfit": run(GOODFIT, ["finetune", "--base", str(base), "--recipe", "r.yaml",
                                        "--out", "ft", *arms], env, d),
               "bare": run(BARE, {"model": a.model, "base": str(base), "steps": a.steps,
                                  "batch": a.batch, "train": str(d / "new_train.npz"),
                                  "test": str(d / "new_test.npz")}, env, d)}
    print(f"machine: {cpu_model()}, {a.threads} thread(s); torch {__import__('torch').__version__}")
    print(f"model: {a.model}, {size / 1e6:.1f} MB of weights; {a.steps} batches of {a.batch} "
          f"16x16 images; goodfit arms: {' '.join(a.arms)}")
    extra = {}
    for name, r in got.items():
        extra[name] = (r["peak"] - r["after_imports"]) / size
        print(f"{name:8s} peak RSS / model {r['peak'] / size:6.2f}   "
              f"(peak - after imports) / model {extra[name]:5.2f}")
    print(f"goodfit's extra / the bare loop's: {extra['goodfit'] / extra['bare']:.2f}")


if __name__ == "__main__":
    main()
