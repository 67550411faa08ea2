"""How the `goodfit` process ends (cli/app.py `leave`): a finished command skips the
interpreter's teardown, yet runs the atexit handlers, flushes its output and keeps its exit
code; it leaves the teardown to the interpreter where something still needs it (a non-daemon
thread alive, a tracer or profiler set)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# A script that runs the CLI's entry point as the console script does. `Torn` prints when the
# interpreter frees the module's globals (its teardown, which `leave` skips); the atexit handler
# prints as it runs (`leave` runs the handlers); "left to the interpreter" is printed when
# `leave` returns instead of ending the process.
SCRIPT = textwrap.dedent("""
    import atexit, importlib, os, sys, threading

    class Torn:
        def __del__(self):
            os.write(2, b"teardown\\n")

    torn = Torn()
    atexit.register(lambda: print("atexit handler ran", flush=True))
    app = importlib.import_module("goodfit_cli.cli.app")
    leave, setup, done = app.leave, sys.argv[1], threading.Event()

    def leave_or_say(code):
        leave(code)  # returns only where it leaves the exit to the interpreter
        print("left to the interpreter", flush=True)
        done.set()

    app.leave = leave_or_say
    if setup == "thread":  # a non-daemon thread alive when the command ends; it ends after
        threading.Thread(target=done.wait).start()
    elif setup == "trace":
        sys.settrace(lambda *a: None)
    sys.argv = ["goodfit", *sys.argv[2:]]
    app.main()
""")


def run(setup: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, setup, *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, code", [(["--version"], 0),
                                        (["validate", "no/such/recipe.yaml"], 2)])
def test_a_finished_command_skips_teardown_keeps_its_code_and_runs_atexit(args, code):
    res = run("plain", *args)
    assert res.returncode == code, res.stderr
    assert "atexit handler ran" in res.stdout
    assert "left to the interpreter" not in res.stdout
    assert "teardown" not in res.stderr  # the interpreter's teardown did not run
    if code == 0:
        assert "goodfit 0.1.0" in res.stdout
    else:  # the user's one line, flushed before the exit
        assert "no/such/recipe.yaml" in res.stderr + res.stdout


@pytest.mark.parametrize("setup", ["thread", "trace"])
def test_teardown_is_left_to_the_interpreter_when_something_needs_it(setup):
    res = run(setup, "--version")
    assert res.returncode == 0, res.stderr
    assert "goodfit 0.1.0" in res.stdout
    assert "atexit handler ran" in res.stdout
    # the interpreter's own exit: it joined the thread (or let the tracer be), then ran the
    # atexit handlers once
    assert res.stdout.index("left to the interpreter") < res.stdout.index("atexit handler")
    assert res.stdout.count("atexit handler ran") == 1
