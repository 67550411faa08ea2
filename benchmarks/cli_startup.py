"""How long `goodfit --help` and `goodfit --version` take to start, against `python -c pass`.

Both commands import no torch (tests/test_architecture.py checks that); this measures what is
left: Python, Typer, Rich and goodfit's CLI module. For scale, `import torch` and the imports of
the commands that read a recipe but train nothing (eval, compare, wise: no torch._dynamo, issue
28). Each command runs --reps times, interleaved,
in fresh processes; the table gives medians and the ratio to the bare interpreter.

    python benchmarks/cli_startup.py [--reps 15]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "goodfit --help": [sys.executable, "-m", "goodfit_cli", "--help"],
    "goodfit --version": [sys.executable, "-m", "goodfit_cli", "--version"],
    "import torch (for scale)": [sys.executable, "-c", "import torch"],
    "eval/compare/wise imports": [sys.executable, "-c",
                                  "import goodfit_cli.workflows.evaluate, "
                                  "goodfit_cli.workflows.compare, goodfit_cli.workflows.wise"],
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
