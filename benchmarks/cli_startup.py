"""How long `goodfit --help` and `goodfit --version` take to start, against `python -c pass`.

Both commands import no torch (tests/test_architecture.py checks that); this measures what is
left: Python, Typer, Rich and goodfit's CLI module. For scale, `import torch` and the imports of
the commands that read a recipe but train nothing (eval, compare, wise: no torch._dynamo, issue
28). Each command runs --reps times, interleaved,
in fresh processes; the table gives medians and the ratio to the bare interpreter.

A fine-tune's start-up (`timings.json`'s `start_up`, issue 28) is larger: it imports timm, whose
torchvision imports torch._dynamo, and its first optimizer step would import torch._dynamo
anyway (every `torch.optim` step does). The last three lines say how much of that a bare
PyTorch loop pays too: `import torch` and one AdamW step; the same after `import timm`; and
the modules `goodfit finetune` imports before its first batch, then one step.

    python benchmarks/cli_startup.py [--reps 15]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

STEP = ("m = torch.nn.Linear(2, 2); o = torch.optim.AdamW(m.parameters()); "
        "m(torch.ones(1, 2)).sum().backward(); o.step()")
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "goodfit --help": [sys.executable, "-m", "goodfit_cli", "--help"],
    "goodfit --version": [sys.executable, "-m", "goodfit_cli", "--version"],
    "import torch (for scale)": [sys.executable, "-c", "import torch"],
    "eval/compare/wise imports": [sys.executable, "-c",
                                  "import goodfit_cli.workflows.evaluate, "
                                  "goodfit_cli.workflows.compare, goodfit_cli.workflows.wise"],
    "import torch + one AdamW step": [sys.executable, "-c", "import torch; " + STEP],
    "import timm + one AdamW step": [sys.executable, "-c", "import timm, torch; " + STEP],
    "finetune imports + one step": [sys.executable, "-c",
                                    "import goodfit_cli.cli.app, goodfit_cli.workflows.finetune, "
                                    "goodfit_cli.training.checks, timm.optim, torch; " + STEP],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.reps):
        for name, cmd in COMMANDS.items():  # interleaved: drift hits every command alike
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["python -c pass"])
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"{args.reps} runs each (median)")
    print("| command | median s | / python -c pass |\n|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
